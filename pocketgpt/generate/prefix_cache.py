"""Prefix (prompt) caching for the scheduler: the keys and values of recent prompts, reused by later prompts that
start the same way (a shared system prompt, the earlier turns of a chat), so that only the rest is prefilled.

Keys and values at position i depend only on tokens 0..i (attention is causal), so the first `n` positions of any
stored prompt serve every prompt that shares its first `n` tokens. `lookup(ids)` finds the stored prompt with the
longest common prefix (at least `min_tokens`, and never the whole prompt: the last token is always run, for its
logits); `store(ids, k, v)` keeps a prompt's (n_layer, n_head, len, head_dim) keys and values. Memory is bounded by
`max_bytes`; the least recently used prompts go first. Hits, misses and reused tokens are counted.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch


@dataclass
class PrefixHit:
    tokens: int  # positions reused
    k: torch.Tensor  # (n_layer, n_head, tokens, head_dim)
    v: torch.Tensor


class PrefixCache:
    def __init__(self, max_bytes: int, min_tokens: int = 4, max_entries: int = 256):
        self.max_bytes, self.min_tokens, self.max_entries = max_bytes, min_tokens, max_entries
        self._entries: collections.OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = (
            collections.OrderedDict()
        )
        self.bytes = 0
        self.hits = self.misses = self.reused_tokens = 0

    def lookup(self, ids: list[int]) -> PrefixHit | None:
        best, best_n = None, 0
        for key in self._entries:
            n = _common(key, ids)
            if n > best_n:
                best, best_n = key, n
        best_n = min(best_n, len(ids) - 1)
        if best is None or best_n < self.min_tokens:
            self.misses += 1
            return None
        self._entries.move_to_end(best)
        k, v = self._entries[best]
        self.hits += 1
        self.reused_tokens += best_n
        return PrefixHit(best_n, k[:, :, :best_n], v[:, :, :best_n])

    def store(self, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep a prompt's keys and values (copied); a prompt already stored is only marked as recently used."""
        key = tuple(ids)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = 2 * k.numel() * k.element_size()
        if size > self.max_bytes:
            return
        self._entries[key] = (k.clone(), v.clone())
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
            _, (ok, _ov) = self._entries.popitem(last=False)
            self.bytes -= 2 * ok.numel() * ok.element_size()

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        return {
            "prefix_cache_hits": self.hits,
            "prefix_cache_misses": self.misses,
            "prefix_cache_reused_tokens": self.reused_tokens,
            "prefix_cache_entries": len(self),
            "prefix_cache_bytes": self.bytes,
        }


def prefill_with_prefix(pc: PrefixCache, engine, ids: list[int]):
    """(one-row KV cache holding all of `ids`, last logits (1, V)) when `ids` starts like a cached prompt: the cached
    keys and values are copied and only the rest is run (`Engine.extend`); the whole prompt is stored in turn.
    None on a miss."""
    from pocketgpt.model import KVCache

    hit = pc.lookup(ids)
    if hit is None:
        return None
    n = hit.tokens
    cache = KVCache(engine.cfg, 1, dtype=engine.dtype, device=engine.device)
    cache.k[:, 0, :, :n] = hit.k
    cache.v[:, 0, :, :n] = hit.v
    cache.pos = n
    logits = engine.extend(cache, ids[n:])
    pc.store(ids, cache.k[:, 0, :, : cache.pos], cache.v[:, 0, :, : cache.pos])
    return cache, logits


def _common(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
