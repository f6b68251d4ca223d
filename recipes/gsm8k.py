"""Question answering with worked answers (GSM8K): pre-train on the training problems as text, instruction
fine-tune (question -> worked answer ending "#### n"), then the test set's answer-token loss before and after,
and exact match of the final number beside a constant-answer baseline.

Lives here: reading the final number and the recipe. Not here: what the recipes share (common.py), argument parsing
(run.py).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import common as C

from pocketgpt.checkpoint import load_checkpoint

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def final_number(text: str) -> str | None:
    """The number after the last "####", else the last number in the text; commas and a trailing .0 dropped."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    nums = _NUM.findall(tail) or _NUM.findall(text)
    if not nums:
        return None
    n = nums[0 if "####" in text else -1].replace(",", "").rstrip(".")
    return n[:-2] if n.endswith(".0") else n


def same_number(a: str | None, b: str | None) -> bool:
    """Equal as numbers ("70000" == "70000.00"); never equal when either is missing."""
    try:
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    except ValueError:
        return a == b


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report) -> tuple[dict, list[str]]:
    def read(name):
        return [
            json.loads(ln) for ln in (data_dir / "gsm8k" / name).read_text(encoding="utf-8").splitlines() if ln.strip()
        ]

    with report.stage("prepare data"):
        train, test = read("train.jsonl"), read("test.jsonl")
        corpus = C.write_jsonl(
            out / "data" / "pretrain.jsonl", ({"text": r["question"] + "\n" + r["answer"]} for r in train)
        )
        sft_file = C.write_jsonl(
            out / "data" / "sft.jsonl", ({"prompt": r["question"], "completion": r["answer"]} for r in train)
        )
        test_convs = [
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in test
        ]
    dtype = C.eval_dtype(cfg)
    base, pre = C.base_checkpoint(cfg, corpus, out, report)
    m: dict = {
        "train_examples": len(train),
        "test_examples": len(test),
        "eval_dtype": str(dtype).split(".")[-1],
        "pretrain": pre,
    }
    with report.stage("test answer loss, base model"):
        m["before"] = C.answer_loss(load_checkpoint(base), test_convs, dtype)
    m["finetune"] = C.finetune_stage(
        report, base, cfg["finetune"], sft_file, out / "chat", stage="instruction fine-tune"
    )
    ckpt = load_checkpoint(out / "chat")
    with report.stage("test answer loss, fine-tuned"):
        m["after"] = C.answer_loss(ckpt, test_convs, dtype)
    ev = cfg["eval"]
    subset = test[: ev["exact_match_questions"]] if ev.get("exact_match_questions") else test
    with report.stage("exact match (greedy)") as st:
        outs = C.chat_complete(
            ckpt.model,
            ckpt.tokenizer,
            [r["question"] for r in subset],
            max_new_tokens=ev["max_new_tokens"],
            batch_size=ev["batch_size"],
        )
        got = [final_number(o) for o in outs]
        ref = [final_number(r["answer"]) for r in subset]
        correct = sum(same_number(g, r) for g, r in zip(got, ref))
    common = Counter(final_number(r["answer"]) for r in train).most_common(1)[0][0]  # a chance-level reference
    m["exact_match"] = {
        "accuracy": correct / len(subset),
        "correct": correct,
        "questions": len(subset),
        "with_a_number": sum(g is not None for g in got),
        "with_####": sum("####" in o for o in outs),
        "constant_answer": common,
        "constant_answer_accuracy": sum(same_number(common, r) for r in ref) / len(subset),
        **C.cost(st),
    }
    m["examples"] = [
        {"question": r["question"], "reference": r["answer"], "output": o, "extracted": g}
        for r, o, g in list(zip(subset, outs, got))[: ev["examples"]]
    ]
    b, a, em = m["before"], m["after"], m["exact_match"]
    which = f"the first {len(subset)}" if len(subset) < len(test) else f"all {len(test)}"
    rows = [
        [
            f"answer-token loss on the test set (nats/token, {b['answer_tokens']:,} tokens)",
            f"{b['answer_loss']:.3f}",
            f"{a['answer_loss']:.3f}",
        ],
        [
            f"exact match of the final number ({which} test questions, greedy)",
            "-",
            f"{C.pct(em['accuracy'])} ({em['correct']}/{em['questions']})",
        ],
        [
            f"exact match of always answering {em['constant_answer']} (the most common training answer)",
            "-",
            C.pct(em["constant_answer_accuracy"]),
        ],
    ]
    t = C.table(["metric", "base (pre-trained)", "after instruction fine-tuning"], rows)
    ex = C.table(
        ["question", "reference", "model output (extracted number)"],
        [[x["question"], x["reference"], f"{x['output']} ({x['extracted']})"] for x in m["examples"]],
    )
    info = (
        f"{m['finetune']['trainable_parameters']:,} parameters, all trained; test conversations cropped to the "
        f"context: {a['cropped']} of {len(test)}; outputs containing '####': {em['with_####']}/{em['questions']}"
    )
    return m, [t, info, ex]
