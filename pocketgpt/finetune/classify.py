"""Text classification on the GPT trunk: labelled files, batches, metrics and prediction.

The model (model/classifier.py) is a GPT plus a `score` head read at the last real token (as Hugging Face's
GPT2ForSequenceClassification): with causal attention that token has seen the whole text and nothing
after it, so right padding never changes it. Labels stay strings until `label_set` numbers them.

What does not live here: the model, LoRA (model/lora.py), the training loop (train/loop.py), argv (cli/).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.device import autocast
from pocketgpt.errors import UserError

# --- labelled files ---------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def label_set(labels) -> list[str]:
    """The distinct labels, sorted numeric-aware: numbers by value first ("2" < "10"), then the rest as text."""

    def key(s: str):
        return (0, float(s), s) if _NUMBER.fullmatch(s.strip()) else (1, 0.0, s)

    return sorted({str(x) for x in labels}, key=key)


def _read_table(path: Path, delimiter: str, text_column: str, label_column: str) -> list[tuple[int, str, str]]:
    """(line, text, label) rows of a CSV or TSV file; TSV is unquoted (GLUE), headerless 2-column TSV allowed."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip() for c in rows[0][1]]
    if delimiter == "\t" and len(header) == 2 and text_column not in header and label_column not in header:
        ti, li = 0, 1  # "sentence<TAB>label" with no header (SST-2)
    else:
        for col in (text_column, label_column):
            if col not in header:
                raise UserError(f"{path} has no column {col!r}; columns found: {', '.join(map(repr, header))}")
        ti, li, rows = header.index(text_column), header.index(label_column), rows[1:]
    width = max(ti, li) + 1
    out = []
    for line, r in rows:
        if len(r) < width:
            raise UserError(f"{path}:{line}: expected at least {width} columns, got {len(r)}")
        out.append((line, r[ti], r[li]))
    return out


def _read_jsonl(path: Path, text_column: str, label_column: str) -> list[tuple[int, str, str]]:
    """(line, text, label) from one JSON object per line (a .json file holding one array also works)."""
    raw = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    if path.suffix == ".json" and raw.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(raw), start=1))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    else:
        items = []
        for i, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                try:
                    items.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: malformed JSON line ({e.msg})") from None
    out = []
    for i, obj in items:
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        for col in (text_column, label_column):
            if col not in obj:
                raise UserError(f"{path}:{i} has no column {col!r}; columns found: {', '.join(map(repr, obj))}")
        text, label = obj[text_column], obj[label_column]
        if not isinstance(text, str):
            raise UserError(f"{path}:{i}: column {text_column!r} must be a string, got {type(text).__name__}")
        if isinstance(label, (dict, list)) or label is None:
            raise UserError(f"{path}:{i}: column {label_column!r} must be a string or number, got {label!r}")
        out.append((i, text, str(label)))
    return out


def read_labelled(path, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str]]:
    """(texts, labels) from CSV (.csv), TSV (.tsv/.tab, header optional) or JSON lines (.jsonl/.json).

    Labels stay strings ("0", "positive"); `label_set` orders them. Bad input raises UserError naming the
    file, line or column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"labelled data not found: {path}")
    ext = path.suffix.lower()
    if ext == ".csv":
        rows = _read_table(path, ",", text_column, label_column)
    elif ext in (".tsv", ".tab"):
        rows = _read_table(path, "\t", text_column, label_column)
    elif ext in (".jsonl", ".json"):
        rows = _read_jsonl(path, text_column, label_column)
    else:
        raise UserError(f"cannot read labelled data from {path}: use .csv, .tsv, .tab, .jsonl or .json")
    if not rows:
        raise UserError(f"{path} has no rows")
    texts, labels = [], []
    for line, text, label in rows:
        if not text.strip():
            raise UserError(f"{path}:{line}: empty text in column {text_column!r}")
        if not label.strip():
            raise UserError(f"{path}:{line}: empty label in column {label_column!r}")
        texts.append(text)
        labels.append(label.strip())
    if len(set(labels)) < 2:
        raise UserError(f"{path}: every row has label {labels[0]!r}; classification needs at least 2 classes")
    return texts, labels


def read_column(path, text_column: str = "text") -> list[str]:
    """The texts of a file to classify: non-empty lines of a .txt, or one column of a CSV / TSV / JSONL."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data not found: {path}")
    ext = path.suffix.lower()
    if ext in (".txt", ".text"):
        texts = [ln for ln in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if ln.strip()]
    elif ext in (".csv", ".tsv", ".tab"):
        texts = [t for _, t, _ in _read_table(path, "," if ext == ".csv" else "\t", text_column, text_column)]
    elif ext in (".jsonl", ".json"):
        texts = [t for _, t, _ in _read_jsonl(path, text_column, text_column)]
    else:
        raise UserError(f"cannot read texts from {path}: use .txt, .csv, .tsv, .jsonl or .json")
    if not texts:
        raise UserError(f"{path} holds no text to classify")
    return texts


# --- tokens and batches -----------------------------------------------------------------------


