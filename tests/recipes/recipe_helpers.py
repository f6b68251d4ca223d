"""What the recipe tests share: running `recipes/run.py` as a user would, on data a test wrote (never ../shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "run.py"


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


@pytest.fixture
def run_recipe():
    """run_recipe(recipe, data_dir, out, *extra) -> the metrics of a --quick run, after checking results.json."""

    def go(recipe: str, data: Path, out: Path, *extra: str) -> dict:
        proc = run_script(recipe, "--data-dir", str(data), "--out", str(out), "--quick", *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads((out / "results.json").read_text(encoding="utf-8"))
        assert result["recipe"] == recipe
        assert {"cpu", "date", "command", "torch", "load_average_at_start"} <= set(result["env"])
        assert result["stages"] and all({"stage", "wall_s", "peak_rss_mb"} <= set(s) for s in result["stages"])
        assert (out / "results.md").read_text(encoding="utf-8").count("|") > 10
        return result["metrics"]

    return go


@pytest.fixture
def script():
    """script(*args) runs recipes/run.py with these arguments: the CompletedProcess (text, output captured)."""
    return run_script


@pytest.fixture
def recipes_path(monkeypatch):
    """The recipe modules importable by name (they import common.py beside them)."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    return ROOT / "recipes"
