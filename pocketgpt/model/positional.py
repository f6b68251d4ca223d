"""Positional encodings, chosen by `ModelConfig.pos_encoding` from the `POSITIONAL` registry.

Attention alone is blind to order, so each token must learn where it sits. Three ways:
- `learned`: a trained table of one vector per position, added to the token embedding (GPT-2).
- `sinusoidal`: the fixed table of "Attention Is All You Need", added to the token embedding:
      PE[pos, 2i]   = sin(pos / 10000^(2i/d))
      PE[pos, 2i+1] = cos(pos / 10000^(2i/d))        (sin and cos interleaved)
- `rope`: rotary embedding; nothing is added to the input, instead queries and keys are rotated by
  a position-dependent angle inside attention, so q·k depends on the distance between tokens.

Every variant has the same two-method interface, so the model never branches on the name:
`add_to_input(x, pos)` and `rotation(pos) -> (cos, sin) | None`.
What does not live here: attention itself (gpt.py applies the rotation with `apply_rotary`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pocketgpt.config import ModelConfig


class Learned(nn.Embedding):
    """GPT-2's learned position table: wpe.weight has shape (block_size, n_embd)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.block_size, cfg.n_embd)

    def add_to_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + super().forward(pos)  # (B, T, C) + (T, C) or (B, T, C)

    def rotation(self, pos: torch.Tensor) -> None:
        return None


def sinusoidal_table(n_pos: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The closed-form table, (n_pos, dim), sin at even and cos at odd columns."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]  # (1, d/2)
    angle = pos / base ** (two_i / dim)  # (P, d/2)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


class Sinusoidal(nn.Module):
    """Fixed sinusoids added to the input; no parameters, so nothing is stored in checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)

    def add_to_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x + self.table[pos].to(x.dtype)

    def rotation(self, pos: torch.Tensor) -> None:
        return None


class Rotary(nn.Module):
    """RoPE (Su et al. 2021), rotate-half layout: pairs (i, i + hs/2) turn by pos * base^(-2i/hs)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hs = cfg.head_dim
        inv_freq = cfg.rope_base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
        angle = torch.arange(cfg.block_size, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (P, hs/2)
        angle = torch.cat([angle, angle], dim=-1)  # (P, hs)
        self.register_buffer("cos", angle.cos().float(), persistent=False)
        self.register_buffer("sin", angle.sin().float(), persistent=False)

    def add_to_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotation(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[pos], self.sin[pos]  # (T, hs) each, or (B, T, hs) for per-row positions


def apply_rotary(x: torch.Tensor, rot: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Rotate q or k, (B, nh, T, hs), by the angles in `rot`; identity when rot is None."""
    if rot is None:
        return x
    cos, sin = rot
    if cos.dim() == 3:  # per-row positions: (B, T, hs) -> (B, 1, T, hs)
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (B, nh, T, hs)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


POSITIONAL: dict[str, type[nn.Module]] = {
    "learned": Learned,
    "sinusoidal": Sinusoidal,
    "rope": Rotary,
}
