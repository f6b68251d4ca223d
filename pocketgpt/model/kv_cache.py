"""A preallocated key/value cache: one K and one V tensor for all layers.

During generation, the keys and values of past tokens never change, so they are computed once
(prefill), stored here, and each new token only computes its own (decode). The cache holds
`k, v` of shape (n_layer, B, n_head, max_len, head_dim) and `pos`, the number of filled positions.
Attention writes its new keys/values with `update(layer, k, v)`; the model calls `advance(T)`
once per forward. What does not live here: sampling, stopping, batching policy (generate/).
"""

from __future__ import annotations

import torch

from pocketgpt.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        max_len = max_len or cfg.block_size
        if max_len > cfg.block_size:
            raise ValueError(f"KV cache length {max_len} exceeds the context length {cfg.block_size}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at [pos, pos+T) and return all keys/values so far, (B, nh, pos+T, hs)."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0

    def expand(self, n: int) -> "KVCache":
        """A new cache with each row repeated n times (n samples sharing one prefill)."""
        new = object.__new__(KVCache)
        new.k = self.k.repeat_interleave(n, dim=1)
        new.v = self.v.repeat_interleave(n, dim=1)
        new.max_len, new.pos = self.max_len, self.pos
        return new
