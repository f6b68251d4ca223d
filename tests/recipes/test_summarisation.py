"""The summarisation recipe (SAMSum): end to end at toy size on dialogues the test writes, and its pieces."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from recipe_helpers import recipes_path, run_recipe, script  # noqa: F401  (fixtures; a nested conftest.py would shadow tests/conftest.py)

NAMES = ["Amanda", "Jerry", "Tom", "Anna", "Kate", "Mike"]
THINGS = ["cookies", "a cake", "the tickets", "some books", "the keys", "a pizza"]


def write_samsum(root: Path) -> Path:
    """samsum/{train,test}.json in SAMSum's layout: turns joined by CRLF (most) or LF (some), one empty record."""
    rng = random.Random(0)
    (root / "samsum").mkdir(parents=True)
    for name, n in (("train", 24), ("test", 6)):
        recs = []
        for i in range(n):
            a, b = rng.sample(NAMES, 2)
            thing = rng.choice(THINGS)
            turns = [f"{a}: I got {thing}. Do you want some?", f"{b}: Sure!", f"{a}: I'll bring it tomorrow :-)"]
            sep = "\r\n" if i % 3 else "\n"
            recs.append(
                {"id": f"{name}{i}", "summary": f"{a} will bring {b} {thing} tomorrow.", "dialogue": sep.join(turns)}
            )
        if name == "train":
            recs.append({"id": "empty", "summary": "", "dialogue": "Tom: hi"})
        (root / "samsum" / f"{name}.json").write_text(json.dumps(recs, indent=2), encoding="utf-8")
    return root


@pytest.mark.slow
def test_summarisation_quick(tmp_path, run_recipe):
    pytest.importorskip(
        "rouge_score", reason="the summarisation recipe scores with rouge-score (pip install -e .[recipes])"
    )
    m = run_recipe("summarisation", write_samsum(tmp_path / "data"), tmp_path / "out")
    assert m["train_dialogues"] == 24 and m["empty_left_out"] == 1 and m["test_dialogues"] == 4
    for k in ("model", "lead3", "first_turn"):
        assert {"rouge1", "rouge2", "rougeL"} <= set(m[k]) and all(0 <= m[k][t] <= 100 for t in ("rouge1", "rougeL"))
    assert m["lead3"]["rouge1"] > 0  # the first turns share words with the summary
    assert len(m["examples"]) == 2 and {"dialogue", "reference", "output"} <= set(m["examples"][0])
    assert "\r" not in m["examples"][0]["dialogue"]


def test_lead_and_rouge(recipes_path):
    pytest.importorskip("rouge_score")
    import summarisation as S

    d = "Amanda: I baked cookies.\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)\nJerry: thanks"
    assert S.lead(d, 3) == "Amanda: I baked cookies. Jerry: Sure! Amanda: I'll bring you tomorrow :-)"
    assert S.lead(d, 1) == "Amanda: I baked cookies."
    r = S.rouge(["Amanda baked cookies", "nothing"], ["Amanda baked cookies.", "Jerry will come."])
    assert r["rouge1"] == pytest.approx(50.0) and r["rouge2"] == pytest.approx(50.0)
    assert S.rouge(["the cats are running"], ["the cat runs"])["rouge1"] > 0  # the Porter stemmer is on


def test_missing_samsum_is_a_clear_error(tmp_path, script):
    (tmp_path / "data").mkdir()
    proc = script("summarisation", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--quick")
    assert proc.returncode == 2 and "samsum" in proc.stderr and "Traceback" not in proc.stderr
