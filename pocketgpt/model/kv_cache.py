"""A preallocated key/value cache: one K and one V tensor for all layers.

During generation, the keys and values of past tokens never change, so they are computed once
(prefill), stored here, and each new token only computes its own (decode). The cache holds
`k, v` of shape (n_layer, B, n_head, max_len, head_dim), `pos` (the number of filled slots, the same
for every row) and, for batches of prompts of different lengths, `valid` (B, max_len): which slots hold
real tokens rather than left padding. Attention writes with `update(layer, k, v)` and asks `attn_mask(T)`
for the mask; the model calls `advance(T)` once per forward.
What does not live here: sampling, stopping, batching policy (generate/).
"""

from __future__ import annotations

import torch

from pocketgpt.config import ModelConfig


class KVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        max_len = max_len or cfg.block_size
        if max_len > cfg.block_size:
            raise ValueError(f"KV cache length {max_len} exceeds the context length {cfg.block_size}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0
        self.valid: torch.Tensor | None = None  # (B, max_len) bool, only when some row is padded

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def set_padding(self, pad: torch.Tensor) -> None:
        """Mark the first pad[b] slots of row b as padding (prompts left-padded to one length)."""
        if int(pad.max()) == 0:
            self.valid = None
            return
        slots = torch.arange(self.max_len, device=self.k.device)
        self.valid = slots[None, :] >= pad.to(self.k.device)[:, None]  # (B, max_len)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at [pos, pos+T) and return all keys/values so far, (B, nh, pos+T, hs)."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attn_mask(self, T: int) -> torch.Tensor | None:
        """Boolean mask (B, 1, T, pos+T) for T new queries, or None where plain causal / full attention is exact.

        A query at slot s may see slot j <= s if j holds a real token; it always sees itself, so a padding
        query never has an empty row (which would make NaNs that leak into the cache).
        """
        past = self.pos
        if self.valid is None:
            if past == 0 or T == 1:
                return None
            return torch.ones(T, past + T, dtype=torch.bool, device=self.k.device).tril(diagonal=past)
        q_slot = torch.arange(past, past + T, device=self.k.device)[:, None]  # (T, 1)
        k_slot = torch.arange(past + T, device=self.k.device)[None, :]  # (1, S)
        causal = k_slot <= q_slot  # (T, S)
        mask = causal[None] & (self.valid[:, None, : past + T] | (k_slot == q_slot)[None])  # (B, T, S)
        return mask[:, None]  # (B, 1, T, S)

    def advance(self, T: int) -> None:
        self.pos += T  # `valid` already marks every slot after a row's padding as real

    def rollback(self, n: int) -> None:
        """Forget the last n positions (speculative decoding: drafted tokens the model rejected); the next
        `update` overwrites their slots, and attention never reads past `pos`."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"cannot roll back {n} positions of a cache holding {self.pos}")
        self.pos -= n

    def reset(self) -> None:
        self.pos = 0
        self.valid = None

    def expand(self, n: int) -> KVCache:
        """A new cache with each row repeated n times (n samples sharing one prefill)."""
        return self.select(torch.arange(self.batch_size, device=self.k.device).repeat_interleave(n))

    def select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding the given rows, in that order (beam search reorders rows every step)."""
        new = object.__new__(KVCache)
        new.k, new.v = self.k[:, rows], self.v[:, rows]
        new.max_len, new.pos = self.max_len, self.pos
        new.valid = None if self.valid is None else self.valid[rows]
        return new
