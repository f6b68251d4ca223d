"""Named presets: overrides on top of the config defaults, applied before --config and flags.

Each preset is plain data keyed like TrainRun (model / tokenizer / corpus / train); `config.from_dict` checks
every key and value. What does not live here: the dataclasses and their defaults (config.py).
"""

from __future__ import annotations

import copy
from typing import Any

from pocketgpt.errors import UserError


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """`base` with some fields of some sections replaced."""
    out = copy.deepcopy(base)
    for name, fields in sections.items():
        out.setdefault(name, {}).update(fields)
    return out


PRESETS: dict[str, dict[str, Any]] = {
    # ~0.5M parameters: tests and smoke runs in seconds
    "tiny": {
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 128},
        "tokenizer": {"vocab_size": 1024},
        "train": {"max_steps": 200, "batch_size": 8, "warmup_steps": 20, "eval_every": 100, "save_every": 100},
    },
    # what `make quickstart` trains: a few minutes on 2 CPU cores
    "quickstart": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128},
        "tokenizer": {"vocab_size": 4096},
        "train": {
            "max_steps": 700,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup_steps": 50,
            "eval_every": 350,
            "save_every": 350,
            "eval_tokens": 32768,
        },
    },
    # a stronger small model for a CPU (tens of minutes)
    "cpu-small": {
        "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
        "tokenizer": {"vocab_size": 8192},
        "train": {"max_steps": 3000, "batch_size": 16, "lr": 1e-3, "warmup_steps": 200},
    },
    # time-to-quality on a CPU (benchmarks/speedrun.py, runs/speedrun.sh): BPE tokens, RoPE, QK-norm, ReLU^2,
    # Muon, bf16 autocast where native, a 25-second clock with evaluation only at the end. (An untied head
    # measured 0.025 bits/byte worse at equal time: more parameters, slower steps; see benchmarks/README.md.)
    "cpu-speedrun": {
        "model": {
            "n_layer": 4,
            "n_head": 4,
            "n_embd": 128,
            "block_size": 128,
            "bias": False,
            "pos_encoding": "rope",
            "activation": "relu2",
            "qk_norm": True,
            "tie_embeddings": True,
        },
        "tokenizer": {"vocab_size": 2048},
        "corpus": {"val_fraction": 0.1},
        "train": {
            "max_steps": 100000,
            "max_time": 25.0,
            "batch_size": 16,
            "lr": 3e-3,
            "optimizer": "muon",
            "muon_lr": 0.02,
            "warmup_steps": 30,
            "eval_every": 0,
            "eval_tokens": 0,
            "save_every": 0,
            "log_every": 10,
            "samples": 1,
        },
    },
    # GPT-2 small (124M), identical to Hugging Face's `gpt2`
    "gpt2": {
        "model": {
            "n_layer": 12,
            "n_head": 12,
            "n_embd": 768,
            "block_size": 1024,
            "vocab_size": 50257,
            "activation": "gelu_tanh",
            "pos_encoding": "learned",
            "bias": True,
            "tie_embeddings": True,
        },
        "tokenizer": {"vocab_size": 50257},
        "train": {"lr": 6e-4, "batch_size": 8, "grad_accum": 8, "warmup_steps": 700, "max_steps": 600000},
    },
    "gpt2-medium": {
        "model": {
            "n_layer": 24,
            "n_head": 16,
            "n_embd": 1024,
            "block_size": 1024,
            "vocab_size": 50257,
            "activation": "gelu_tanh",
        },
        "tokenizer": {"vocab_size": 50257},
        "train": {"lr": 3e-4},
    },
}

# the same recipe, bigger, on a 14-minute clock: reached 2.1185 bits/byte on tiny Shakespeare's whole validation
# split in 844 s on a 2-core CPU (nanoGPT's GPU recipe reports 1.47 nats/char = 2.12); benchmarks/README.md
PRESETS["cpu-speedrun-15min"] = _with(
    PRESETS["cpu-speedrun"],
    model={"n_layer": 6, "n_head": 8, "n_embd": 256, "block_size": 256, "dropout": 0.2},
    train={"max_time": 840.0, "lr": 2e-3, "warmup_steps": 100, "eval_every": 300, "save_every": 300},
)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return PRESETS[name]
