"""The fused, chunked head + cross-entropy equals lm_head followed by F.cross_entropy: loss and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT
from pocketgpt.model.head_loss import linear_cross_entropy


def plain(x, w, t):
    return F.cross_entropy((x @ w.t()).float(), t, ignore_index=-1)


def grads(fn, x, w, t, autocast=False):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = fn(x, w, t)
    (3.0 * loss).backward()  # a non-unit upstream gradient reaches both inputs
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_matches_plain_loss_and_gradients(chunk):
    torch.manual_seed(0)
    x, w = torch.randn(50, 16), torch.randn(300, 16) * 0.5
    t = torch.randint(0, 300, (50,))
    t[[0, 9, 10, 49]] = -1  # ignored rows, some at chunk edges
    ref = grads(plain, x, w, t)
    got = grads(lambda a, b, c: linear_cross_entropy(a, b, c, chunk=chunk), x, w, t)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    assert got[1][[0, 9, 10, 49]].abs().max() == 0  # ignored rows get no gradient


def test_confident_logits_keep_the_plain_gradients():
    # log-probabilities far below -87 (whose exp is a float32 denormal, slow on x86) are clamped before the softmax:
    # loss and gradients stay the plain way's
    torch.manual_seed(0)
    x, w = torch.randn(24, 16) * 4, torch.randn(200, 16) * 8
    t = torch.randint(0, 200, (24,))
    assert (torch.log_softmax(x @ w.t(), -1) < -87).float().mean() > 0.5
    ref = grads(plain, x, w, t)
    got = grads(lambda a, b, c: linear_cross_entropy(a, b, c, chunk=8), x, w, t)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_matches_plain_under_autocast():
    torch.manual_seed(0)
    x, w = torch.randn(40, 32), torch.randn(500, 32) * 0.2
    t = torch.randint(0, 500, (40,))
    ref = grads(plain, x, w, t, autocast=True)
    got = grads(lambda a, b, c: linear_cross_entropy(a, b, c, chunk=16), x, w, t, autocast=True)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32  # weight grad in the weight's dtype
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=2e-3, rtol=2e-2)


def test_every_target_ignored_is_nan_as_in_cross_entropy():
    x, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.full((4,), -1)
    assert math.isnan(linear_cross_entropy(x, w, t).item()) and math.isnan(plain(x, w, t).item())


def test_no_grad_gives_the_loss_only():
    torch.manual_seed(0)
    x, w, t = torch.randn(6, 8), torch.randn(10, 8), torch.randint(0, 10, (6,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, w, t, chunk=4), plain(x, w, t))


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_fused_loss_equals_plain_forward(tie):
    """GPT.forward with fused_loss: logits None, same loss and same parameter gradients (tied head included)."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300, tie_embeddings=tie)
    model = GPT(cfg)
    idx = torch.randint(0, 300, (3, 20))
    y = torch.randint(0, 300, (3, 20))
    y[0, :5] = -1
    out = {}
    for fused in (False, True):
        model.zero_grad()
        model.fused_loss = fused
        logits, loss = model(idx, y)
        assert (logits is None) == fused
        loss.backward()
        out[fused] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(out[True][0], out[False][0], atol=1e-6, rtol=1e-6)
    for name, g in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    model.fused_loss = True
    assert model(idx)[0].shape == (3, 20, 300)  # without targets: logits, as always