def encode_texts(
    texts: list[str], tokenizer, block_size: int, overlong: Literal["crop", "drop"] = "crop"
) -> tuple[list[list[int]], list[int], dict]:
    """[eot] + encode(text) per text, so the first word has the context it had in pre-training.

    Longer than block_size: cropped keeping the start ("crop") or left out ("drop"). Returns the id lists,
    the indices of the texts kept, and counts {"texts", "kept", "cropped", "dropped", "max_len", "mean_len"}."""
    if overlong not in ("crop", "drop"):
        raise UserError(f"overlong must be 'crop' or 'drop', got {overlong!r}")
    encoded, kept, cropped, dropped = [], [], 0, 0
    for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
        ids = [tokenizer.eot_id] + ids
        if len(ids) > block_size:
            if overlong == "drop":
                dropped += 1
                continue
            ids, cropped = ids[:block_size], cropped + 1
        encoded.append(ids)
        kept.append(i)
    if texts and not encoded:
        raise UserError(f"all {len(texts)} texts are longer than block_size={block_size}; use overlong=crop")
    lens = [len(e) for e in encoded]
    stats = {
        "texts": len(texts),
        "kept": len(encoded),
        "cropped": cropped,
        "dropped": dropped,
        "max_len": max(lens, default=0),
        "mean_len": float(np.mean(lens)) if lens else 0.0,
    }
    return encoded, kept, stats


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: x (B, T) int64, lengths (B,) int64."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)  # (B,)
    x = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.int64)  # (B, T)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
    return x, lengths


class ClassifyBatches:
    """Batch `step` (micro-batch `micro`) is a pure function of (seed, rank, step, micro): batch_size examples
    drawn without replacement (with, if there are fewer examples), right-padded to the longest of them."""

    def __init__(
        self,
        encoded: list[list[int]],
        label_ids: list[int],
        batch_size: int,
        block_size: int,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        device: torch.device | str = "cpu",
    ):
        if not encoded or len(encoded) != len(label_ids):
            raise ValueError(f"need as many labels as texts (>= 1), got {len(encoded)} texts, {len(label_ids)} labels")
        too_long = [len(e) for e in encoded if not 1 <= len(e) <= block_size]
        if too_long:
            raise ValueError(f"sequences must hold 1..block_size={block_size} tokens, got one of {too_long[0]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoded, self.label_ids = encoded, list(label_ids)
        self.batch_size, self.block_size, self.pad_id = batch_size, block_size, pad_id
        self.seed, self.rank, self.device = seed, rank, torch.device(device)

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T) int64 right-padded with pad_id, y (B,) int64 labels, lengths (B,) int64."""
        rng = np.random.default_rng([self.seed, self.rank, step, micro])
        n = len(self.encoded)
        rows = rng.choice(n, size=self.batch_size, replace=self.batch_size > n)
        x, lengths = _pad([self.encoded[i] for i in rows], self.pad_id)  # (B, T), (B,)
        y = torch.tensor([self.label_ids[i] for i in rows], dtype=torch.int64)  # (B,)
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in (x, y, lengths))
        return x.to(self.device), y.to(self.device), lengths.to(self.device)

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "examples": len(self.encoded),
        }


def _logits(
    model: nn.Module, encoded: list[list[int]], batch_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Logits (N, n_classes) float32 on the CPU, in the order of `encoded`; batches of similar lengths."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [None] * len(encoded)
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        x, lengths = _pad([encoded[i] for i in chunk], pad_id=0)  # padding is never read
        with autocast(device, dtype):
            logits, _ = model(x.to(device), None, lengths.to(device))  # (b, n_classes)
        for i, row in zip(chunk, logits.float().cpu()):
            out[i] = row
    return torch.stack(out)  # (N, n_classes)


@torch.no_grad()
def classify_metrics(
    model: nn.Module,
    encoded: list[list[int]],
    label_ids: list[int],
    n_classes: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """{"val_accuracy", "val_macro_f1", "val_loss"} over the examples; the model's train/eval mode is restored.

    Macro-F1 is the unweighted mean of per-class F1 over the classes that occur in the targets or the
    predictions (scikit-learn's convention; a class with no true and no predicted example is left out)."""
    if not encoded:
        raise UserError("no validation examples to score")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        logits = _logits(model, encoded, batch_size, device, dtype)  # (N, K)
    finally:
        model.train(was_training)
    y = torch.tensor(label_ids, dtype=torch.int64)  # (N,)
    pred = logits.argmax(dim=-1)  # (N,)
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp, fn = int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))  # = 2PR / (P + R)
    return {
        "val_accuracy": float((pred == y).float().mean()),
        "val_macro_f1": float(np.mean(f1s)),
        "val_loss": float(F.cross_entropy(logits, y)),
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[str],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """[{"label": most likely label, "probs": {label: probability}}] per text; overlong texts are cropped."""
    n_out = model.score.out_features
    if len(labels) != n_out:
        raise UserError(f"the classifier has {n_out} classes but {len(labels)} labels were given: {labels}")
    if not texts:
        return []
    encoded, _, _ = encode_texts(texts, tokenizer, model.config.block_size, "crop")
    was_training = model.training
    model.eval()
    try:
        probs = _logits(model, encoded, batch_size, torch.device(device), torch.float32).softmax(-1)  # (N, K)
    finally:
        model.train(was_training)
    return [{"label": labels[int(p.argmax())], "probs": {lab: float(v) for lab, v in zip(labels, p)}} for p in probs]
