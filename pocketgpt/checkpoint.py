"""Checkpoints: one folder format for training, generation, evaluation and serving.

A run folder holds `LATEST` (the name of the newest complete checkpoint), `ckpt-XXXXXXX/`
folders, `metrics.jsonl`, `config.yaml` and `loss.png`. A checkpoint folder holds:
    model.safetensors         weights (never pickles)
    config.json               {"format", "model": ModelConfig, "step", ...}
    pocketgpt_tokenizer.json  the tokenizer
    train_state.pt            optimizer, RNG states, data position (tensors/primitives only,
                              loaded with weights_only=True)
Writes are atomic: a checkpoint is written into a temp folder, fsynced, renamed into place, and
only then is LATEST replaced (os.replace). A kill at any moment leaves the previous one loadable: a folder
of the same name is parked as `.NAME.old` (which `resolve` falls back to) until LATEST is written, and the
next save removes what a killed one left behind. Files get the usual umask permissions, not mkstemp's 0600.
What does not live here: the training loop, building optimizers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pocketgpt.config import ModelConfig, from_dict, to_dict
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_write, umask
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer

FORMAT = "pocketgpt-checkpoint"
VERSION = 1
LATEST = "LATEST"


@dataclass
class Checkpoint:
    path: Path
    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]          # everything in config.json besides the model config (step, extra)






def _backup_name(name: str) -> str:
    """Where save_checkpoint parks an existing folder of the same name while it swaps the new one in."""
    return f".{name}.old"


def _remove_leftovers(run_dir: Path, pattern: str) -> None:
    """Temp files/folders (`.NAME.XXXX.tmp`) or parked folders (`.NAME.old`) left by a killed save.

    One writer per run folder is assumed (as for LATEST itself)."""
    for p in run_dir.glob(pattern):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(run_dir: Path | str, name: str, model: GPT, tokenizer: Tokenizer, *,
                    step: int = 0, train_state: Optional[dict] = None, extra: Optional[dict] = None,
                    keep_last: int = 1, write_weights: Optional[Callable[[Path], None]] = None) -> Path:
    """Write run_dir/name atomically, point LATEST at it, then drop older checkpoints beyond keep_last.

    `write_weights(folder)` replaces the default model.safetensors (a LoRA run writes only its adapter).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(run_dir, ".*.tmp")
    final = run_dir / name
    backup = run_dir / _backup_name(name)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())                  # mkdtemp makes 0700; give the usual permissions
        if write_weights is not None:
            write_weights(tmp)
        else:
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            if model.config.tie_embeddings:
                state.pop("lm_head.weight", None)         # one copy of the shared matrix
            save_file(state, str(tmp / "model.safetensors"))
        meta = {"format": FORMAT, "version": VERSION, "step": step, "model": to_dict(model.config), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        tokenizer.save(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            # 1) park the old folder (LATEST may name it: resolve() falls back to the parked copy)
            # 2) move the new one into place  # 3) drop the parked copy once LATEST is written
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(final, backup)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(run_dir / LATEST, name + "\n")
    _fsync_dir(run_dir)
    _remove_leftovers(run_dir, ".*.old")                  # LATEST names a complete folder: parked ones can go
    old = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep_last - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def resolve(path: Path | str) -> Path:
    """A checkpoint folder from itself or from its run folder (via LATEST)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if (path / "config.json").exists():
        return path
    latest = path / LATEST
    if latest.exists():
        target = path / latest.read_text().strip()
        if (target / "config.json").exists():
            return target
        parked = path / _backup_name(target.name)     # killed while save_checkpoint swapped a same-named folder
        if (parked / "config.json").exists():
            return parked
        raise UserError(f"{latest} points to {target.name}, which is missing or incomplete")
    raise UserError(f"not a pocketgpt checkpoint (no config.json or {LATEST}): {path}")


def read_meta(path: Path | str) -> dict[str, Any]:
    ckpt = resolve(path)
    try:
        meta = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint config is unreadable: {ckpt / 'config.json'} ({e.__class__.__name__})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"not a pocketgpt checkpoint (format={meta.get('format')!r}): {ckpt}")
    return meta


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild model and tokenizer from a checkpoint (or run) folder alone.

    A fine-tuned classifier comes back as a GPTClassifier; a LoRA checkpoint (adapter only) loads its base
    checkpoint first and applies the adapter, unmerged.
    """
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    cfg: ModelConfig = from_dict(ModelConfig, meta.pop("model"))
    tokenizer = Tokenizer.load(ckpt)
    if tokenizer.n_vocab > cfg.vocab_size:
        raise UserError(f"tokenizer has {tokenizer.n_vocab} tokens but the model only {cfg.vocab_size}: "
                        f"the checkpoint mixes two vocabularies ({ckpt})")
    if meta.get("adapter"):
        model = _load_adapter_model(ckpt, cfg, meta)
    else:
        model = _build(cfg, meta)
        _load_weights(model, ckpt / "model.safetensors", ckpt)
    model.to(device).eval()
    return Checkpoint(path=ckpt, model=model, tokenizer=tokenizer, meta=meta)


def _build(cfg: ModelConfig, meta: dict) -> GPT:
    if meta.get("task") == "classify":
        from pocketgpt.finetune.classify import GPTClassifier
        return GPTClassifier(cfg, len(meta["labels"]))
    return GPT(cfg)


def _load_weights(model: GPT, weights: Path, ckpt: Path) -> None:
    if not weights.exists():
        raise UserError(f"checkpoint has no {weights.name}: {ckpt}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint weights are truncated or corrupt: {weights} ({e})") from None
    if model.config.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    check_tensors(model.state_dict(), state, required=set(model.state_dict()),
                  problem=f"checkpoint weights do not match its config ({ckpt})")
    model.load_state_dict(state)


def check_tensors(own: dict, given: dict, *, required: set, problem: str) -> None:
    """`given` must hold every `required` key, no key the model lacks, and the model's shapes; else one UserError."""
    missing = sorted(required - set(given))
    unexpected = sorted(set(given) - set(own))
    if missing or unexpected:
        raise UserError(f"{problem}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in given.items():
        if v.shape != own[k].shape:
            raise UserError(f"{problem}: {k} has shape {tuple(v.shape)}, the model's is {tuple(own[k].shape)}")


def _load_adapter_model(ckpt: Path, cfg: ModelConfig, meta: dict) -> GPT:
    """Base checkpoint + (vocabulary grown for chat tokens) + (classifier head) + LoRA adapter, unmerged."""
    from pocketgpt.finetune.lora import load_adapter
    base_path = meta.get("base_checkpoint")
    if not base_path or not Path(base_path).exists():
        raise UserError(f"{ckpt} is a LoRA adapter; its base checkpoint {base_path!r} is missing")
    model = load_checkpoint(base_path).model
    if model.config.vocab_size < cfg.vocab_size:
        model.resize_vocab(cfg.vocab_size)
    if meta.get("task") == "classify":
        from pocketgpt.finetune.classify import GPTClassifier
        model = GPTClassifier.from_gpt(model, len(meta["labels"]))
    load_adapter(model, ckpt)
    return model


def prepare_run_dir(out: Path | str, resume: bool) -> Optional[Path]:
    """The checkpoint to resume from (None: start fresh); refuse to overwrite a run."""
    out = Path(out)
    has_run = (out / LATEST).exists()
    if has_run and not resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and has_run:
        return resolve(out)
    if resume:
        print(f"resume: no checkpoint in {out} yet; starting from step 0")
    return None


def load_train_state(path: Path | str) -> Optional[dict]:
    f = resolve(path) / "train_state.pt"
    if not f.exists():
        return None
    try:
        with warnings.catch_warnings():                   # torch warns about foreign pickles it then refuses
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong content: never executed, only refused
        raise UserError(f"training state is unreadable: {f} ({e.__class__.__name__})") from None


def load_tokenizer(path: Path | str) -> Tokenizer:
    """A tokenizer from a tokenizer file/folder, a checkpoint or run folder, or a GPT-2 vocabulary folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"tokenizer not found: {p}")
    if p.is_dir() and not (p / "pocketgpt_tokenizer.json").exists():
        if (p / LATEST).exists() or (p / "config.json").exists() and (resolve(p) / "pocketgpt_tokenizer.json").exists():
            return Tokenizer.load(resolve(p))
        if any((p / f).exists() for f in ("encoder.json", "vocab.json")):
            return Tokenizer.from_gpt2_files(p)
    return Tokenizer.load(p)
