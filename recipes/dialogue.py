"""Dialogue (DailyDialog): multi-turn chat SFT. Pre-train a small GPT on the training dialogues as text, then chat
fine-tune it on every dialogue twice, once with each speaker as the assistant (so every turn is learned once, the
loss on assistant turns only). Judged by the answer-token loss on the held-out test dialogues (beside a unigram
model of the training turns' tokens), by greedy next-turn replies to held-out contexts (sacrebleu BLEU / chrF,
beside always giving the most frequent training reply), and by a few conversations shown as they came.

Lives here: reading DailyDialog's `__eou__` files, the two renderings, the baselines and the recipe. Not here: what
the recipes share (common.py), argument parsing (run.py).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import common as C

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.errors import UserError


def read_dailydialog(path: Path) -> list[list[str]]:
    """One dialogue per line, each utterance followed by `__eou__`; dialogues of fewer than two turns are skipped."""
    if not path.is_file():
        raise UserError(f"DailyDialog file not found: {path}")
    out = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        turns = [" ".join(t.split()) for t in line.split("__eou__")]
        turns = [t for t in turns if t]
        if len(turns) >= 2:
            out.append(turns)
    if not out:
        raise UserError(f"{path} holds no dialogues (utterances each followed by __eou__, one dialogue a line)")
    return out


def as_chat(turns: list[str], first: str) -> list[dict]:
    """The dialogue as messages, speakers alternating; `first` is the role of the first speaker."""
    other = {"user": "assistant", "assistant": "user"}[first]
    return [{"role": first if i % 2 == 0 else other, "content": t} for i, t in enumerate(turns)]


def fit_history(messages: list[dict], tokenizer, max_tokens: int) -> list[dict]:
    """The latest turns of a conversation whose rendered prompt fits in max_tokens (at least the last turn)."""
    from pocketgpt.tokenizer.chat import render_for_completion

    start = 0
    while start < len(messages) - 1 and len(render_for_completion(messages[start:], tokenizer)) > max_tokens:
        start += 1
    return messages[start:]


def unigram_loss(train_texts: list[str], test_ids: list[list[int]], tokenizer) -> float:
    """Cross-entropy (nats/token) of test answer tokens under add-one-smoothed token frequencies of train turns."""
    counts = Counter(t for s in train_texts for t in tokenizer.encode(s))
    total, vocab = sum(counts.values()), tokenizer.n_vocab
    n = sum(len(ids) for ids in test_ids)
    return -sum(math.log((counts[t] + 1) / (total + vocab)) for ids in test_ids for t in ids) / n


def distinct(texts: list[str], n: int) -> float:
    """Distinct-n: distinct word n-grams over all n-grams in the outputs (0 for a constant reply of < n words)."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report, init: Path | None = None) -> tuple[dict, list[str]]:
    import sacrebleu

    from pocketgpt.data import sft

    ev, folder = cfg["eval"], data_dir / "dailydialog"
    with report.stage("prepare data"):
        test = read_dailydialog(folder / "test" / "dialogues_test.txt")
        held = {tuple(d) for d in test}
        train_all = read_dailydialog(folder / "train" / "dialogues_train.txt")
        train = [d for d in train_all if tuple(d) not in held]  # DailyDialog repeats some test dialogues in train
        corpus = C.write_jsonl(out / "data" / "pretrain.jsonl", ({"text": "\n".join(d)} for d in train))
        chats = [{"messages": as_chat(d, first)} for d in train for first in ("user", "assistant")]
        random.Random(0).shuffle(chats)
        chat_file = C.write_jsonl(out / "data" / "chat.jsonl", chats)
    print(
        f"dialogue: {len(train)} training dialogues ({len(train_all) - len(train)} left out: they repeat a test "
        f"dialogue), {len(chats)} chat records, {len(test)} test dialogues"
    )
    base, pre = C.base_checkpoint(cfg, corpus, out, report, init)
    m: dict = {
        "train_dialogues": len(train),
        "repeats_of_test_left_out": len(train_all) - len(train),
        "test_dialogues": len(test),
        "chat_records": len(chats),
        "pretrain": pre,
    }
    dtype = C.eval_dtype(cfg)
    # each test dialogue once, the assistant alternately the second and the first speaker: half of all turns scored
    test_convs = [as_chat(d, "user" if i % 2 == 0 else "assistant") for i, d in enumerate(test)]
    before = C.base_answer_loss(report, base, test_convs, dtype, "test answer loss, base model")
    if before is not None:  # None: a GPT-2 --init has no chat tokens before fine-tuning
        m["before"] = before
    m["finetune"] = C.finetune_stage(report, base, cfg["finetune"], chat_file, out / "chat")
    ckpt = load_checkpoint(out / "chat")
    tok, block = ckpt.tokenizer, ckpt.model.config.block_size
    with report.stage("test answer loss, fine-tuned"):
        m["after"] = C.answer_loss(ckpt, test_convs, dtype)
        ex, _ = sft.encode_chats(test_convs, tok, block, "crop")
        answers = [[i for i, keep in zip(ids[1:], mask[1:]) if keep] for ids, mask in ex]
        m["unigram_answer_loss"] = unigram_loss([t for d in train for t in d], answers, tok)

    # next-turn replies: held-out (context, reference) pairs, every turn after the first of the test dialogues
    pairs = [(as_chat(d[:k], "user" if k % 2 else "assistant"), d[k]) for d in test for k in range(1, len(d))]
    pairs = random.Random(ev["seed"]).sample(pairs, min(ev["reply_turns"], len(pairs)))
    common = Counter(t for d in train for t in d[1:]).most_common(1)[0][0]
    with report.stage("greedy replies to held-out turns") as st:
        prompts = [fit_history(h, tok, block - ev["max_new_tokens"]) for h, _ in pairs]
        outs = C.chat_complete(
            ckpt.model, tok, prompts, max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"]
        )
    refs = [r for _, r in pairs]

    def score(hyps):
        return {
            "BLEU": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrF": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "exact": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
            "distinct_2": distinct(hyps, 2),
            "mean_words": sum(len(h.split()) for h in hyps) / len(hyps),
        }

    m["replies"] = {"model": score(outs), "most_frequent": score([common] * len(refs)), "n": len(refs), **C.cost(st)}
    m["most_frequent_reply"] = common

    # conversations shown as they came: the first test dialogues; the model answers every second turn, each time
    # after the real history (the reference turns, not its own earlier replies)
    shown = []
    for d in test[: ev["examples"]]:
        hist, conv = as_chat(d, "user"), []
        for k in range(1, min(len(d), 2 * ev["example_exchanges"]), 2):
            reply = C.chat_complete(
                ckpt.model,
                tok,
                [fit_history(hist[:k], tok, block - ev["max_new_tokens"])],
                max_new_tokens=ev["max_new_tokens"],
                batch_size=1,
            )[0]
            conv.append({"user": d[k - 1], "reference": d[k], "model": reply})
        shown.append(conv)
    m["examples"] = shown

    b, a = m.get("before"), m["after"]
    loss_rows = [
        ["unigram token frequencies of the training turns (add-one)", f"{m['unigram_answer_loss']:.3f}"],
        ["pre-trained model (before chat fine-tuning)", f"{b['answer_loss']:.3f}" if b else "- (no chat tokens)"],
        ["after chat fine-tuning", f"**{a['answer_loss']:.3f}**"],
    ]
    t1 = C.table([f"model: test answer-token loss, nats/token ({a['answer_tokens']:,} tokens)", "loss"], loss_rows)
    r = m["replies"]
    t2 = C.table(
        [f"next-turn replies to {r['n']} held-out contexts", "BLEU", "chrF", "exact", "distinct-2", "words/reply"],
        [
            [
                name,
                f"{r[k]['BLEU']:.1f}",
                f"{r[k]['chrF']:.1f}",
                C.pct(r[k]["exact"]),
                f"{r[k]['distinct_2']:.3f}",
                f"{r[k]['mean_words']:.1f}",
            ]
            for k, name in (("model", "model, greedy"), ("most_frequent", f"always {common!r} (most frequent reply)"))
        ],
    )
    info = (
        f"{m['finetune']['trainable_parameters']:,} parameters, all trained; test dialogues (the assistant alternately "
        f"the second and the first speaker) cropped to the context of {block}: {a['cropped']} of {len(test_convs)}"
    )
    t3 = C.table(
        ["dialogue", "user (test turn)", "reference reply", "model reply"],
        [[i + 1, x["user"], x["reference"], x["model"]] for i, conv in enumerate(shown) for x in conv],
    )
    return m, [t1, t2, info, t3]
