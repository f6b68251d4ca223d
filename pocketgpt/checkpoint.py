"""Checkpoints: one folder format for training, generation, evaluation and serving.

A run folder holds `LATEST` (the name of the newest complete checkpoint), `ckpt-XXXXXXX/`
folders, `metrics.jsonl`, `config.yaml` and `loss.png`. A checkpoint folder holds:
    model.safetensors         weights (never pickles); a quantized checkpoint (pocketgpt quantize) holds
                              `<name>.weight_int8` (int8) + `<name>.scale` (float32) for its int8 layers, and
                              config.json says "quantized": {"bits": 8, "scheme": "per-channel-absmax"}
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
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_tensors

from pocketgpt.config import LoRAConfig, ModelConfig, from_dict, to_dict
from pocketgpt.errors import UserError
from pocketgpt.fileio import atomic_dir, atomic_write, fsync_dir, remove_leftovers
from pocketgpt.model import GPT
from pocketgpt.model.classifier import GPTClassifier
from pocketgpt.model.lora import apply_lora, lora_modules, lora_state_dict
from pocketgpt.model.quant import SCHEME, quantize_model
from pocketgpt.tokenizer import Tokenizer

FORMAT = "pocketgpt-checkpoint"
VERSION = 1
LATEST = "LATEST"
ADAPTER_FORMAT = "pocketgpt-lora"
ADAPTER_VERSION = 1
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Checkpoint:
    path: Path
    model: GPT
    tokenizer: Tokenizer
    meta: dict[str, Any]  # everything in config.json besides the model config (step, extra)


def prompt_bos(ckpt: Checkpoint) -> bool:
    """Whether this checkpoint's prompts start with <|endoftext|>: what it records ("bos" in config.json), else
    true for models pocketgpt trained (documents are separated by it, so text follows it) and false for checkpoints
    converted from Hugging Face (GPT-2's tokenizer adds nothing, and transformers' generate() feeds the prompt
    alone). `--bos / --no-bos` on the commands override it."""
    if "bos" in ckpt.meta:
        return bool(ckpt.meta["bos"])
    return not str(ckpt.meta.get("converted_from", "")).startswith("huggingface")


def _backup_name(name: str) -> str:
    """Where save_checkpoint parks an existing folder of the same name while it swaps the new one in."""
    return f".{name}.old"


def write_checkpoint_files(
    folder: Path,
    model: GPT,
    tokenizer: Tokenizer,
    *,
    step: int = 0,
    train_state: dict | None = None,
    extra: dict | None = None,
    write_weights: Callable[[Path], None] | None = None,
    weights: dict | None = None,
) -> None:
    """The files of one checkpoint, written into `folder` (which the caller publishes atomically).
    `weights`: the model's full state dict when the caller has it (gathered from FSDP shards); default model's."""
    if write_weights is not None:
        write_weights(folder)
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # one copy of the shared matrix
        save_file(state, str(folder / "model.safetensors"))
    meta = {"format": FORMAT, "version": VERSION, "step": step, "model": to_dict(model.config), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    tokenizer.save(folder)
    if train_state is not None:
        torch.save(train_state, folder / "train_state.pt")


def save_checkpoint(
    run_dir: Path | str,
    name: str,
    model: GPT,
    tokenizer: Tokenizer,
    *,
    step: int = 0,
    train_state: dict | None = None,
    extra: dict | None = None,
    keep_last: int = 1,
    write_weights: Callable[[Path], None] | None = None,
    weights: dict | None = None,
) -> Path:
    """Write run_dir/name atomically, point LATEST at it, then drop older checkpoints beyond keep_last.

    `write_weights(folder)` replaces the default model.safetensors (a LoRA run writes only its adapter).
    A folder of the same name is parked as `.NAME.old` (which `resolve` falls back to) until LATEST is written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir, ".*.tmp")
    final = run_dir / name
    with atomic_dir(final, if_exists="park", park_as=run_dir / _backup_name(name)) as tmp:
        write_checkpoint_files(
            tmp,
            model,
            tokenizer,
            step=step,
            train_state=train_state,
            extra=extra,
            write_weights=write_weights,
            weights=weights,
        )
    atomic_write(run_dir / LATEST, name + "\n")
    fsync_dir(run_dir)
    remove_leftovers(run_dir, ".*.old")  # LATEST names a complete folder: parked ones can go
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
        parked = path / _backup_name(target.name)  # killed while save_checkpoint swapped a same-named folder
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
        raise UserError(
            f"tokenizer has {tokenizer.n_vocab} tokens but the model only {cfg.vocab_size}: "
            f"the checkpoint mixes two vocabularies ({ckpt})"
        )
    if meta.get("adapter"):
        model = _load_adapter_model(ckpt, cfg, meta)
    else:
        model = _build(cfg, meta)
        if meta.get("quantized"):  # int8 layers (model/quant.py) to load `<name>.weight_int8` / `<name>.scale` into
            _check_quantized(meta["quantized"], ckpt)
            quantize_model(model, empty=True)
        _load_weights(model, ckpt / "model.safetensors", ckpt)
    model.to(device).eval()
    return Checkpoint(path=ckpt, model=model, tokenizer=tokenizer, meta=meta)


