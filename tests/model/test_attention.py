"""attend(): the written-out formula is the math, it agrees with the fused kernel everywhere the model calls it
(full forward, cache prefill with padding, decode), and the model hands out its weights when asked. Also the two
formulas `pocketgpt explain` makes visible around it: positions are added before the first block, and the
articles' "GELU" is not GELU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT, KVCache
from pocketgpt.model.attention import _matmul_attention_pays, attend, matmul_attention
from pocketgpt.model.positional import POSITIONAL, apply_rotary, sinusoidal_table


def cfg_with(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=300), **kw})


def qkv(B=2, nh=3, T=11, hs=8, S=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = S or T
    return (
        torch.randn(B, nh, T, hs, generator=g),
        torch.randn(B, nh, S, hs, generator=g),
        torch.randn(B, nh, S, hs, generator=g),
    )


def test_the_weights_are_a_causal_softmax_and_the_output_their_mix():
    q, k, v = qkv()
    probs: list[torch.Tensor] = []
    y = attend(q, k, v, probs=probs)
    (w,) = probs
    T = q.size(-2)
    assert w.shape == (2, 3, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, T), rtol=0, atol=1e-6)  # each row sums to 1
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (w[..., above] == 0).all()  # exactly 0, not just small: the future is masked with -inf
    assert (w[..., ~above] > 0).all()
    by_hand = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(above, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, by_hand, rtol=0, atol=1e-6)
    torch.testing.assert_close(y, w @ v, rtol=0, atol=1e-6)
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=0, atol=1e-5)
    torch.testing.assert_close(attend(q, k, v), y, rtol=0, atol=1e-5)  # without probs: the fused kernel


def test_queries_after_a_past_see_the_past_and_not_the_future():
    q, k, v = qkv(T=3, S=7)  # 3 new queries at positions 4, 5, 6 over 7 keys
    probs: list[torch.Tensor] = []
    matmul_attention(q, k, v, probs=probs)
    w = probs[0]
    assert (w[..., 0, 5:] == 0).all() and (w[..., 0, :5] > 0).all()
    assert (w[..., 2, :] > 0).all()


def test_an_explicit_mask_is_the_whole_mask():
    q, k, v = qkv(T=5)
    keep = torch.tensor([True, False, True, True, True])[None, None, None, :] & torch.ones(5, 5).tril().bool()
    probs: list[torch.Tensor] = []
    y = attend(q, k, v, mask=keep, probs=probs)
    assert (probs[0][..., 1] == 0).all()  # key 1 is masked for every query
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v, attn_mask=keep), rtol=0, atol=1e-5)


def test_the_bf16_cpu_shortcut_is_the_formula():
    q, k, v = (t.bfloat16() for t in qkv(T=16))
    assert _matmul_attention_pays(q) and not _matmul_attention_pays(q.float())
    assert not _matmul_attention_pays(torch.zeros(1, 1, 513, 8, dtype=torch.bfloat16))
    assert torch.equal(attend(q, k, v), matmul_attention(q, k, v))


@pytest.mark.parametrize("pos", list(POSITIONAL) + ["rope+qk_norm"])
def test_the_model_hands_out_its_weights_and_they_are_the_formula(pos):
    torch.manual_seed(0)
    cfg = cfg_with(pos_encoding=pos.split("+")[0], qk_norm="qk_norm" in pos)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 300, (2, 13))
    probs: list[torch.Tensor] = []
    with torch.no_grad():
        h = model.hidden(idx, attn_probs=probs)
        torch.testing.assert_close(h, model.hidden(idx), rtol=0, atol=1e-5)  # formula and fused kernel agree
        assert len(probs) == cfg.n_layer and all(w.shape == (2, cfg.n_head, 13, 13) for w in probs)
        # layer 0 by hand: the embedded input, ln_1, q and k per head (+ qk_norm, RoPE), softmax of the scores
        tr = model.transformer
        p = torch.arange(13)
        x = tr.wpe.add_to_input(tr.wte(idx), p)
        a = tr.h[0].attn
        q, k, _ = a.c_attn(tr.h[0].ln_1(x)).split(cfg.n_embd, dim=2)
        q, k = (t.view(2, 13, cfg.n_head, cfg.head_dim).transpose(1, 2) for t in (q, k))
        if cfg.qk_norm:
            q, k = F.rms_norm(q, (cfg.head_dim,)), F.rms_norm(k, (cfg.head_dim,))
        rot = tr.wpe.rotation(p)
        q, k = apply_rotary(q, rot), apply_rotary(k, rot)
        future = torch.ones(13, 13, dtype=torch.bool).triu(1)
        want = (q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim)).masked_fill(future, float("-inf")).softmax(-1)
    torch.testing.assert_close(probs[0], want, rtol=0, atol=1e-6)


def test_weights_through_a_padded_cache_match_the_full_forward():
    """A left-padded prefill, then decode steps, asking for the weights: padding gets 0, the last row of each
    step is what a full forward of the unpadded row gives, and the outputs match the fused path."""
    torch.manual_seed(0)
    cfg = cfg_with(pos_encoding="rope")
    model = GPT(cfg).eval()
    row = torch.randint(0, 300, (1, 9))
    pad = 3
    idx = torch.cat([torch.zeros(1, pad, dtype=torch.long), row[:, :6]], dim=1)  # (1, 9): 3 pads + 6 tokens
    with torch.no_grad():
        full: list[torch.Tensor] = []
        model.hidden(row, attn_probs=full)
        fast, slow = KVCache(cfg, 1), KVCache(cfg, 1)
        for c in (fast, slow):
            c.set_padding(torch.tensor([pad]))
        pos = (torch.arange(9) - pad).clamp(min=0)[None]
        got: list[torch.Tensor] = []
        h_fast = model.hidden(idx, kv_cache=fast, pos=pos)
        h_slow = model.hidden(idx, kv_cache=slow, pos=pos, attn_probs=got)
        torch.testing.assert_close(h_slow[:, pad:], h_fast[:, pad:], rtol=0, atol=1e-5)
        assert (got[0][0, :, pad:, :pad] == 0).all()  # real tokens never look at padding
        torch.testing.assert_close(got[1][0, :, pad:, pad:], full[1][0, :, :6, :6], rtol=0, atol=1e-5)
        for t in range(6, 9):  # decode the rest one token at a time
            step: list[torch.Tensor] = []
            p = torch.tensor([[t]])
            a = model.hidden(row[:, t : t + 1], kv_cache=fast, pos=p)
            b = model.hidden(row[:, t : t + 1], kv_cache=slow, pos=p, attn_probs=step)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
            assert step[0].shape == (1, cfg.n_head, 1, pad + t + 1)
            torch.testing.assert_close(step[1][0, :, 0, pad:], full[1][0, :, t, : t + 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos", list(POSITIONAL))
def test_positions_are_added_before_the_first_block(pos):
    torch.manual_seed(0)
    model = GPT(cfg_with(pos_encoding=pos)).eval()
    idx = torch.randint(0, 300, (1, 10))
    seen = {}
    model.transformer.h[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))  # the block's input
    with torch.no_grad():
        model(idx)
        tokens = model.transformer.wte(idx)[0]  # (T, C)
        added = {
            "learned": lambda: model.transformer.wpe.weight[:10],
            "sinusoidal": lambda: sinusoidal_table(64, 32)[:10],
            "rope": lambda: torch.zeros(10, 32),  # RoPE adds nothing: it turns q and k inside attention
        }[pos]()
    torch.testing.assert_close(seen["x"][0], tokens + added, rtol=0, atol=1e-6)
    if pos != "rope":
        assert (seen["x"][0] - tokens).abs().max() > 1e-3


def test_the_articles_gelu_formula_is_not_gelu():
    """x * sigmoid(1 + x * tanh x), as the articles write it, is another function: at x = -3 it gives -2.95,
    GELU (the model's, 0.5 x (1 + erf(x / sqrt 2))) gives -0.004."""
    gelu = GPT(cfg_with(activation="gelu")).transformer.h[0].mlp.act
    x = torch.tensor([-3.0])
    articles = x * torch.sigmoid(1 + x * torch.tanh(x))
    assert gelu(x).item() == pytest.approx(-3 * 0.5 * (1 + math.erf(-3 / math.sqrt(2))), abs=1e-6)
    assert (articles - gelu(x)).abs().item() == pytest.approx(2.94, abs=0.01)
    xs = torch.linspace(-4, 4, 81)
    assert ((xs * torch.sigmoid(1 + xs * torch.tanh(xs))) - gelu(xs)).abs().max() > 1.0
