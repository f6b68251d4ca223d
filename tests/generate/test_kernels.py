"""Kernels chosen by measurement: the faster candidate per weight shape wins, the choice is cached per machine,
forced modes apply everywhere, and a choice never changes what the model computes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import UserError
from pocketgpt.generate import kernels as K
from pocketgpt.generate.gemv import MvLinear, PackedLinear, SplitGemvLinear, TransposedLinear, packable
from pocketgpt.model import GPT

CPU = torch.device("cpu")
ALL = set(K.candidates(CPU, torch.float32))  # packed too where this PyTorch build can pack


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETGPT_CACHE", str(tmp_path))
    return tmp_path / "kernels.json"


def fake_timings(
    monkeypatch, split_wins: set, calls: list, mv_wins: frozenset = frozenset(), t_wins=frozenset(), packed_wins=()
):
    def fake(layers, kernels, chunks, reps=9):
        shape = tuple(layers[0].weight.shape)
        calls.extend((shape, k) for k in kernels)
        table = {
            "split": 1.0 if shape in split_wins else 3.0,
            "linear": 2.0,
            "mv": 1.5 if shape in mv_wins else 2.5,
            "t": 1.2 if shape in t_wins else 2.2,
            "packed": 1.1 if shape in packed_wins else 2.1,
        }
        return {k: table[k] for k in kernels}

    monkeypatch.setattr(K, "_time", fake)


def test_auto_takes_the_faster_kernel_per_shape_and_caches_it(tiny_cfg, cache, monkeypatch):
    model = GPT(tiny_cfg).eval()
    shapes = set(K.linears(model))
    mlp = (4 * tiny_cfg.n_embd, tiny_cfg.n_embd)
    calls: list = []
    proj = (tiny_cfg.n_embd, 4 * tiny_cfg.n_embd)
    fake_timings(monkeypatch, {mlp}, calls, mv_wins=frozenset({proj}))
    choices = K.choose(model)
    assert set(choices) == shapes and len(calls) == len(ALL) * len(shapes)  # every shape, every candidate
    for shape, layers in K.linears(model).items():
        want = SplitGemvLinear if shape == mlp else MvLinear if shape == proj else nn.Linear
        assert all(type(m) is want for m in layers), shape
        assert choices[shape].us["linear"] == 2.0 and set(choices[shape].us) == ALL
    assert K.summary(choices) == f"mv 1/{len(shapes)} split 1/{len(shapes)}"
    saved = json.loads(cache.read_text())
    assert len(saved) == len(shapes) and all("float32" in k and torch.__version__ in k for k in saved)
    # a second load measures nothing and chooses the same
    calls.clear()
    again = K.choose(GPT(tiny_cfg).eval())
    assert calls == [] and all(c.cached for c in again.values())
    assert {s: c.kernel for s, c in again.items()} == {s: c.kernel for s, c in choices.items()}


def test_a_slower_split_is_never_used(tiny_cfg, cache, monkeypatch):
    model = GPT(tiny_cfg).eval()
    fake_timings(monkeypatch, set(), [])
    K.choose(model)
    assert not any(type(m) is SplitGemvLinear for m in model.modules())
    assert K.summary(K.choose(model)) == "linear"


def test_forced_modes_and_bad_ones(tiny_cfg, cache):
    model = GPT(tiny_cfg).eval()
    K.choose(model, "split")
    assert all(type(m) is SplitGemvLinear for layers in K.linears(model).values() for m in layers)
    K.choose(model, "mv")
    assert all(type(m) is MvLinear for layers in K.linears(model).values() for m in layers)
    K.choose(model, "t")
    assert all(type(m) is TransposedLinear for layers in K.linears(model).values() for m in layers)
    if "packed" in ALL:
        K.choose(model, "packed")
        assert all(type(m) is PackedLinear and m.packed is not None for ls in K.linears(model).values() for m in ls)
    K.choose(model, "linear")
    assert not any(type(m) in (SplitGemvLinear, MvLinear, TransposedLinear, PackedLinear) for m in model.modules())
    assert not any("packed" in vars(m) for m in model.modules())  # the packed copies are dropped
    assert all(p.is_contiguous() for p in model.parameters())  # t's layout undone
    assert not cache.exists()  # forced choices measure and store nothing
    with pytest.raises(UserError, match="kernels must be one of"):
        K.choose(model, "fast")


def test_bfloat16_is_timed_too(tiny_cfg, cache, monkeypatch):
    # F.linear's bf16 row ran 1.2-1.5x slower than addmv on one Xeon: bf16 gets every candidate, not a rule
    calls: list = []
    fake_timings(monkeypatch, set(), calls, mv_wins=frozenset({(tiny_cfg.vocab_size, tiny_cfg.n_embd)}))
    choices = K.choose(GPT(tiny_cfg).to(torch.bfloat16))
    assert {k for _, k in calls} == set(K.candidates(CPU, torch.bfloat16))
    assert choices[(tiny_cfg.vocab_size, tiny_cfg.n_embd)].kernel == "mv"
    assert all("bfloat16" in k for k in json.loads(cache.read_text()))


def test_an_entry_that_timed_other_candidates_is_measured_again(tiny_cfg, cache, monkeypatch):
    model = GPT(tiny_cfg).eval()
    shape = (tiny_cfg.vocab_size, tiny_cfg.n_embd)
    key = K._key(torch.float32, shape)
    cache.write_text(json.dumps({key: {"kernel": "split", "us": {"linear": 3000.0, "split": 1400.0}}}))
    calls: list = []
    fake_timings(monkeypatch, set(), calls)
    choices = K.choose(model)
    assert (shape, "mv") in calls and not choices[shape].cached and choices[shape].kernel == "linear"
    assert set(json.loads(cache.read_text())[key]["us"]) == ALL


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_a_real_measurement_times_every_kernel_and_keeps_the_outputs(tiny_cfg, cache, dtype, atol):
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval().to(dtype)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 1))
    before, _ = model(x)
    choices = K.choose(model)
    want = set(K.candidates(CPU, dtype))
    assert all(set(c.us) == want and min(c.us.values()) > 0 for c in choices.values())
    assert all(c.kernel == K.pick(c.us) for c in choices.values())
    after, _ = model(x)
    torch.testing.assert_close(after.float(), before.float(), rtol=0, atol=atol)
    assert len(K.describe(choices)) == len(choices) and "µs" in K.describe(choices)[0]


def test_an_unreadable_cache_is_measured_again(tiny_cfg, cache, monkeypatch):
    cache.write_text("{not json")
    calls: list = []
    fake_timings(monkeypatch, set(), calls)
    K.choose(GPT(tiny_cfg).eval())
    assert calls and json.loads(cache.read_text())


def test_a_tie_keeps_pytorchs_own_kernel():
    assert K.pick({"linear": 10.0, "split": 9.8}) == "linear"  # within the 5% margin
    assert K.pick({"linear": 10.0, "split": 9.0}) == "split"
    assert K.pick({"linear": 10.0, "split": 30.0}) == "linear"


def test_candidates_are_timed_interleaved_so_a_burst_of_load_falls_on_all_alike(monkeypatch):
    order: list = []
    clock = iter(range(10**6))
    slow_until = 6  # calls 0-5 (the warm-up round and the next) run under load: 100 s each, the rest 1 s
    now = [0.0]

    def perf_counter():
        return now[0]

    def run(name):
        def go():
            n = next(clock)
            order.append(name)
            now[0] += 100.0 if n < slow_until else 1.0

        return go

    monkeypatch.setattr(K.time, "perf_counter", perf_counter)
    best = K.time_interleaved({k: run(k) for k in ("a", "b", "c")}, reps=4)
    assert order[:3] == ["a", "b", "c"] and order[3:6] == ["b", "c", "a"] and order[6:9] == ["c", "a", "b"]
    assert len(order) == 3 * 5 and best == {"a": 1.0, "b": 1.0, "c": 1.0}  # no candidate judged by the burst alone


def test_the_transposed_kernel_relays_the_weight_once_and_keeps_ties_and_outputs(tiny_cfg, cache, monkeypatch):
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval()
    head = (tiny_cfg.vocab_size, tiny_cfg.n_embd)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 5))
    before, _ = model(x)
    values = model.lm_head.weight.detach().clone()
    fake_timings(monkeypatch, set(), [], t_wins=frozenset({head}))
    choices = K.choose(model)
    assert choices[head].kernel == "t" and type(model.lm_head) is TransposedLinear
    w = model.lm_head.weight
    assert w.shape == head and not w.is_contiguous() and w.t().is_contiguous() and torch.equal(w, values)
    assert model.transformer.wte.weight is w  # the tied embedding reads the same (re-laid) matrix
    assert all(m.weight.is_contiguous() for s, ls in K.linears(model).items() if s != head for m in ls)
    after, _ = model(x)  # prefill rows and the embedding work on the transposed layout
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    one, _ = model(x[:, :1])
    torch.testing.assert_close(one[0, -1], before[0, 0], rtol=0, atol=1e-5)
    K.install(model.lm_head, "linear")
    assert model.lm_head.weight.is_contiguous() and torch.equal(model.lm_head.weight, values)


def test_the_candidates_are_what_the_build_can_run():
    assert K.candidates(torch.device("cuda"), torch.float32) == ["linear"]
    assert K.candidates(CPU, torch.float16)[:4] == ["linear", "mv", "split", "t"]
    assert "packed" not in K.candidates(CPU, torch.float16)  # oneDNN packs float32 and bf16 only
    assert (
        ("packed" in K.candidates(CPU, torch.float32))
        == packable(torch.float32)
        == torch.backends.mkldnn.is_available()
    )


@pytest.mark.skipif(not packable(torch.float32), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_the_packed_kernel_keeps_outputs_ties_and_the_state_dict(tiny_cfg, cache, monkeypatch, dtype, atol):
    if not packable(dtype):
        pytest.skip(f"this build cannot pack {dtype}")
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval().to(dtype)
    for m in model.modules():  # biases that are not zero, so a kernel that dropped them would show
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.normal_(m.bias)
    x = torch.randint(0, tiny_cfg.vocab_size, (1, 5))
    before, _ = model(x)
    keys = set(model.state_dict())
    fake_timings(monkeypatch, set(), [], packed_wins=set(K.linears(model)))
    choices = K.choose(model)
    assert {c.kernel for c in choices.values()} == {"packed"} and K.summary(
        choices
    ) == f"packed {len(choices)}/{len(choices)}"
    assert type(model.lm_head) is PackedLinear and model.transformer.wte.weight is model.lm_head.weight  # still tied
    assert set(model.state_dict()) == keys  # the packed copy is no parameter, buffer or state-dict entry
    after, _ = model(x)  # prefill rows go through F.linear on the weight itself
    torch.testing.assert_close(after.float(), before.float(), rtol=0, atol=atol)
    one, _ = model(x[:, :1])  # a single row: every layer through its packed weight
    torch.testing.assert_close(one[0, -1].float(), before[0, 0].float(), rtol=0, atol=atol)
    for m in model.modules():
        if type(m) is PackedLinear:
            h = torch.randn(1, 1, m.in_features, dtype=dtype)
            torch.testing.assert_close(m(h).float(), F.linear(h, m.weight, m.bias).float(), rtol=0, atol=atol)