def _build(cfg: ModelConfig, meta: dict) -> GPT:
    if meta.get("task") == "classify":
        return GPTClassifier(cfg, len(meta["labels"]))
    return GPT(cfg)


def _load_weights(model: GPT, weights: Path, ckpt: Path) -> None:
    if not weights.exists():
        raise UserError(f"checkpoint has no {weights.name}: {ckpt}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint weights are truncated or corrupt: {weights} ({e})") from None
    if model.config.tie_embeddings and "lm_head.weight" in model.state_dict():  # an int8 head has its own copy
        state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    check_tensors(
        model.state_dict(),
        state,
        required=set(model.state_dict()),
        problem=f"checkpoint weights do not match its config ({ckpt})",
    )
    model.load_state_dict(state)


def require_float(ckpt: Checkpoint, doing: str) -> None:
    """UserError when `ckpt` holds int8 weights: training, merging and export need the float checkpoint."""
    if ckpt.meta.get("quantized"):
        src = ckpt.meta.get("quantized_from")
        raise UserError(
            f"{doing} needs float weights; {ckpt.path} is int8 (pocketgpt quantize){f': use {src}' if src else ''}"
        )


def _check_quantized(q, ckpt: Path) -> None:
    if q != SCHEME:
        raise UserError(f"{ckpt} is quantized as {q!r}; this pocketgpt reads only {SCHEME!r}")


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
    base_path = meta.get("base_checkpoint")
    if not base_path or not Path(base_path).exists():
        raise UserError(f"{ckpt} is a LoRA adapter; its base checkpoint {base_path!r} is missing")
    model = load_checkpoint(base_path).model
    if model.config.vocab_size < cfg.vocab_size:
        model.resize_vocab(cfg.vocab_size)
    if meta.get("task") == "classify":
        model = GPTClassifier.from_gpt(model, len(meta["labels"]))
    load_adapter(model, ckpt)
    return model


def prepare_run_dir(out: Path | str, resume: bool) -> Path | None:
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


def load_train_state(path: Path | str) -> dict | None:
    f = resolve(path) / "train_state.pt"
    if not f.exists():
        return None
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles it then refuses
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


# ---- LoRA adapter folders: adapter.safetensors + adapter_config.json, a few hundred KB beside a base checkpoint


def save_adapter(
    directory: Path | str,
    model: nn.Module,
    cfg: LoRAConfig,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    meta: dict | None = None,
) -> None:
    """Write directory/adapter.safetensors (lora tensors + extra_tensors, e.g. a classifier head) and
    directory/adapter_config.json, each atomically."""
    directory = Path(directory)
    tensors = lora_state_dict(model)
    if not tensors:
        raise UserError("the model has no LoRA layers to save; call apply_lora first")
    clash = sorted(set(tensors) & set(extra_tensors or {}))
    if clash:
        raise ValueError(f"extra_tensors repeat adapter tensor names: {clash}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in {**tensors, **(extra_tensors or {})}.items()}
    config = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "lora": asdict(cfg),
        "targets": list(lora_modules(model)),
    }
    clash = sorted(set(config) & set(meta or {}))
    if clash:
        raise ValueError(f"meta may not override {clash}")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / ADAPTER_WEIGHTS, save_tensors(tensors))
    atomic_write(directory / ADAPTER_CONFIG, json.dumps({**config, **(meta or {})}, indent=2))


def read_adapter_config(directory: Path | str) -> dict:
    """adapter_config.json of an adapter folder, checked to be one (UserError otherwise)."""
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"not a LoRA adapter folder (no {ADAPTER_CONFIG}): {directory}")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"LoRA adapter folder has no {ADAPTER_WEIGHTS}: {directory}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"adapter config is unreadable: {path} ({e.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT or "lora" not in config:
        raise UserError(
            f"not a pocketgpt LoRA adapter (format={config.get('format') if isinstance(config, dict) else None!r}): {path}"
        )
    return config


def load_adapter(model: nn.Module, directory: Path | str) -> LoRAConfig:
    """Apply the folder's LoRA config to `model` (unless applied already) and load its tensors.

    Non-LoRA tensors in the file (e.g. `score.weight`) are copied into the model's tensor of that name.
    Any name or shape that does not fit raises UserError("adapter does not match this checkpoint: ...")."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    cfg = from_dict(LoRAConfig, config["lora"])
    try:
        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"adapter weights are truncated or corrupt: {directory / ADAPTER_WEIGHTS} ({e})") from None
    if not lora_modules(model):
        try:
            apply_lora(model, cfg)
        except UserError as e:
            raise UserError(f"adapter does not match this checkpoint: {e}") from None
    check_tensors(
        model.state_dict(),
        tensors,
        required=set(lora_state_dict(model)),
        problem=f"adapter does not match this checkpoint ({directory})",
    )
    model.load_state_dict(tensors, strict=False)
    return cfg
