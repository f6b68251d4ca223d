"""recipes/run.py end to end with --quick, on tiny data the tests write in the real formats (never ../shared)."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "run.py"

POS = [
    "a gripping , funny and warm film",
    "the acting is superb and the story moving",
    "a delight from start to end",
    "smart , tender and beautifully made",
    "one of the best movies of the year",
    "charming and wonderfully acted",
]
NEG = [
    "a dull , lifeless mess",
    "the plot is thin and the jokes fall flat",
    "boring from start to end",
    "clumsy , tedious and far too long",
    "one of the worst movies of the year",
    "badly written and poorly acted",
]
EN_ZH = [
    ("Hi.", "嗨。"),
    ("Run!", "你用跑的。"),
    ("I won!", "我赢了。"),
    ("Help!", "救命！"),
    ("Wait!", "等等！"),
    ("I see.", "我明白了。"),
    ("Cheers!", "乾杯!"),
    ("Get out!", "滾出去！"),
    ("Go away!", "走開！"),
    ("Thank you.", "謝謝！"),
    ("I'm home.", "我到家了。"),
    ("Be quiet.", "安静点。"),
    ("I like tea.", "我喜欢茶。"),
    ("He is tall.", "他很高。"),
    ("It's cold.", "天很冷。"),
    ("Come here.", "过来。"),
    ("I am sad.", "我很难过。"),
    ("Who is he?", "他是谁？"),
    ("I'm tired.", "我累了。"),
    ("Good luck.", "祝你好运。"),
]


def write_fake_data(root: Path) -> Path:
    """sst2/{train,dev}.tsv, tatoeba-cmn/cmn.txt (with a BOM) and gsm8k/{train,test}.jsonl, a few KB each."""
    rng = random.Random(0)
    (root / "sst2").mkdir(parents=True)
    for name, n in (("train", 24), ("dev", 8)):
        lines = [
            f"{rng.choice(POS if i % 2 else NEG)} {rng.choice(['.', '!', ', really .'])}\t{i % 2}" for i in range(n)
        ]
        (root / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "tatoeba-cmn").mkdir()
    pairs = EN_ZH + [(f"{e[:-1]} again{e[-1]}", f"{z[:-1]}又{z[-1]}") for e, z in EN_ZH]
    lines = [
        f"{e}\t{z}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i} (x) & #{i + 1000} (y)"
        for i, (e, z) in enumerate(pairs)
    ]
    (root / "tatoeba-cmn" / "cmn.txt").write_text("\ufeff" + "\n".join(lines) + "\n\n", encoding="utf-8")
    (root / "gsm8k").mkdir()
    for name, n in (("train", 20), ("test", 6)):
        recs = []
        for _ in range(n):
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            q = f"Tom has {a} apples and buys {b} more.\u2028How many apples does Tom have now?"  # GSM8K has U+2028
            recs.append(
                {"question": q, "answer": f"Tom has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}"}
            )
        (root / "gsm8k" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return root


def run_recipe(recipe: str, tmp_path: Path) -> dict:
    data = write_fake_data(tmp_path / "data")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), recipe, "--data-dir", str(data), "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["recipe"] == recipe
    assert {"cpu", "date", "command", "torch"} <= set(result["env"])
    assert result["stages"] and all(
        {"stage", "wall_s", "peak_rss_mb", "process_peak_rss_mb"} <= set(s) for s in result["stages"]
    )
    assert (out / "results.md").read_text(encoding="utf-8").count("|") > 10
    return result["metrics"]


def test_sentiment_quick(tmp_path):
    m = run_recipe("sentiment", tmp_path)
    for k in ("bow", "full", "lora"):
        assert 0.0 <= m[k]["dev_accuracy"] <= 1.0
        assert m[k]["trainable_parameters"] > 0
    assert m["lora"]["trainable_parameters"] < m["full"]["trainable_parameters"]
    assert m["dev_examples"] == 8


def test_translation_quick(tmp_path):
    pytest.importorskip("sacrebleu", reason="the translation recipe scores with sacrebleu (pip install -e .[recipes])")
    m = run_recipe("translation", tmp_path)
    assert m["test_pairs"] == 8 and m["train_pairs"] <= 32
    for k in ("en-zh", "zh-en"):
        assert 0.0 <= m[k]["chrF"] <= 100.0 and m[k]["n"] == 8
        assert len(m[k]["examples"]) == 2 and {"source", "reference", "output"} <= set(m[k]["examples"][0])


def test_gsm8k_quick(tmp_path):
    m = run_recipe("gsm8k", tmp_path)
    for k in ("before", "after"):
        assert m[k]["answer_loss"] > 0 and m[k]["answer_tokens"] > 0
    assert m["exact_match"]["questions"] == 5 and 0 <= m["exact_match"]["correct"] <= 5


def test_final_number(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))  # the recipe modules import common.py beside them
    spec = importlib.util.spec_from_file_location("recipes_gsm8k", ROOT / "recipes" / "gsm8k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    final_number = module.final_number
    assert final_number("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert final_number("#### -5.0") == "-5"
    assert final_number("she has 3 apples, then 12.") == "12"
    assert final_number("no digits here") is None
