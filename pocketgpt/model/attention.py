"""Attention, the one function every layer calls: softmax(Q K^T / sqrt(d_k) + mask) V.

    y = attend(q, k, v, cache=None, layer=0, mask=None, dropout=0.0, probs=None)    q, k, v, y: (B, nh, T, hs)

Lives here: which kernel computes it, and which mask it gets.
- Kernels. `matmul_attention` is the formula written out as three ops (scores, softmax, mix); "sdpa" is
  `F.scaled_dot_product_attention` (flash / memory-efficient kernels that never hold the T x S matrix). The formula
  is the only path that forms the attention weights, so it runs whenever the caller asks for them (`probs`: a list
  that gets this layer's weights appended, (B, nh, T, S)). Otherwise `kernel` says which: "sdpa", "matmul", or
  "auto". Training sets it to whichever measured faster for its own shape on the machine that runs it
  (train/autotune.py). "auto", for passes nobody measured (evaluation, explain), takes the formula on a CPU in
  bf16 for up to 512 tokens without a cache, where it was 2-4x faster than the fused kernel on every CPU measured
  so far (benchmarks/README.md), and SDPA elsewhere.
- Masks. `mask` is boolean, True where a query may look (broadcast to (B, nh, T, S)); given, it is the whole mask.
  Without one: causal (query t sees keys <= t), except after a filled cache, where one new token sees every slot.
  With a cache the new keys and values are written into it first and the queries attend over all it holds
  (S = past + T): the model asks the cache for the mask (KVCache.attn_mask: the future and left padding out)
  once per forward and passes it to every layer.
What does not live here: the projections, heads and RoPE (gpt.py's CausalSelfAttention), the cache (kv_cache.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pocketgpt.model.kv_cache import KVCache

MATMUL_MAX_T = 512  # "auto": the bf16 CPU shortcut paid up to here on every CPU measured (benchmarks/README.md)
KERNELS = ("auto", "sdpa", "matmul")


def matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout: float = 0.0,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    probs: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + M) V, written out: the articles' formula as three ops.

    q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs). M is the additive mask, 0 where a query may look and
    -inf where not: `mask` (True where a query may look) or, without one, `causal`, which hides the future (query i,
    the (S - T + i)-th token, sees keys <= S - T + i). Masked scores become -inf, so their weights are exactly 0 and
    every row of the weights sums to 1. `probs`: gets the weights appended.
    Written for speed too: 1/sqrt(d_k) scales q (T x hs numbers) rather than the T x S scores, and M is added, not
    masked in: the backward of an add is free, a masked_fill's is another pass over T x S (1.5x faster in all,
    forward + backward, measured on CPU: benchmarks/README.md).
    """
    T, S = q.size(-2), k.size(-2)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # (B, nh, T, S): how well each query matches each key
    if mask is not None:  # M: 0 where allowed, -inf where not, in the mask's own (broadcastable) shape
        scores = scores + torch.zeros(mask.shape, dtype=scores.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    elif causal and T > 1:  # (T, S): -inf above the diagonal
        scores = scores + torch.full((T, S), -math.inf, dtype=scores.dtype, device=q.device).triu(S - T + 1)
    weights = scores.softmax(dim=-1).to(v.dtype)  # (B, nh, T, S): each row sums to 1
    if probs is not None:
        probs.append(weights)
    return F.dropout(weights, dropout) @ v if dropout > 0 else weights @ v  # (B, nh, T, hs): a weighted mix of values


def _matmul_attention_pays(q: torch.Tensor) -> bool:
    """On CPU in bf16, PyTorch's fused (flash) attention kernel is 2-4x slower than three bf16 matmuls for
    contexts up to a few hundred tokens (measured: benchmarks/README.md); float32 and GPUs keep SDPA."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(-2) <= MATMUL_MAX_T


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cache: KVCache | None = None,
    layer: int = 0,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    probs: list[torch.Tensor] | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """The attention of T new tokens, q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

    `cache`: store k, v at layer `layer` and attend over every position it holds (anything with KVCache's `pos`
    and `update(layer, k, v)`); `mask`: the whole boolean mask (see the module docstring); `probs`: a list that gets
    the attention weights (B, nh, T, S) appended, computed by the written-out formula; `kernel`: see the module
    docstring (with a cache, "auto" is SDPA)."""
    T = q.size(-2)
    causal = mask is None and (cache is None or cache.pos == 0)  # a first chunk without padding: plain causal
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (B, nh, S = past + T, hs)
    if probs is not None or kernel == "matmul" or (kernel == "auto" and cache is None and _matmul_attention_pays(q)):
        return matmul_attention(q, k, v, dropout, mask=mask, causal=causal, probs=probs)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and T > 1)
