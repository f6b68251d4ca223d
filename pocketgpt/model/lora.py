"""LoRA (Hu et al. 2021): train a low-rank update B A next to each chosen Linear, keep the base weights frozen.

    y = W x + b + (alpha / rank) * B A dropout(x)        A (rank, in) random, B (out, rank) zeros

so training starts from exactly the base model. Here: `LoRALinear`, wrapping chosen layers in place
(`apply_lora`), and merging the update into W (`merge_lora`). Model pieces only: the adapter folder
(adapter.safetensors + adapter_config.json) is an on-disk format and lives in checkpoint.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import LoRAConfig
from pocketgpt.errors import UserError

TARGETS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}


class LoRALinear(nn.Linear):
    """An nn.Linear holding the SAME weight/bias Parameters as the layer it wraps (so state-dict keys and
    base weights are unchanged) plus lora_A (rank, in) and lora_B (out, rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the very same Parameters
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as the paper's code and peft
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.merged = False
        self.train(base.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:
            return y
        a = F.linear(self.lora_dropout(x), self.lora_A)  # (..., rank)
        return y + F.linear(a, self.lora_B) * self.scaling  # (..., out)

    def _delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float() * self.scaling).to(self.weight.dtype)  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        """W += (alpha / rank) B A; forward then skips the adapter path. A second merge does nothing."""
        if not self.merged:
            self.weight.add_(self._delta())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W -= (alpha / rank) B A: back to the base weight (up to float rounding)."""
        if self.merged:
            self.weight.sub_(self._delta())
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _suffixes(cfg: LoRAConfig) -> tuple[str, ...]:
    parts = [t.strip() for t in cfg.targets.split(",") if t.strip()]
    bad = [t for t in parts if t not in TARGETS]
    if not parts or bad:
        raise UserError(f"lora.targets must name attn and/or mlp, got {cfg.targets!r}")
    return tuple(s for t in parts for s in TARGETS[t])


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """name -> LoRALinear for every wrapped layer of `model` (empty when LoRA is not applied)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap the targeted Linear layers in place and freeze everything but lora_A / lora_B.

    Targets: attn -> *.attn.c_attn, *.attn.c_proj; mlp -> *.mlp.c_fc, *.mlp.c_proj. The caller re-enables
    any other parameter it wants trained (e.g. a classifier head). Returns the wrapped module names."""
    if not isinstance(cfg.rank, int) or cfg.rank <= 0:
        raise UserError(f"lora.rank must be a positive integer to apply adapters, got {cfg.rank!r}")
    if lora_modules(model):
        raise UserError("LoRA is already applied to this model")
    suffixes = _suffixes(cfg)
    chosen = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n == s or n.endswith("." + s) for s in suffixes)
    }
    if not chosen:
        raise UserError(f"no Linear layer matches lora.targets={cfg.targets!r}")
    for name, m in chosen.items():  # check them all before changing anything
        if cfg.rank > min(m.in_features, m.out_features):
            raise UserError(
                f"lora.rank={cfg.rank} exceeds layer {name} of shape (out, in) = "
                f"({m.out_features}, {m.in_features}); use rank <= {min(m.in_features, m.out_features)}"
            )
    for name, m in chosen.items():
        _replace(model, name, LoRALinear(m, cfg.rank, cfg.alpha, cfg.dropout))
    trainable = {id(p) for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return list(chosen)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: `<layer>.lora_A` and `<layer>.lora_B`."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight and put a plain nn.Linear (same weight/bias Parameters) back.

    The outputs equal those of the unmerged model up to float rounding; requires_grad flags are left as
    they are (the base weights stay frozen)."""
    for name, m in lora_modules(model).items():
        m.merge()
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        plain.train(m.training)
        _replace(model, name, plain)
