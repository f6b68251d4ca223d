"""Extractive question answering (SQuAD v1.1 dev, split by article): pre-train a small GPT on the training articles'
paragraphs, chat fine-tune it to answer questions about a paragraph (the paragraph and its questions in one
conversation, loss on the answers only), then answer each test question greedily. Scored with SQuAD's official
exact match / F1 (squad_eval.py) beside a sliding-window word-overlap answerer, on the same test articles.

Lives here: reading and splitting the JSON, the baseline, the chat records and the recipe. Not here: the official
metric (squad_eval.py), what the recipes share (common.py), argument parsing (run.py).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import common as C
import squad_eval

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.errors import UserError

WORD = re.compile(r"\w+")
STOP = frozenset(
    "a an the of in on at to for by with from and or is was were are be been as that which who whom whose what when "
    "where why how did does do it its this these those".split()
)


def read_squad(path: Path) -> list[dict]:
    """The `data` list (articles) of a SQuAD v1.1 JSON file, after checking its layout."""
    if not path.is_file():
        raise UserError(f"SQuAD file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        for a in data:
            for p in a["paragraphs"]:
                assert isinstance(p["context"], str)
                for qa in p["qas"]:
                    assert qa["id"] and qa["question"] and qa["answers"] and qa["answers"][0]["text"]
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError, IndexError):
        raise UserError(
            f"{path}: not a SQuAD v1.1 file ({{data: [{{title, paragraphs: [{{context, qas}}]}}]}})"
        ) from None
    return data


def split_articles(articles: list[dict], test_articles: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Whole articles to train and test (a seeded draw of `test_articles`), each in the file's order."""
    if not 0 < test_articles < len(articles):
        raise UserError(f"split.test_articles must be in 1..{len(articles) - 1}, got {test_articles}")
    pick = set(random.Random(seed).sample(range(len(articles)), test_articles))
    return [a for i, a in enumerate(articles) if i not in pick], [a for i, a in enumerate(articles) if i in pick]


def questions(articles: list[dict]) -> list[tuple[str, dict]]:
    """(context, qa) for every question, in file order."""
    return [(p["context"], qa) for a in articles for p in a["paragraphs"] for qa in p["qas"]]


class WindowAnswerer:
    """A sliding-window word-overlap answerer (after the baselines of Richardson et al. 2013 and Rajpurkar et al.
    2016): every span of 1..max_len context words holding no question word and not starting or ending with a stop
    word is scored by the IDF of the question words within `window` words on either side; the best span is the
    answer (ties: the earlier, shorter span). IDF is over the training paragraphs."""

    def __init__(self, train_articles: list[dict]):
        paras = [p["context"] for a in train_articles for p in a["paragraphs"]]
        df = Counter(w for c in paras for w in {m.group().lower() for m in WORD.finditer(c)})
        self.n = len(paras)
        self.idf = {w: math.log(self.n / d) for w, d in df.items()}

    def answer(self, context: str, question: str, window: int, max_len: int) -> str:
        toks = list(WORD.finditer(context))
        low = [t.group().lower() for t in toks]
        q = {w.lower() for w in WORD.findall(question)} - STOP
        P = [0.0]  # P[i]: the question-word weight of the first i context words
        for w in low:
            P.append(P[-1] + (self.idf.get(w, math.log(self.n)) if w in q else 0.0))
        n, best, span = len(low), -1.0, (0, 0)
        for s in range(n):
            for e in range(s + 1, min(n, s + max_len) + 1):  # the span is words s..e-1
                if low[e - 1] in q:
                    break
                if low[s] in STOP or low[e - 1] in STOP:
                    continue
                score = round(P[min(n, e + window)] - P[e] + P[s] - P[max(0, s - window)], 9)  # prefix-sum noise
                if score > best:
                    best, span = score, (s, e)
        return context[toks[span[0]].start() : toks[span[1] - 1].end()] if n and span[1] else ""


