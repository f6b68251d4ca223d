"""Shared by the CLI tests: an in-process runner, error assertions, and one tiny trained run.

Import the fixtures into a test module (`from cli_helpers import cli, trained, run_copy`) to use them.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from safetensors.torch import load_file

from pocketgpt.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _warning_to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def cli(capsys):
    """Run `pocketgpt ARGS...` in-process like the console script: (exit code, stdout, stderr).

    SystemExit (from --help) becomes its code; warnings are printed to stderr as Python does by default
    (pytest would otherwise record them silently).
    """

    def run(*args):
        formatwarning = warnings.formatwarning  # main() sets its own; keep pytest's afterwards
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _warning_to_stderr
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            finally:
                warnings.formatwarning = formatwarning
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def assert_user_error(result, *words: str) -> str:
    """Exit 2, one line `pocketgpt: error: ...` on stderr naming `words`, no traceback."""
    code, out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, err
    assert lines[0].startswith("pocketgpt: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def assert_no_run(out: Path) -> None:
    """A failed `train` leaves no run behind: no folder, or one without LATEST / checkpoints."""
    if out.exists():
        assert not (out / "LATEST").exists()
        assert not list(out.glob("ckpt-*")), list(out.iterdir())


def snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train_args(corpus: Path, out: Path, cache: Path, *extra) -> list:
    return ["train", "--data", corpus, "--out", out, "--cache_dir", cache, *TINY_TRAIN_FLAGS, *extra]


def weights(run: Path) -> dict:
    return load_file(str(ckpt_of(run) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_text):
    """One tiny run (TINY_TRAIN_FLAGS: 6 steps, eval and save every 3) shared by the read-only tests."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    run = root / "run"
    formatwarning = warnings.formatwarning
    try:
        assert main([str(a) for a in train_args(corpus, run, root / "cache")]) == 0
    finally:
        warnings.formatwarning = formatwarning
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run, for tests that damage it."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def ckpt_of(run: Path) -> Path:
    return run / (run / "LATEST").read_text().strip()
