"""train.attention: the attention kernel a run trains with is the one that measured faster here (train/autotune.py),
the measurement is cached, both kernels compute the same attention, and the loop installs the choice in every layer."""

import pytest
import torch
import torch.nn.functional as F
from conftest import OneBatch

from pocketgpt.config import ModelConfig, TrainConfig
from pocketgpt.model import GPT, CausalSelfAttention
from pocketgpt.model.attention import attend, matmul_attention
from pocketgpt.model.gpt import set_attention_kernel
from pocketgpt.train import autotune
from pocketgpt.train.loop import train_loop

CPU = torch.device("cpu")


def cfg() -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETGPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_timings(monkeypatch, sdpa: float, matmul: float) -> list:
    calls = []

    def measure(*shape):
        calls.append(shape)
        return {"sdpa": sdpa, "matmul": matmul}

    monkeypatch.setattr(autotune, "measure_attention", measure)
    return calls


@pytest.mark.parametrize(
    "sdpa, matmul, expected", [(2.0, 1.0, "matmul"), (1.0, 2.0, "sdpa"), (1.0, 1.0, "sdpa"), (1.04, 1.0, "sdpa")]
)
def test_auto_takes_the_faster_kernel_and_sdpa_on_a_near_tie(cache, monkeypatch, sdpa, matmul, expected):
    calls = fake_timings(monkeypatch, sdpa, matmul)
    kernel, why = autotune.attention_kernel("auto", cfg(), 4, 16, torch.bfloat16, CPU)
    assert kernel == expected and calls == [(4, 2, 16, 16, torch.bfloat16, CPU)]
    assert "4x2x16x16 bfloat16" in why and f"sdpa {1e3 * sdpa:.2f} ms" in why


def test_the_measurement_is_cached_per_shape_and_precision(cache, monkeypatch):
    calls = fake_timings(monkeypatch, 3.0, 1.0)
    assert autotune.attention_kernel("auto", cfg(), 4, 16, torch.bfloat16, CPU)[0] == "matmul"
    kernel, why = autotune.attention_kernel("auto", cfg(), 4, 16, torch.bfloat16, CPU)
    assert kernel == "matmul" and "cached" in why and len(calls) == 1  # the second run measured nothing
    autotune.attention_kernel("auto", cfg(), 4, 16, torch.float32, CPU)  # another precision: measured again
    autotune.attention_kernel("auto", cfg(), 8, 16, torch.bfloat16, CPU)  # another micro-batch: measured again
    assert len(calls) == 3
    assert (cache / "measurements.json").exists()


def test_a_given_kernel_is_not_measured(cache, monkeypatch):
    calls = fake_timings(monkeypatch, 1.0, 2.0)
    assert autotune.attention_kernel("matmul", cfg(), 4, 16, torch.float32, CPU) == ("matmul", "train.attention")
    assert calls == []


def test_the_real_measurement_times_both_kernels():
    times = autotune.measure_attention(2, 2, 16, 8, torch.float32, CPU, reps=2)
    assert set(times) == {"sdpa", "matmul"} and all(0 < t < 1 for t in times.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_kernels_give_the_same_attention(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 12, 8, dtype=dtype) for _ in range(3))
    sdpa = attend(q, k, v, kernel="sdpa")
    assert torch.equal(sdpa, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.equal(attend(q, k, v, kernel="matmul"), matmul_attention(q, k, v))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(attend(q, k, v, kernel="matmul"), sdpa, atol=tol, rtol=0)


def test_set_attention_kernel_reaches_every_layer_and_refuses_unknown_names():
    model = GPT(cfg())
    set_attention_kernel(model, "matmul")
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    assert len(layers) == 2 and all(m.kernel == "matmul" for m in layers)
    with pytest.raises(ValueError, match="one of auto, sdpa, matmul"):
        set_attention_kernel(model, "flash")


@pytest.mark.parametrize("choice", ["sdpa", "matmul"])
def test_the_loop_trains_with_the_chosen_kernel(tmp_path, cache, capsys, choice):
    torch.manual_seed(0)
    model = GPT(cfg())
    x = torch.randint(0, 64, (4, 16))
    tc = TrainConfig(
        max_steps=2, warmup_steps=0, eval_every=0, save_every=0, log_every=0, dtype="float32", attention=choice
    )
    train_loop(model, OneBatch(x, x), tc, tmp_path, save=lambda *a: None)
    assert all(m.kernel == choice for m in model.modules() if isinstance(m, CausalSelfAttention))
    assert f"attention: {choice} (train.attention)" in capsys.readouterr().out


def test_the_loop_measures_by_default(tmp_path, cache, monkeypatch, capsys):
    calls = fake_timings(monkeypatch, 2.0, 1.0)
    model = GPT(cfg())
    x = torch.randint(0, 64, (4, 16))
    tc = TrainConfig(max_steps=1, warmup_steps=0, eval_every=0, save_every=0, log_every=0, dtype="float32")
    train_loop(model, OneBatch(x, x), tc, tmp_path, save=lambda *a: None)
    assert calls == [(tc.batch_size, 2, x.shape[1], 16, torch.float32, CPU)]
    assert all(m.kernel == "matmul" for m in model.modules() if isinstance(m, CausalSelfAttention))
    assert "attention: matmul (measured at" in capsys.readouterr().out


def test_the_formula_is_not_considered_when_its_weights_would_not_fit(cache, monkeypatch):
    calls = fake_timings(monkeypatch, 9.0, 1.0)
    big = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=4096, vocab_size=64)
    kernel, why = autotune.attention_kernel("auto", big, 8, 4096, torch.float32, CPU)  # 12 x 8 x 12 x 4096^2 x 4 B
    assert kernel == "sdpa" and "GiB of attention weights" in why and calls == []
