"""Sentiment (SST-2): pre-train a small GPT on the sentences, fine-tune it with a classification head (full and
LoRA), and fit a bag-of-words logistic regression beside it as the baseline.

Lives here: the baseline and the recipe. Not here: timing, memory, run configs and tables (common.py), argument
parsing (run.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import common as C
import torch

from pocketgpt.checkpoint import load_checkpoint


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


def run(cfg: dict, data_dir: Path, out: Path, report: C.Report) -> tuple[dict, list[str]]:
    from pocketgpt.finetune import classify

    train_tsv, dev_tsv = data_dir / "sst2" / "train.tsv", data_dir / "sst2" / "dev.tsv"
    with report.stage("prepare data"):
        texts, labels = classify.read_labelled(train_tsv)  # headerless "sentence<TAB>label" reads as is
        dev_texts, dev_labels = classify.read_labelled(dev_tsv)
        corpus = C.write_jsonl(out / "data" / "pretrain.jsonl", ({"text": t} for t in texts))  # no labels
    m: dict = {"train_examples": len(texts), "dev_examples": len(dev_texts)}
    with report.stage("bag-of-words baseline") as st:
        bow = bow_baseline(texts, labels, dev_texts, dev_labels, cfg["baseline"])
    m["bow"] = {**bow, **C.cost(st)}
    base, m["pretrain"] = C.base_checkpoint(cfg, corpus, out, report)
    for name in ("full", "lora"):
        m[name] = C.finetune_stage(
            report, base, cfg[f"finetune_{name}"], train_tsv, out / name, "classify", f"fine-tune {name}"
        )
        with report.stage(f"evaluate {name} on dev"):
            ckpt = load_checkpoint(out / name)
            preds = classify.predict(ckpt.model, ckpt.tokenizer, dev_texts, ckpt.meta["labels"], batch_size=64)
            m[name]["dev_accuracy"] = sum(p["label"] == y for p, y in zip(preds, dev_labels)) / len(dev_labels)
    m["majority_class_dev_accuracy"] = max(dev_labels.count(v) for v in set(dev_labels)) / len(dev_labels)
    total = m["full"]["trainable_parameters"]  # the classifier: trunk + head
    rows = [
        [
            "bag-of-words logistic regression (L-BFGS)",
            C.pct(m["bow"]["dev_accuracy"]),
            f"{m['bow']['trainable_parameters']:,}",
            f"{m['bow']['wall_s']:.0f}",
            C.mem(m["bow"]),
        ]
    ]
    rows += [
        [
            label,
            C.pct(m[k]["dev_accuracy"]),
            f"{m[k]['trainable_parameters']:,} of {total:,}",
            f"{m[k]['wall_s']:.0f} (+ pre-train {m['pretrain']['wall_s']:.0f})",
            C.mem(m[k]),
        ]
        for k, label in (
            ("full", "GPT full fine-tuning + classification head"),
            ("lora", f"GPT LoRA rank {cfg['finetune_lora']['lora']['rank']} + classification head"),
        )
    ]
    rows.append(["majority class", C.pct(m["majority_class_dev_accuracy"]), "0", "-", "-"])
    t = C.table(
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
