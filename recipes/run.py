"""Task recipes with measured results: sentiment (SST-2), translation (Tatoeba en<->zh), question answering (GSM8K).

    python recipes/run.py sentiment   --data-dir ../shared/data --out runs/recipes/sentiment
    python recipes/run.py translation --data-dir ../shared/data --out runs/recipes/translation
    python recipes/run.py gsm8k       --data-dir ../shared/data --out runs/recipes/gsm8k
    ... --quick        every size shrunk (the `quick:` section of the YAML): a smoke run in about a minute
    ... --config FILE  another YAML in the same layout as recipes/RECIPE.yaml

Each recipe converts the raw data under --data-dir into the formats pocketgpt takes (JSONL text for
pre-training, JSONL chat records, TSV for classification) under --out/data, trains with the library's own
`pretrain` and `finetune` (no training loop here), evaluates, and writes --out/results.json and results.md.
Sizes and steps live in recipes/RECIPE.yaml. What does not live here: timing, memory and tables (common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import Report, chat_complete, finetune_run, load_config, table, train_run, trainable_parameters, write_jsonl  # noqa: E402

from pocketgpt.checkpoint import load_checkpoint  # noqa: E402
from pocketgpt.errors import UserError  # noqa: E402
from pocketgpt.finetune.run import finetune  # noqa: E402
from pocketgpt.train.pretrain import pretrain  # noqa: E402

TO_ZH, TO_EN = "Translate to Chinese: ", "Translate to English: "


# --- sentiment (SST-2) ----------------------------------------------------------------------------


def bow_baseline(texts, labels, dev_texts, dev_labels, cfg: dict) -> dict:
    """Logistic regression on word counts (train vocabulary), full-batch L-BFGS; the L2 strength is picked on
    a held-out tenth of train (never on dev), then the model is refit on all of train."""
    from pocketgpt.finetune.classify import label_set

    names = label_set(labels)
    vocab: dict[str, int] = {}
    for t in texts:
        for w in t.lower().split():
            vocab.setdefault(w, len(vocab))

    def bags(ts):  # EmbeddingBag input: flat ids + offsets
        ids, offsets = [], []
        for t in ts:
            offsets.append(len(ids))
            ids += [vocab[w] for w in t.lower().split() if w in vocab]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    def fit(ts, ys, l2: float) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.EmbeddingBag(len(vocab), len(names), mode="sum")  # counts @ W: (N, K)
        torch.nn.init.zeros_(model.weight)
        bias = torch.nn.Parameter(torch.zeros(len(names)))
        x, off = bags(ts)
        y = torch.tensor([names.index(v) for v in ys])
        opt = torch.optim.LBFGS([model.weight, bias], lr=1.0, max_iter=cfg["max_iter"], line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x, off) + bias, y) + l2 * model.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        model.bias = bias
        return model

    def accuracy(model, ts, ys) -> float:
        with torch.no_grad():
            x, off = bags(ts)
            pred = (model(x, off) + model.bias).argmax(-1)
        return float((pred == torch.tensor([names.index(v) for v in ys])).float().mean())

    order = random.Random(0).sample(range(len(texts)), len(texts))
    n_val = max(1, len(texts) // 10)
    va, tr = order[:n_val], order[n_val:]
    scores = {
        l2: accuracy(
            fit([texts[i] for i in tr], [labels[i] for i in tr], l2), [texts[i] for i in va], [labels[i] for i in va]
        )
        for l2 in cfg["l2_grid"]
    }
    best = max(scores, key=lambda k: (scores[k], -k))
    model = fit(texts, labels, best)
    acc = accuracy(model, dev_texts, dev_labels)
    print(f"bag of words: {len(vocab)} words · L2 {best} (held-out train accuracy {scores}) · dev accuracy {acc:.4f}")
    return {
        "dev_accuracy": acc,
        "vocabulary": len(vocab),
        "l2": best,
        "trainable_parameters": model.weight.numel() + model.bias.numel(),
    }


def sentiment(cfg: dict, data_dir: Path, out: Path, report: Report) -> tuple[dict, list[str]]:
    from pocketgpt.finetune import classify as C

    train_tsv, dev_tsv = data_dir / "sst2" / "train.tsv", data_dir / "sst2" / "dev.tsv"
    with report.stage("prepare data"):
        texts, labels = C.read_labelled(train_tsv)  # headerless "sentence<TAB>label" reads as is
        dev_texts, dev_labels = C.read_labelled(dev_tsv)
        corpus = write_jsonl(out / "data" / "pretrain.jsonl", ({"text": t} for t in texts))  # no labels
    m: dict = {"train_examples": len(texts), "dev_examples": len(dev_texts)}
    with report.stage("bag-of-words baseline") as st:
        bow = bow_baseline(texts, labels, dev_texts, dev_labels, cfg["baseline"])
    m["bow"] = {**bow, **_cost(st)}
    with report.stage("pre-train") as st:
        pretrain(train_run(cfg, corpus, out / "base"))
    m["pretrain"] = {**_final(out / "base"), **_cost(st), "parameters": trainable_parameters(out / "base")}
    for name in ("full", "lora"):
        with report.stage(f"fine-tune {name}") as st:
            finetune(out / "base", finetune_run(cfg[f"finetune_{name}"], train_tsv, out / name, "classify"))
        m[name] = {**_cost(st), "trainable_parameters": trainable_parameters(out / name)}
        with report.stage(f"evaluate {name} on dev"):
            ckpt = load_checkpoint(out / name)
            preds = C.predict(ckpt.model, ckpt.tokenizer, dev_texts, ckpt.meta["labels"], batch_size=64)
            m[name]["dev_accuracy"] = sum(p["label"] == y for p, y in zip(preds, dev_labels)) / len(dev_labels)
    m["majority_class_dev_accuracy"] = max(dev_labels.count(v) for v in set(dev_labels)) / len(dev_labels)
    total = m["full"]["trainable_parameters"]  # the classifier: trunk + head
    rows = [
        [
            "bag-of-words logistic regression (L-BFGS)",
            _pct(m["bow"]["dev_accuracy"]),
            f"{m['bow']['trainable_parameters']:,}",
            f"{m['bow']['wall_s']:.0f}",
            _mem(m["bow"]),
        ]
    ]
    rows += [
        [
            label,
            _pct(m[k]["dev_accuracy"]),
            f"{m[k]['trainable_parameters']:,} of {total:,}",
            f"{m[k]['wall_s']:.0f} (+ pre-train {m['pretrain']['wall_s']:.0f})",
            _mem(m[k]),
        ]
        for k, label in (
            ("full", "GPT full fine-tuning + classification head"),
            ("lora", f"GPT LoRA rank {cfg['finetune_lora']['lora']['rank']} + classification head"),
        )
    ]
    rows.append(["majority class", _pct(m["majority_class_dev_accuracy"]), "0", "-", "-"])
    t = table(
        [
            "method",
            f"SST-2 dev accuracy (n={len(dev_labels)})",
            "trainable parameters",
            "training time (s)",
            "peak RSS in training stage, MB (rise over its start)",
        ],
        rows,
    )
    return m, [
        t,
        f"pre-training: val loss {m['pretrain']['val_loss']:.3f} nats/token, "
        f"{m['pretrain']['val_bpb']:.3f} bits/byte (held-out train sentences)",
    ]


# --- translation (Tatoeba en <-> zh) --------------------------------------------------------------


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


def translation(cfg: dict, data_dir: Path, out: Path, report: Report) -> tuple[dict, list[str]]:
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
        corpus = write_jsonl(out / "data" / "pretrain.jsonl", docs)
        chats = [
            r
            for e, z in train
            for r in (
                {"messages": [{"role": "user", "content": TO_ZH + e}, {"role": "assistant", "content": z}]},
                {"messages": [{"role": "user", "content": TO_EN + z}, {"role": "assistant", "content": e}]},
            )
        ]
        random.Random(split["seed"]).shuffle(chats)
        chat_file = write_jsonl(out / "data" / "chat.jsonl", chats)
    with report.stage("pre-train") as st:
        pretrain(train_run(cfg, corpus, out / "base"))
    m: dict = {
        "train_pairs": len(train),
        "test_pairs": len(test),
        "chat_records": len(chats),
        "pretrain": {**_final(out / "base"), **_cost(st)},
    }
    with report.stage("chat fine-tune") as st:
        finetune(out / "base", finetune_run(cfg["finetune"], chat_file, out / "chat", "chat"))
    m["finetune"] = {**_final(out / "chat"), **_cost(st), "trainable_parameters": trainable_parameters(out / "chat")}
    ev, tables = cfg["eval"], []
    with report.stage("translate held-out pairs") as st:
        ckpt = load_checkpoint(out / "chat")
        for key, prefix, src, ref, bleu_tok in (("en-zh", TO_ZH, 0, 1, "zh"), ("zh-en", TO_EN, 1, 0, "13a")):
            hyps = chat_complete(
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
                + table(
                    ["source", "reference", "model output"],
                    [[x["source"], x["reference"], x["output"]] for x in m[key]["examples"]],
                )
            )
    m["decode"] = _cost(st)
    rows = [
        [k, f"{m[k]['chrF']:.1f}", f"{m[k]['BLEU']:.1f}", _pct(m[k]["exact"]), m[k]["n"]] for k in ("en-zh", "zh-en")
    ]
    head = table(
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


# --- question answering (GSM8K) -------------------------------------------------------------------

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


def gsm8k(cfg: dict, data_dir: Path, out: Path, report: Report) -> tuple[dict, list[str]]:
    from pocketgpt.data import sft
    from pocketgpt.device import pick_dtype

    def read(name):
        return [
            json.loads(ln) for ln in (data_dir / "gsm8k" / name).read_text(encoding="utf-8").splitlines() if ln.strip()
        ]

    with report.stage("prepare data"):
        train, test = read("train.jsonl"), read("test.jsonl")
        corpus = write_jsonl(
            out / "data" / "pretrain.jsonl", ({"text": r["question"] + "\n" + r["answer"]} for r in train)
        )
        sft_file = write_jsonl(
            out / "data" / "sft.jsonl", ({"prompt": r["question"], "completion": r["answer"]} for r in train)
        )
        test_convs = [
            [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in test
        ]
    dtype = pick_dtype(cfg["pretrain"].get("dtype", "auto"), torch.device("cpu"))

    def test_loss(ckpt) -> dict:
        examples, stats = sft.encode_chats(test_convs, ckpt.tokenizer, ckpt.model.config.block_size, "crop")
        r = sft.answer_loss(ckpt.model, examples, batch_size=16, dtype=dtype)
        return {"answer_loss": r["val_answer_loss"], "answer_tokens": r["val_answer_tokens"], **stats}

    with report.stage("pre-train") as st:
        pretrain(train_run(cfg, corpus, out / "base"))
    m: dict = {
        "train_examples": len(train),
        "test_examples": len(test),
        "eval_dtype": str(dtype).split(".")[-1],
        "pretrain": {**_final(out / "base"), **_cost(st)},
    }
    with report.stage("test answer loss, base model"):
        m["before"] = test_loss(load_checkpoint(out / "base"))
    with report.stage("instruction fine-tune") as st:
        finetune(out / "base", finetune_run(cfg["finetune"], sft_file, out / "chat", "chat"))
    m["finetune"] = {**_final(out / "chat"), **_cost(st), "trainable_parameters": trainable_parameters(out / "chat")}
    ckpt = load_checkpoint(out / "chat")
    with report.stage("test answer loss, fine-tuned"):
        m["after"] = test_loss(ckpt)
    ev = cfg["eval"]
    subset = test[: ev["exact_match_questions"]] if ev.get("exact_match_questions") else test
    with report.stage("exact match (greedy)") as st:
        outs = chat_complete(
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
        **_cost(st),
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
            f"{_pct(em['accuracy'])} ({em['correct']}/{em['questions']})",
        ],
        [
            f"exact match of always answering {em['constant_answer']} (the most common training answer)",
            "-",
            _pct(em["constant_answer_accuracy"]),
        ],
    ]
    t = table(["metric", "base (pre-trained)", "after instruction fine-tuning"], rows)
    ex = table(
        ["question", "reference", "model output (extracted number)"],
        [[x["question"], x["reference"], f"{x['output']} ({x['extracted']})"] for x in m["examples"]],
    )
    info = (
        f"{m['finetune']['trainable_parameters']:,} parameters, all trained; test conversations cropped to the "
        f"context: {a['cropped']} of {len(test)}; outputs containing '####': {em['with_####']}/{em['questions']}"
    )
    return m, [t, info, ex]


# --- shared bits and main ---------------------------------------------------------------------------


def _cost(stage: dict) -> dict:
    """Wall time and memory (RSS at its start, peak during it) of a closed stage."""
    return {k: stage[k] for k in ("wall_s", "rss_start_mb", "peak_rss_mb")}


def _mem(c: dict) -> str:
    return f"{c['peak_rss_mb']:.0f} (+{c['peak_rss_mb'] - c['rss_start_mb']:.0f})"


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final.json").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


RECIPES = {"sentiment": sentiment, "translation": translation, "gsm8k": gsm8k}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--data-dir", required=True, type=Path, help="folder holding sst2/, tatoeba-cmn/, gsm8k/")
    p.add_argument("--out", required=True, type=Path, help="output folder (data, runs, results.json)")
    p.add_argument("--quick", action="store_true", help="shrink everything (the YAML's quick: section)")
    p.add_argument("--config", help="a YAML to use instead of recipes/RECIPE.yaml")
    p.add_argument("--overwrite", action="store_true", help="delete --out first if it holds anything")
    args = p.parse_args(argv)
    try:
        if args.out.exists() and any(args.out.iterdir()):
            if not args.overwrite:
                raise UserError(f"{args.out} is not empty; pass --overwrite to replace it")
            shutil.rmtree(args.out)
        args.out.mkdir(parents=True, exist_ok=True)
        cfg = load_config(args.recipe, args.config, args.quick)
        report = Report(args.recipe, ["recipes/run.py", *argv])
        metrics, tables = RECIPES[args.recipe](cfg, args.data_dir, args.out, report)
        report.finish(args.out, cfg, metrics, tables)
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
