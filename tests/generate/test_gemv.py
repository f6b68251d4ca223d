"""The split GEMV and the addmv GEMV: one CPU row equals F.linear, everything else falls back to it, models keep
their outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import SampleConfig
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.gemv import MvLinear, SplitGemvLinear, restore_linear, use_split_gemv
from pocketgpt.model import GPT, KVCache
from pocketgpt.model.lora import LoRALinear


def split_linear(inp: int, out: int, chunks: int = 2, bias: bool = True, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(inp, out, bias=bias).to(dtype)
    lin.__class__ = SplitGemvLinear
    lin.chunks = chunks
    return lin


@pytest.fixture
def bmm_calls(monkeypatch):
    """How many times the split path ran (it is the only caller of torch.bmm here)."""
    calls = []
    real = torch.bmm

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting)
    return calls


@pytest.mark.parametrize(
    "inp, out, chunks, bias",
    [(64, 96, 2, True), (64, 97, 2, True), (32, 128, 3, False), (768, 257, 2, True), (8, 1, 2, True), (8, 3, 4, False)],
)
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
def test_one_float32_row_equals_f_linear(inp, out, chunks, bias, lead, bmm_calls):
    lin = split_linear(inp, out, chunks, bias)
    x = torch.randn(*lead, inp, generator=torch.Generator().manual_seed(1))
    got = lin(x)
    want = F.linear(x, lin.weight, lin.bias)
    assert got.shape == want.shape == (*lead, out) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert len(bmm_calls) == 1 and bmm_calls[0] == (chunks, out // chunks, inp)  # the split path, not F.linear


@pytest.mark.parametrize("cls", [SplitGemvLinear, MvLinear])
def test_the_one_row_paths_give_gradients_like_f_linear(cls):
    lin = split_linear(16, 24)
    lin.__class__ = cls
    x = torch.randn(1, 16, requires_grad=True)
    lin(x).pow(2).sum().backward()
    got = (x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone())
    x.grad = lin.weight.grad = lin.bias.grad = None
    F.linear(x, lin.weight, lin.bias).pow(2).sum().backward()
    for g, w in zip(got, (x.grad, lin.weight.grad, lin.bias.grad)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 64), (1, 3, 64), (4, 1, 64), (0, 64)])
def test_more_than_one_row_falls_back_to_f_linear(shape, bmm_calls):
    lin = split_linear(64, 97)
    x = torch.randn(*shape)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert bmm_calls == []


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.1), (torch.float16, 0.01), (torch.float64, 1e-12)])
def test_other_dtypes_split_too(dtype, atol, bmm_calls):
    lin = split_linear(64, 97, dtype=dtype)
    x = torch.randn(1, 64, dtype=dtype)
    got = lin(x)
    assert got.dtype == dtype and len(bmm_calls) == 1
    torch.testing.assert_close(
        got.double(), F.linear(x.double(), lin.weight.double(), lin.bias.double()), atol=atol, rtol=0
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_the_addmv_row_equals_f_linear(bias, lead, dtype, atol, monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(48, 80, bias=bias).to(dtype)
    lin.__class__ = MvLinear
    calls = []
    real = torch.addmv if bias else torch.mv
    monkeypatch.setattr(torch, "addmv" if bias else "mv", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(*lead, 48, dtype=dtype)
    got = lin(x)
    assert got.shape == (*lead, 80) and got.dtype == dtype and calls == [1]
    want = F.linear(x.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double())
    torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)
    calls.clear()
    x2 = torch.randn(3, 48, dtype=dtype)  # many rows: F.linear itself
    assert torch.equal(lin(x2), F.linear(x2, lin.weight, lin.bias)) and calls == []


def test_a_non_contiguous_weight_falls_back_to_f_linear(bmm_calls):
    lin = split_linear(64, 96)
    lin.weight = nn.Parameter(torch.randn(64, 96).t())  # (96, 64) viewed from its transpose
    assert not lin.weight.is_contiguous()
    x = torch.randn(1, 64)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert bmm_calls == []


def test_use_split_gemv_swaps_plain_linears_only_and_keeps_the_parameters(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    ids = {name: id(p) for name, p in tiny_model.named_parameters()}
    lora = LoRALinear(tiny_model.lm_head, rank=2, alpha=4)
    tiny_model.lm_head = lora
    use_split_gemv(tiny_model, chunks=3)
    linears = [m for m in tiny_model.modules() if isinstance(m, nn.Linear)]
    assert type(tiny_model.lm_head) is LoRALinear  # subclasses have their own forward: left alone
    assert all(type(m) is SplitGemvLinear and m.chunks == 3 for m in linears if m is not lora)
    assert len(linears) == 1 + 4 * tiny_model.config.n_layer
    sd = tiny_model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())
    assert {name: id(p) for name, p in tiny_model.named_parameters() if "lora_" not in name} == ids
    restore_linear(tiny_model)
    assert all(type(m) in (nn.Linear, LoRALinear) for m in tiny_model.modules() if isinstance(m, nn.Linear))


def test_the_default_chunk_count_follows_the_threads(tiny_model):
    use_split_gemv(tiny_model)
    assert tiny_model.lm_head.chunks == max(2, torch.get_num_threads())


@torch.no_grad()
def test_a_split_model_gives_the_plain_models_logits(tiny_model):
    plain = copy.deepcopy(tiny_model)
    use_split_gemv(tiny_model)
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    caches = [KVCache(m.config, 1) for m in (tiny_model, plain)]
    (a, _), (b, _) = (m(prompt, kv_cache=c) for m, c in zip((tiny_model, plain), caches))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # a prompt is many rows: F.linear both sides
    for t in (3, 11, 42):  # decode steps: one row each, the split path
        (a, _), (b, _) = (m(torch.tensor([[t]]), kv_cache=c) for m, c in zip((tiny_model, plain), caches))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    restore_linear(tiny_model)
    (a, _), (b, _) = tiny_model(prompt[:, :1]), plain(prompt[:, :1])
    assert torch.equal(a, b)  # restored: the very same kernel again


def test_the_float32_cpu_engine_splits_and_decodes_what_the_plain_model_decodes(tiny_model):
    engine = Engine(tiny_model, kernels="split")
    assert type(engine.model.lm_head) is SplitGemvLinear and type(tiny_model.lm_head) is nn.Linear  # on its copy
    sample = SampleConfig(max_new_tokens=20, temperature=0, logprobs=True)
    split = engine.generate([[1, 2, 3]], sample)[0][0]
    restore_linear(engine.model)
    plain = engine.generate([[1, 2, 3]], sample)[0][0]
    assert split.tokens == plain.tokens and len(split.tokens) == 20
    assert split.logprobs == pytest.approx(plain.logprobs, abs=1e-4)


def test_a_bfloat16_engine_keeps_plain_linears(tiny_cfg):
    engine = Engine(GPT(tiny_cfg), dtype=torch.bfloat16)
    assert not any(type(m) is SplitGemvLinear for m in engine.model.modules())
