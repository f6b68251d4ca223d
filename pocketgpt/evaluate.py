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


@torch.no_grad()
def evaluate_tokens(model, tokens: np.ndarray, token_bytes: np.ndarray, *, batch_size: int = 16,
                    max_tokens: int = 0, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict:
    """Loss (nats/token), perplexity and bpb of `model` on `tokens` (1-D ids)."""
    device = torch.device(device)
    T = model.config.block_size
    n = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n}")
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    was_training = model.training
    model.eval()
    sum_loss, sum_loss_bytes, n_targets, n_bytes = 0.0, 0.0, 0, 0.0
    starts = list(range(0, n - 1, T))
    full = [s for s in starts if s + T + 1 <= n]
    partial = [s for s in starts if s + T + 1 > n]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in partial]
    for group in groups:
        length = min(T, n - 1 - group[0])
        buf = np.stack([np.asarray(tokens[s:s + length + 1], dtype=np.int64) for s in group])
        buf = torch.from_numpy(buf)
        x, y = buf[:, :-1].to(device), buf[:, 1:]
        with autocast(device, dtype):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                               reduction="none").double().cpu()
        nbytes = tb[y.reshape(-1)]
        sum_loss += loss.sum().item()
        sum_loss_bytes += (loss * (nbytes > 0)).sum().item()
        n_targets += loss.numel()
        n_bytes += nbytes.sum().item()
    model.train(was_training)
    mean = sum_loss / n_targets
    return {"loss": mean, "perplexity": math.exp(min(mean, 700)), "bpb": sum_loss_bytes / (math.log(2) * max(n_bytes, 1)),
            "tokens": n_targets, "bytes": int(n_bytes)}
