"""Summarisation (SAMSum): pre-train a small GPT on the training dialogues and their summaries as text, chat
fine-tune it (user: "Summarise the dialogue:" + dialogue, assistant: the summary; loss on the summary only), then
greedy-summarise the test dialogues and score them with `rouge-score` (ROUGE-1/2/L F1, Porter stemmer), beside the
LEAD-3 baseline (the first three turns) and the first turn alone, scored the same way on the same split.

Lives here: reading SAMSum's JSON, fitting a dialogue to the context, the baselines and the recipe. Not here: what
the recipes share (common.py), argument parsing (run.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import common as C

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.errors import UserError

PROMPT = "Summarise the dialogue:\n"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def read_samsum(path: Path) -> tuple[list[dict], int]:
    """SAMSum's JSON list of {"id", "summary", "dialogue"}: turns joined by "\\n" (the files mix CRLF and LF),
    whitespace trimmed; records with an empty dialogue or summary are left out (their count is returned too)."""
    try:
        recs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(recs, list):
        raise UserError(f"{path}: expected a JSON list of {{id, summary, dialogue}} objects")
    out, empty = [], 0
    for k, r in enumerate(recs):
        if not isinstance(r, dict) or not isinstance(r.get("dialogue"), str) or not isinstance(r.get("summary"), str):
            raise UserError(f"{path}: record {k} lacks a string 'dialogue' and 'summary'")
        turns = [t.strip() for t in r["dialogue"].replace("\r\n", "\n").split("\n") if t.strip()]
        if not turns or not r["summary"].strip():
            empty += 1
            continue
        out.append({"id": str(r.get("id", k)), "dialogue": "\n".join(turns), "summary": r["summary"].strip()})
    return out, empty


def lead(dialogue: str, n: int) -> str:
    """The first n turns (LEAD-n), joined by spaces."""
    return " ".join(dialogue.split("\n")[:n])


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE F1 (x 100) of each prediction against its reference, as `rouge_score` computes it."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for k, s in scorer.score(r, p).items():  # score(target, prediction)
            sums[k] += s.fmeasure
    return {k: 100 * v / len(references) for k, v in sums.items()}


def fit_dialogue(dialogue: str, tokenizer, max_tokens: int) -> str:
    """The dialogue cut to its first `max_tokens` tokens (at a turn boundary where one falls in the last quarter),
    so prompt and answer fit the context; dialogues that fit are returned as they are."""
    ids = tokenizer.encode(dialogue)
    if len(ids) <= max_tokens:
        return dialogue
    text = tokenizer.decode(ids[:max_tokens])
    cut = text.rfind("\n")
    return text[:cut] if cut > 0.75 * len(text) else text


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report, init: Path | None = None) -> tuple[dict, list[str]]:
    ev = cfg["eval"]
    with report.stage("prepare data"):
        folder = data_dir / "samsum"
        train, dropped = read_samsum(folder / "train.json")
        test, _ = read_samsum(folder / "test.json")
        test = test[: ev["test_dialogues"]] if ev.get("test_dialogues") else test
        corpus = C.write_jsonl(
            out / "data" / "pretrain.jsonl", ({"text": f"{r['dialogue']}\n\n{r['summary']}"} for r in train)
        )
    print(f"summarisation: {len(train)} training dialogues ({dropped} empty left out), {len(test)} test dialogues")
    base, pre = C.base_checkpoint(cfg, corpus, out, report, init)
    m: dict = {"train_dialogues": len(train), "empty_left_out": dropped, "test_dialogues": len(test), "pretrain": pre}
    tok, block = C.tokenizer_and_block(base)
    budget = block - ev["max_new_tokens"] - len(tok.encode(PROMPT)) - 4  # 4: <|endoftext|>, role tokens, <|end|>
    if budget < 16:
        raise UserError(f"block_size {block} leaves {budget} tokens for a dialogue after {ev['max_new_tokens']} new")
    chats = (  # written inside the fine-tuning stage
        {
            "messages": [
                {"role": "user", "content": PROMPT + fit_dialogue(r["dialogue"], tok, budget)},
                {"role": "assistant", "content": r["summary"]},
            ]
        }
        for r in train
    )
    m["finetune"] = C.finetune_stage(
        report, base, cfg["finetune"], lambda: C.write_jsonl(out / "data" / "chat.jsonl", chats), out / "chat"
    )
    refs = [r["summary"] for r in test]
    with report.stage("summarise the test dialogues") as st:
        ckpt = load_checkpoint(out / "chat")
        prompts = [PROMPT + fit_dialogue(r["dialogue"], ckpt.tokenizer, budget) for r in test]
        outs = C.chat_complete(
            ckpt.model, ckpt.tokenizer, prompts, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"]
        )
    m["model"] = {**rouge(outs, refs), **C.cost(st)}
    with report.stage("baselines: LEAD-3, first turn"):
        m["lead3"] = rouge([lead(r["dialogue"], 3) for r in test], refs)
        m["first_turn"] = rouge([lead(r["dialogue"], 1) for r in test], refs)
    m["cropped_test_dialogues"] = sum(p != PROMPT + r["dialogue"] for p, r in zip(prompts, test))
    m["examples"] = [
        {"dialogue": r["dialogue"], "reference": r["summary"], "output": o}
        for r, o in list(zip(test, outs))[: ev["examples"]]
    ]

    def row(name, k):
        return [name, *(f"{m[k][t]:.1f}" for t in ROUGE_TYPES)]

    head = C.table(
        ["method", "ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1"],
        [row(C.who(init), "model"), row("LEAD-3 (first three turns)", "lead3"), row("first turn", "first_turn")],
    )
    params = m["finetune"]["trainable_parameters"]
    info = (
        f"SAMSum test, n={len(test)}; rouge-score, Porter stemmer, mean F1 x 100. Model: {params:,} parameters, all "
        f"trained; chat fine-tune val answer loss {m['finetune']['val_answer_loss']:.3f}; "
        f"{m['cropped_test_dialogues']} test dialogues cut to {budget} tokens to fit the context of {block}"
    )
    ex = C.table(
        ["dialogue", "reference summary", "model output"],
        [[x["dialogue"], x["reference"], x["output"]] for x in m["examples"]],
    )
    return m, [head, info, ex]
