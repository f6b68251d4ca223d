"""Translation, English <-> Chinese (Tatoeba): pre-train on the training pairs as text, chat fine-tune on both
directions, greedy-decode the held-out pairs, score with sacrebleu (chrF, BLEU).

Lives here: reading cmn.txt, the held-out split and the recipe. Not here: what the recipes share (common.py),
argument parsing (run.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import common as C

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.errors import UserError

TO_ZH, TO_EN = "Translate to Chinese: ", "Translate to English: "


def read_tatoeba(path: Path) -> list[tuple[str, str]]:
    """(english, chinese) pairs of `english<TAB>chinese<TAB>attribution` lines; the BOM is dropped."""
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise UserError(f"{path}:{n}: expected english<TAB>chinese[<TAB>attribution], got {line[:80]!r}")
        pairs.append((cols[0].strip(), cols[1].strip()))
    return pairs


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report) -> tuple[dict, list[str]]:
    import sacrebleu

    split = cfg["split"]
    with report.stage("prepare data"):
        pairs = read_tatoeba(data_dir / "tatoeba-cmn" / "cmn.txt")
        random.Random(split["seed"]).shuffle(pairs)
        test = pairs[: split["test_pairs"]]
        seen_en, seen_zh = {e for e, _ in test}, {z for _, z in test}
        train = [(e, z) for e, z in pairs[split["test_pairs"] :] if e not in seen_en and z not in seen_zh]
        print(
            f"translation: {len(test)} held-out pairs; {len(train)} training pairs "
            f"({len(pairs) - len(test) - len(train)} dropped: they share a sentence with a held-out pair)"
        )
        docs = ({"text": f"{e}\n{z}" if i % 2 == 0 else f"{z}\n{e}"} for i, (e, z) in enumerate(train))
        corpus = C.write_jsonl(out / "data" / "pretrain.jsonl", docs)
        chats = [
            r
            for e, z in train
            for r in (
                {"messages": [{"role": "user", "content": TO_ZH + e}, {"role": "assistant", "content": z}]},
                {"messages": [{"role": "user", "content": TO_EN + z}, {"role": "assistant", "content": e}]},
            )
        ]
        random.Random(split["seed"]).shuffle(chats)
        chat_file = C.write_jsonl(out / "data" / "chat.jsonl", chats)
    base, pre = C.base_checkpoint(cfg, corpus, out, report)
    m: dict = {"train_pairs": len(train), "test_pairs": len(test), "chat_records": len(chats), "pretrain": pre}
    m["finetune"] = C.finetune_stage(report, base, cfg["finetune"], chat_file, out / "chat")
    ev, tables = cfg["eval"], []
    with report.stage("translate held-out pairs") as st:
        ckpt = load_checkpoint(out / "chat")
        for key, prefix, src, ref, bleu_tok in (("en-zh", TO_ZH, 0, 1, "zh"), ("zh-en", TO_EN, 1, 0, "13a")):
            hyps = C.chat_complete(
                ckpt.model,
                ckpt.tokenizer,
                [prefix + p[src] for p in test],
                max_new_tokens=ev["max_new_tokens"],
                batch_size=ev["batch_size"],
            )
            refs = [p[ref] for p in test]
            m[key] = {
                "chrF": sacrebleu.corpus_chrf(hyps, [refs]).score,
                "BLEU": sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tok).score,
                "exact": sum(h == r for h, r in zip(hyps, refs)) / len(refs),
                "n": len(refs),
                "examples": [
                    {"source": p[src], "reference": r, "output": h}
                    for p, r, h in list(zip(test, refs, hyps))[: ev["examples"]]
                ],
            }
            tables.append(
                f"{key} examples (the first {ev['examples']} held-out pairs):\n\n"
                + C.table(
                    ["source", "reference", "model output"],
                    [[x["source"], x["reference"], x["output"]] for x in m[key]["examples"]],
                )
            )
    m["decode"] = C.cost(st)
    rows = [
        [k, f"{m[k]['chrF']:.1f}", f"{m[k]['BLEU']:.1f}", C.pct(m[k]["exact"]), m[k]["n"]] for k in ("en-zh", "zh-en")
    ]
    head = C.table(
        [
            "direction",
            "chrF (sacrebleu)",
            "BLEU (sacrebleu; zh tokenizer for Chinese)",
            "exact match",
            "held-out pairs",
        ],
        rows,
    )
    info = (
        f"model: {m['finetune']['trainable_parameters']:,} parameters, all trained; pre-train val loss "
        f"{m['pretrain']['val_loss']:.3f}; chat fine-tune val answer loss {m['finetune']['val_answer_loss']:.3f}"
    )
    return m, [head, info, *tables]
