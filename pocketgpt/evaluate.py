"""Held-out quality: loss, perplexity and bits per byte over a token stream.

Bits per byte (bpb) divides the summed loss by the UTF-8 bytes the target tokens stand for, so models with
different tokenizers compare fairly (a char model and a BPE model on the same text get the same scale).
Special tokens carry no bytes and are left out of bpb (as nanochat does); loss and perplexity count every target.
The text is cut into non-overlapping windows of block_size targets; the last window may be shorter.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pocketgpt.device import autocast


def eval_windows(n_tokens: int, block_size: int, batch_size: int) -> list[list[int]]:
    """The start offsets of the non-overlapping windows that cover every target of an n-token stream, grouped into
    forward passes: full windows batch_size at a time, then the shorter last window alone. Every evaluation of a
    token stream (this module's, a benchmark's of a peer's model, each rank's share under torchrun) uses these."""
    starts = list(range(0, n_tokens - 1, block_size))
    full = [s for s in starts if s + block_size + 1 <= n_tokens]
    partial = [s for s in starts if s + block_size + 1 > n_tokens]
    return [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in partial]


@torch.no_grad()
def loss_sums(
    model,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    groups: list[list[int]],
    *,
    n_tokens: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """float64 (len(groups), 4): per group of windows [summed loss, summed loss over byte-carrying targets, targets,
    bytes]. Kept per group, so shares computed apart (ranks) add up, in `add_in_order`, to exactly the whole."""
    device = torch.device(device)
    T = model.config.block_size
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(groups), 4, dtype=torch.float64)
    for i, group in enumerate(groups):
        length = min(T, n_tokens - 1 - group[0])
        buf = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in group])
        buf = torch.from_numpy(buf)
        x, y = buf[:, :-1].to(device), buf[:, 1:]
        with autocast(device, dtype):
            logits, _ = model(x)
        sums[i] = window_sums(logits, y, tb)
    model.train(was_training)
    return sums


def window_sums(logits: torch.Tensor, y: torch.Tensor, token_bytes: torch.Tensor) -> torch.Tensor:
    """float64 (4,): [summed loss, summed loss over byte-carrying targets, targets, bytes] of logits (B, T, V) for
    targets y (B, T) (on the CPU); token_bytes: float64 bytes per token id."""
    loss = (
        F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(logits.device).reshape(-1), reduction="none")
        .double()
        .cpu()
    )
    nbytes = token_bytes[y.reshape(-1)]
    return torch.stack(
        [
            loss.sum(),
            (loss * (nbytes > 0)).sum(),
            torch.tensor(float(loss.numel()), dtype=torch.float64),
            nbytes.sum(),
        ]
    )


def add_in_order(rows: torch.Tensor) -> list[float]:
    """The column sums of per-group rows, added one group after another (the same order on every rank and in one
    process, so the result does not depend on how the groups were split)."""
    total = [0.0, 0.0, 0.0, 0.0]
    for row in rows.tolist():
        total = [a + b for a, b in zip(total, row)]
    return total


def metrics_from_sums(rows: torch.Tensor) -> dict:
    sum_loss, sum_loss_bytes, n_targets, n_bytes = add_in_order(rows)
    mean = sum_loss / n_targets
    return {
        "loss": mean,
        "perplexity": math.exp(min(mean, 700)),
        "bpb": sum_loss_bytes / (math.log(2) * max(n_bytes, 1)),
        "tokens": int(n_targets),
        "bytes": int(n_bytes),
    }


def evaluate_tokens(
    model,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    *,
    batch_size: int = 16,
    max_tokens: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Loss (nats/token), perplexity and bpb of `model` on `tokens` (1-D ids)."""
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n}")
    groups = eval_windows(n, model.config.block_size, batch_size)
    return metrics_from_sums(loss_sums(model, tokens, token_bytes, groups, n_tokens=n, device=device, dtype=dtype))
