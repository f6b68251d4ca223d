"""Fold a LoRA adapter into its base checkpoint: base folder + adapter folder -> a plain checkpoint folder.

The result loads like any checkpoint and runs at the base model's speed (no adapter path). The adapter folder
is a bare adapter (adapter.safetensors + adapter_config.json) or a LoRA fine-tuning checkpoint / run folder,
which also holds its tokenizer (used instead of the base's, e.g. with chat tokens added). Extra tensors
ride along: a classifier head (`score.weight`) gives a classifier checkpoint ({"task": "classify",
"labels"}), a grown embedding table grows the base vocabulary first.
What does not live here: LoRA layers (model/lora.py), the checkpoint format (checkpoint.py), argv.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safetensors import safe_open

from pocketgpt.checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter,
    load_checkpoint,
    read_adapter_config,
    require_float,
    resolve,
    save_checkpoint,
)
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.model.lora import merge_lora
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.tokenizer.bpe import FILENAME as TOKENIZER_FILE

# adapter_config.json keys that describe the adapter, not the merged model
NOT_COPIED = (
    "format",
    "version",
    "step",
    "model",
    "lora",
    "targets",
    "adapter",
    "base_checkpoint",
    "trainable_parameters",
)


def _adapter_folder(path: Path) -> Path:
    """The folder holding adapter_config.json: `path` itself, or the checkpoint a run folder's LATEST names."""
    if not (path / ADAPTER_CONFIG).exists() and path.is_dir() and not (path / "config.json").exists():
        try:
            return resolve(path)
        except UserError:
            pass
    return path


def merge_checkpoint(checkpoint_dir: Path | str, adapter_dir: Path | str, out: Path | str) -> Path:
    """Write base + adapter, merged, as `out`/ckpt-0000000 (with LATEST); returns `out`.

    `out` must not exist or be empty. It appears whole or not at all: the checkpoint is written into a
    temp sibling folder that is renamed to `out` last."""
    out, adapter_dir = Path(out), _adapter_folder(Path(adapter_dir))
    # 1) check the destination and the adapter before the (slow) load
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder is not empty: {out}")
    config = read_adapter_config(adapter_dir)
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    # 2) base model (+ grown vocabulary, + classifier head), adapter, merge
    ckpt = load_checkpoint(checkpoint_dir)
    require_float(ckpt, "merging an adapter")
    if ckpt.meta.get("adapter"):
        raise UserError(f"the base checkpoint is itself a LoRA adapter; pass its base checkpoint: {ckpt.path}")
    model = ckpt.model
    tokenizer = Tokenizer.load(adapter_dir) if (adapter_dir / TOKENIZER_FILE).exists() else ckpt.tokenizer
    rows = shapes.get("transformer.wte.weight", [0])[0]
    if rows > model.config.vocab_size and hasattr(model, "resize_vocab"):
        model.resize_vocab(rows)  # chat tokens added while fine-tuning
    extra = {k: v for k, v in config.items() if k not in NOT_COPIED}
    if "score.weight" in shapes and not isinstance(model, GPTClassifier):
        model = GPTClassifier.from_gpt(model, int(shapes["score.weight"][0]))
    if isinstance(model, GPTClassifier):
        labels = extra.get("labels") or [str(i) for i in range(model.n_classes)]
        if len(labels) != model.n_classes:
            raise UserError(
                f"adapter names {len(labels)} labels for a head of {model.n_classes} classes: {adapter_dir}"
            )
        extra.update(task="classify", labels=labels)
    lora_cfg = load_adapter(model, adapter_dir)
    merge_lora(model)
    extra["merged_from"] = {"checkpoint": str(ckpt.path), "adapter": str(adapter_dir), "lora": asdict(lora_cfg)}
    # 3) write into a temp sibling, then rename it into place
    with atomic_dir(out) as tmp:
        save_checkpoint(tmp, "ckpt-0000000", model, tokenizer, step=0, extra=extra)
    return out
