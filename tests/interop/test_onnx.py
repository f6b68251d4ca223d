"""ONNX export: onnxruntime reproduces pocketgpt's logits (prefill and cached decode) and greedy text, for learned,
sinusoidal and RoPE models; the export refuses bad output folders and leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from pocketgpt.checkpoint import save_checkpoint  # noqa: E402
from pocketgpt.config import ModelConfig, SampleConfig  # noqa: E402
from pocketgpt.errors import UserError  # noqa: E402
from pocketgpt.generate.engine import Engine  # noqa: E402
from pocketgpt.interop.onnx_export import TOLERANCE, convert_to_onnx  # noqa: E402
from pocketgpt.interop.onnx_runtime import OnnxGPT  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402


def make(tmp_path, tokenizer, extra=None, **kw):
    cfg = ModelConfig(
        **{**dict(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=tokenizer.n_vocab, bias=True), **kw}
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    path = tmp_path / "ckpt"
    return save_checkpoint(path, "ckpt-0000001", model.eval(), tokenizer, extra=extra), model


VARIANTS = [
    dict(pos_encoding="learned"),
    dict(pos_encoding="sinusoidal", activation="relu"),
    dict(pos_encoding="rope", qk_norm=True, activation="relu2", tie_embeddings=False),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda d: d["pos_encoding"])
def test_onnxruntime_matches_logits_and_greedy_text(tmp_path, tiny_tokenizer, kw):
    ckpt, model = make(tmp_path, tiny_tokenizer, **kw)
    out = convert_to_onnx(ckpt, tmp_path / "onnx")
    measured = json.loads((out / "export.json").read_text())["max_abs_logit_difference"]
    assert measured["prefill"] <= TOLERANCE and measured["decode"] <= TOLERANCE

    runner = OnnxGPT(out)
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(5))
    logits, k, v = runner.step(ids.numpy(), *runner.empty_cache(3))  # a batch of 3, a fresh prefill
    with torch.no_grad():
        ref = model(ids)[0].numpy()
    np.testing.assert_allclose(logits, ref, atol=TOLERANCE, rtol=0)
    assert k.shape == (2, 3, 2, 9, 16)

    prompt = tiny_tokenizer.encode("def return import class")
    got = runner.generate([prompt], max_new_tokens=20)[0]
    want = Engine(model).generate([prompt], SampleConfig(temperature=0, max_new_tokens=20))[0][0].tokens
    assert got == want and len(got) == 20


def test_sampling_repeats_with_a_seed_and_text_round_trips(tmp_path, tiny_tokenizer):
    ckpt, _ = make(tmp_path, tiny_tokenizer)
    runner = OnnxGPT(convert_to_onnx(ckpt, tmp_path / "onnx"))
    a = runner.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=3)
    assert a == runner.generate([[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=3)
    assert isinstance(runner.generate_text("def", max_new_tokens=5), str)


def test_refuses_a_non_empty_output_and_int8(tmp_path, tiny_tokenizer, run_cli):
    ckpt, _ = make(tmp_path, tiny_tokenizer)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = run_cli("convert", "--to-onnx", ckpt, tmp_path / "full")
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "full" / "x").read_text() == "keep"
    with pytest.raises(UserError, match="no model.onnx"):
        OnnxGPT(tmp_path)
