"""The dialogue recipe (DailyDialog): end to end at toy size on dialogues the test writes, and its pieces."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from recipe_helpers import recipes_path, run_recipe  # noqa: F401  (fixtures; a nested conftest.py would shadow tests/conftest.py)

OPENERS = ["Say , Jim , how about a few beers ?", "Can you do push-ups ?", "Where is the bank ?", "Is it cold ?"]
REPLIES = ["Sure .", "Of course I can .", "It's over there .", "Yes , very ."]


def write_dailydialog(root: Path) -> Path:
    """dailydialog/{train,test}/dialogues_*.txt: utterances each followed by ` __eou__`, one dialogue a line."""
    rng = random.Random(0)
    dialogues = {}
    for split, n in (("train", 20), ("test", 4)):
        rows = []
        for _ in range(n):
            k = rng.randrange(len(OPENERS))
            turns = [OPENERS[k], REPLIES[k], "Thank you .", "You are welcome ."][: rng.randint(2, 4)]
            rows.append("".join(f"{t} __eou__ " for t in turns).rstrip())
        dialogues[split] = rows
    dialogues["train"].append(dialogues["test"][0])  # DailyDialog repeats some test dialogues in train
    dialogues["train"].append("Hello . __eou__")  # one turn: nothing to answer
    for split, rows in dialogues.items():
        (root / "dailydialog" / split).mkdir(parents=True)
        (root / "dailydialog" / split / f"dialogues_{split}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_dialogue_quick(tmp_path, run_recipe):
    pytest.importorskip(
        "sacrebleu", reason="the dialogue recipe scores replies with sacrebleu (pip install -e .[recipes])"
    )
    m = run_recipe("dialogue", write_dailydialog(tmp_path / "data"), tmp_path / "out")
    assert m["test_dialogues"] == 4 and m["repeats_of_test_left_out"] >= 1 and m["train_dialogues"] <= 20
    assert m["chat_records"] == 2 * m["train_dialogues"]
    for k in ("before", "after"):
        assert m[k]["answer_loss"] > 0 and m[k]["answer_tokens"] > 0
    assert m["unigram_answer_loss"] > 0
    assert m["replies"]["n"] == 6 and {"model", "most_frequent"} <= set(m["replies"])
    assert 0 <= m["replies"]["most_frequent"]["BLEU"] <= 100
    assert len(m["examples"]) == 2 and {"user", "reference", "model"} <= set(m["examples"][0][0])
    # --init: the same recipe fine-tunes a given checkpoint instead of pre-training one
    m2 = run_recipe("dialogue", tmp_path / "data", tmp_path / "out2", "--init", str(tmp_path / "out" / "base"))
    assert "init" in m2["pretrain"] and m2["after"]["answer_loss"] > 0


def test_dialogue_pieces(recipes_path):
    import dialogue as D

    chat = D.as_chat(["a", "b", "c"], "assistant")
    assert [x["role"] for x in chat] == ["assistant", "user", "assistant"]
    assert D.distinct(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert D.distinct(["Thanks ."] * 3, 3) == 0.0


def test_read_dailydialog(tmp_path, recipes_path):
    import dialogue as D

    p = tmp_path / "d.txt"
    p.write_text("Hi  there . __eou__ Hello . __eou__\nOnly one . __eou__\n\n", encoding="utf-8")
    assert D.read_dailydialog(p) == [["Hi there .", "Hello ."]]
    from pocketgpt.errors import UserError

    with pytest.raises(UserError, match="not found"):
        D.read_dailydialog(tmp_path / "missing.txt")