def mean_scores(preds: list[str], qas: list[dict]) -> dict:
    """Official EM and F1 (x 100) over these questions, each against all its crowd answers."""
    gts = [[a["text"] for a in qa["answers"]] for qa in qas]
    m = squad_eval.metric_max_over_ground_truths
    em = sum(m(squad_eval.exact_match_score, p, g) for p, g in zip(preds, gts))
    f1 = sum(m(squad_eval.f1_score, p, g) for p, g in zip(preds, gts))
    return {"exact_match": 100.0 * em / len(qas), "f1": 100.0 * f1 / len(qas)}


def fit_context(context: str, tokenizer, max_tokens: int) -> str:
    """The paragraph cut to its first max_tokens tokens (whole paragraphs that fit are kept as they are)."""
    ids = tokenizer.encode(context)
    return context if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def chat_records(articles: list[dict], tokenizer, block: int, ctx_tokens: int, seed: int) -> tuple[list, int]:
    """Conversations: a paragraph with its first question, then its other questions as follow-ups, each answered by
    its first crowd answer; as many as fit the context, then a new conversation with the paragraph again. Questions
    whose answer the cut paragraph lacks are left out (returned: their count)."""
    from pocketgpt.tokenizer.chat import render_conversation

    rng, convs, lost = random.Random(seed), [], 0
    for a in articles:
        for p in a["paragraphs"]:
            ctx = fit_context(p["context"], tokenizer, ctx_tokens)
            qas = [qa for qa in p["qas"] if qa["answers"][0]["text"] in ctx]
            lost += len(p["qas"]) - len(qas)
            rng.shuffle(qas)
            conv: list[dict] = []
            for qa in qas:
                ask = f"Question: {qa['question']}" if conv else f"{ctx}\n\nQuestion: {qa['question']}"
                turn = [{"role": "user", "content": ask}, {"role": "assistant", "content": qa["answers"][0]["text"]}]
                if conv and len(render_conversation(conv + turn, tokenizer)[0]) > block + 1:
                    convs.append({"messages": conv})
                    conv, turn[0]["content"] = [], f"{ctx}\n\nQuestion: {qa['question']}"
                conv += turn
            if conv:
                convs.append({"messages": conv})
    rng.shuffle(convs)
    return convs, lost


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report, init: Path | None = None) -> tuple[dict, list[str]]:
    split, ev, bl = cfg["split"], cfg["eval"], cfg["baseline"]
    with report.stage("prepare data"):
        articles = read_squad(data_dir / "squad" / "dev-v1.1.json")
        train, test = split_articles(articles, split["test_articles"], split["seed"])
        docs = (
            {"text": p["context"] + "".join(f"\n{qa['question']} {qa['answers'][0]['text']}" for qa in p["qas"])}
            for a in train
            for p in a["paragraphs"]
        )
        corpus = C.write_jsonl(out / "data" / "pretrain.jsonl", docs)
        test_q = questions(test)
        test_q = test_q[: ev["test_questions"]] if ev.get("test_questions") else test_q
    m: dict = {
        "train_articles": [a["title"] for a in train],
        "test_articles": [a["title"] for a in test],
        "train_questions": len(questions(train)),
        "test_questions": len(test_q),
    }
    print(f"squad: {len(train)} training articles ({m['train_questions']} questions), {len(test)} test articles")
    with report.stage("baseline: sliding window (tuned on train)") as st:
        answerer = WindowAnswerer(train)
        tune = random.Random(bl["seed"]).sample(questions(train), min(bl["tune_questions"], m["train_questions"]))
        grid = {
            (w, L): mean_scores([answerer.answer(c, qa["question"], w, L) for c, qa in tune], [qa for _, qa in tune])
            for w in bl["windows"]
            for L in bl["max_lens"]
        }
        w, L = max(grid, key=lambda k: (grid[k]["f1"], -k[0], -k[1]))
        base_preds = [answerer.answer(c, qa["question"], w, L) for c, qa in test_q]
    m["baseline"] = {**mean_scores(base_preds, [qa for _, qa in test_q]), "window": w, "max_len": L, **C.cost(st)}
    m["baseline"]["train_f1"] = grid[(w, L)]["f1"]
    base, pre = C.base_checkpoint(cfg, corpus, out, report, init)
    m["pretrain"] = pre
    tok, block = C.tokenizer_and_block(base)
    ctx_tokens = block - ev["room_tokens"]
    made: dict = {}

    def chat_file() -> Path:  # called inside the fine-tuning stage
        made["convs"], made["lost"] = chat_records(train, tok, block, ctx_tokens, split["seed"])
        return C.write_jsonl(out / "data" / "chat.jsonl", made["convs"])

    m["finetune"] = C.finetune_stage(report, base, cfg["finetune"], chat_file, out / "chat")
    convs, lost = made["convs"], made["lost"]
    m["finetune"].update(conversations=len(convs), questions_left_out=lost)
    with report.stage("answer the test questions (greedy)") as st:
        ckpt = load_checkpoint(out / "chat")
        ctxs = [fit_context(c, ckpt.tokenizer, ctx_tokens) for c, _ in test_q]
        prompts = [f"{c}\n\nQuestion: {qa['question']}" for c, (_, qa) in zip(ctxs, test_q)]
        outs = C.chat_complete(
            ckpt.model, ckpt.tokenizer, prompts, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"]
        )
    by_id = {qa["id"]: o for (_, qa), o in zip(test_q, outs)}
    scored = [
        {**a, "paragraphs": [{**p, "qas": [q for q in p["qas"] if q["id"] in by_id]} for p in a["paragraphs"]]}
        for a in test
    ]
    m["model"] = {**squad_eval.evaluate(scored, by_id), **C.cost(st)}  # the official evaluate(), on the test articles
    m["model_answer_in_context"] = sum(o in c for o, c in zip(outs, ctxs) if o) / max(1, sum(bool(o) for o in outs))
    m["answer_cut_from_context"] = sum(
        not any(x["text"] in c for x in qa["answers"]) for c, (_, qa) in zip(ctxs, test_q)
    )
    m["examples"] = [
        {
            "context": c,
            "question": qa["question"],
            "answers": [x["text"] for x in qa["answers"]],
            "output": o,
            "baseline": b,
        }
        for (c, qa), o, b in list(zip(test_q, outs, base_preds))[: ev["examples"]]
    ]
    rows = [
        [C.who(init), f"{m['model']['exact_match']:.1f}", f"{m['model']['f1']:.1f}"],
        [
            f"sliding window (±{w} words, spans ≤ {L} words)",
            f"{m['baseline']['exact_match']:.1f}",
            f"{m['baseline']['f1']:.1f}",
        ],
    ]
    head = C.table(
        [f"method (SQuAD v1.1 dev, {len(test)} held-out articles, {len(test_q)} questions)", "exact match", "F1"], rows
    )
    info = (
        f"{m['finetune']['trainable_parameters']:,} parameters, all trained; {len(convs)} training conversations "
        f"({lost} questions left out: their answer lies past the first {ctx_tokens} tokens of the paragraph); "
        f"test paragraphs cut to {ctx_tokens} tokens lose every crowd answer for {m['answer_cut_from_context']} "
        f"questions; {100 * m['model_answer_in_context']:.0f}% of the model's answers are a substring of the paragraph"
    )
    ex = C.table(
        ["question", "crowd answers", "model output", "baseline output", "paragraph (start)"],
        [
            [
                x["question"],
                " / ".join(dict.fromkeys(x["answers"])),
                x["output"],
                x["baseline"],
                x["context"][:160] + "…",
            ]
            for x in m["examples"]
        ],
    )
    return m, [head, info, ex]
