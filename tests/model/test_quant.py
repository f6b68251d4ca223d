"""int8 weight-only quantization (model/quant.py): the scales, the kernels against float, the checkpoint round trip,
tied embeddings, `.to(dtype)`, and the engine running a quantized model.

Error bounds. Rounding to the nearest of 255 levels leaves each weight off by at most scale/2, uniformly, so by
scale/sqrt(12) in rms, with scale = max|w_row|/127. For Gaussian rows of a few hundred to 50k entries max|w| is
3-4.5 sigma, so the rms weight error is 4.5/(127 sqrt 12) ~ 1% of the weights' rms, and a matmul with unrelated
activations carries that relative error into its output (measured: 0.4-0.9%). One layer: bound 2% (float32
activations); bf16 activations add their own 2^-9 rounding of the input and output (~0.3% each): bound 3%.
A whole 2-layer model's logits: the layers' errors add in quadrature through the residual stream (measured 0.8%):
bound 3%. FBGEMM also quantizes the activations per tensor to 7 bits (reduce_range): its bound is 4%.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.int8_kernels import choose_int8, int8_activation_dtype
from pocketgpt.model import GPT
from pocketgpt.model.lora import apply_lora
from pocketgpt.model.quant import SCHEME, Int8Linear, is_quantized, quantize_model, quantize_weight, run_kernel


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_per_channel_scales_are_absmax_over_127():
    torch.manual_seed(0)
    w = torch.randn(6, 40) * torch.tensor([1e-3, 0.02, 1.0, 30.0, 0.5, 0.0])[:, None]  # rows of very different size
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (6,)
    absmax = w.abs().amax(dim=1)
    assert torch.allclose(s[:5], absmax[:5] / 127, rtol=1e-6, atol=0)
    assert s[5] == 1 and not q[5].any()  # an all-zero row: zeros, any scale
    assert (q[:5].abs().amax(dim=1) == 127).all()  # each row's largest weight uses the full range
    assert q.min() >= -127  # symmetric: -128 is never used
    err = (q.float() * s[:, None] - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7 * absmax[:, None]).all()  # round to nearest: at most half a step


def test_a_symmetric_row_quantizes_symmetrically():
    w = torch.tensor([[0.3, -0.3, 0.1, -0.1, 0.0]])
    q, _ = quantize_weight(w)
    assert q[0, 0] == -q[0, 1] == 127 and q[0, 2] == -q[0, 3]


@pytest.mark.parametrize("shape", [(96, 64), (64, 256)])
def test_every_kernel_is_close_to_the_float_layer(shape):
    torch.manual_seed(0)
    out_f, in_f = shape
    lin = nn.Linear(in_f, out_f)
    nn.init.normal_(lin.weight, std=0.02)
    nn.init.normal_(lin.bias, std=0.02)
    m = Int8Linear.from_linear(lin)
    x = torch.randn(5, in_f)
    with torch.no_grad():
        ref = lin(x)
        deq = run_kernel("dequant", x, m)
        assert rel(deq, ref) < 0.02
        assert rel(run_kernel("int8pack", x, m), deq) < 1e-5  # the same math in float32
        assert rel(run_kernel("int8pack", x.bfloat16(), m), ref) < 0.03
        assert run_kernel("int8pack", x.bfloat16(), m).dtype == torch.bfloat16
        assert rel(run_kernel("dequant", x.bfloat16(), m), ref) < 0.03
        if (
            "fbgemm" in torch.backends.quantized.supported_engines
            or "x86" in torch.backends.quantized.supported_engines
        ):
            assert rel(run_kernel("fbgemm", x, m), ref) < 0.04
        for k in ("auto", "int8pack", "dequant"):  # one row takes the layer's kernel, several the rule: both close
            m.kernel = k
            assert rel(m(x[:1]), lin(x[:1])) < 0.02
            assert m(x.view(5, 1, in_f)).shape == (5, 1, out_f)


def test_quantized_model_logits_are_close(tiny_model):
    q = copy.deepcopy(tiny_model)
    names = quantize_model(q)
    assert names[-1] == "lm_head" and len(names) == 4 * tiny_model.config.n_layer + 1
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert isinstance(q.transformer.wte, nn.Embedding)  # embeddings stay float
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 24))
    with torch.no_grad():
        assert rel(q(x)[0], tiny_model(x)[0]) < 0.03
        assert rel(q.bfloat16()(x)[0], tiny_model(x)[0]) < 0.04  # bf16 activations on top


def test_tied_head_gets_its_own_int8_copy(tiny_model):
    assert tiny_model.config.tie_embeddings
    wte = tiny_model.transformer.wte.weight.detach().clone()
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    assert torch.equal(q.transformer.wte.weight, wte)  # float, untouched
    assert torch.equal(q.lm_head.weight_int8, quantize_weight(wte)[0])
    assert "lm_head.weight" not in q.state_dict()


def test_to_dtype_keeps_int8_weights_and_float32_scales(tiny_model):
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.to(torch.bfloat16)
    for name, m in q.named_modules():
        if isinstance(m, Int8Linear):
            assert m.weight_int8.dtype == torch.int8 and m.scale.dtype == torch.float32, name
            assert torch.equal(m.weight_int8, before[f"{name}.weight_int8"])
            assert torch.equal(m.scale, before[f"{name}.scale"])
            if m.bias is not None:
                assert m.bias.dtype == torch.bfloat16
    assert q.transformer.wte.weight.dtype == torch.bfloat16


def test_checkpoint_round_trip_is_bit_exact(tmp_path, tiny_model, tiny_tokenizer):
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    save_checkpoint(tmp_path / "run", "ckpt-0000001", q, tiny_tokenizer, extra={"quantized": dict(SCHEME)})
    loaded = load_checkpoint(tmp_path / "run").model
    assert is_quantized(loaded)
    a, b = q.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.randint(0, tiny_model.config.vocab_size, (1, 10))
    with torch.no_grad():
        assert torch.equal(q(x)[0], loaded(x)[0])


def test_an_unknown_scheme_is_refused(tmp_path, tiny_model, tiny_tokenizer):
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    save_checkpoint(tmp_path / "run", "ckpt-0000001", q, tiny_tokenizer, extra={"quantized": {"bits": 4}})
    with pytest.raises(UserError, match="quantized as"):
        load_checkpoint(tmp_path / "run")


def test_untied_model_with_biases(tmp_path, tiny_tokenizer):
    cfg = ModelConfig(
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=16,
        vocab_size=tiny_tokenizer.n_vocab,
        tie_embeddings=False,
        bias=True,
    )
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    quantize_model(m)
    save_checkpoint(tmp_path / "run", "ckpt-0000001", m, tiny_tokenizer, extra={"quantized": dict(SCHEME)})
    loaded = load_checkpoint(tmp_path / "run").model
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_lora_layers_are_refused(tiny_model):
    from pocketgpt.config import LoRAConfig

    m = copy.deepcopy(tiny_model)
    apply_lora(m, LoRAConfig(rank=2))
    with pytest.raises(UserError, match="merge the adapter"):
        quantize_model(m)


def test_engine_runs_a_quantized_model_in_its_dtype(tiny_model):
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    eng = Engine(q, dtype=torch.float32, kernels="auto")
    assert eng.dtype == int8_activation_dtype("cpu")
    m8 = eng.model  # the engine's working copy: converted and given kernels; the caller's q is left as it was
    assert m8.transformer.wte.weight.dtype == eng.dtype and q.transformer.wte.weight.dtype == torch.float32
    shapes = {(m.out_features, m.in_features) for m in m8.modules() if isinstance(m, Int8Linear)}
    assert shapes <= set(eng.kernels)
    assert {m.kernel for m in m8.modules() if isinstance(m, Int8Linear)} <= {"int8pack", "dequant", "fbgemm"}
    assert {m.kernel for m in q.modules() if isinstance(m, Int8Linear)} == {"auto"}
    out = eng.generate([[1, 2, 3]], SampleConfig(max_new_tokens=6, temperature=0))[0][0]
    assert len(out.tokens) == 6
    # greedy decoding with the KV cache picks what a full forward of the same int8 model picks
    ctx = [1, 2, 3]
    with torch.no_grad():
        for tok in out.tokens:
            logits = m8(torch.tensor([ctx]))[0][0, -1].float()
            assert logits[tok] >= logits.max() - 0.05 * logits.abs().max()  # bf16 ties aside
            ctx.append(tok)


def test_choose_int8_caches_and_forced_modes(tiny_model):
    q = copy.deepcopy(tiny_model)
    quantize_model(q)
    first = choose_int8(q, "auto")
    assert all(c.us for c in first.values()) or all(c.cached for c in first.values())
    again = choose_int8(q, "auto")
    assert all(c.cached for c in again.values())
    assert {c.kernel for c in choose_int8(q, "linear").values()} == {"auto"}
