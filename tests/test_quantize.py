"""`pocketgpt quantize`: the quality gate (refuses and writes nothing over the threshold, writes under it), the
held-out text (the run's validation split, or --data), bad input as one line and exit 2, and a quantized checkpoint
through generate / eval / chat and `--quantize int8` on load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import TINY_TRAIN_FLAGS
from safetensors.torch import load_file

from pocketgpt.checkpoint import load_checkpoint, resolve, save_checkpoint
from pocketgpt.cli.main import main
from pocketgpt.generate.int8_kernels import int8_activation_dtype
from pocketgpt.model.quant import Int8Linear, is_quantized, quantize_weight
from pocketgpt.quantize import quantize_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_text):
    """A tiny pre-training run (6 steps) with a validation split in its config.yaml."""
    root = tmp_path_factory.mktemp("quantize")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    formatwarning = warnings.formatwarning
    try:
        args = ["train", "--data", corpus, "--out", root / "run", "--cache_dir", root / "cache", *TINY_TRAIN_FLAGS]
        assert main([str(a) for a in args]) == 0
    finally:
        warnings.formatwarning = formatwarning
    return root / "run"


@pytest.fixture
def lone(tmp_path, tiny_model, tiny_tokenizer):
    """A checkpoint outside any training run (as `convert --from-hf` writes one): no validation split."""
    save_checkpoint(tmp_path / "lone", "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    return tmp_path / "lone"


def one_error(result, *words) -> str:
    code, out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pocketgpt: error: "), (code, out, err)
    assert "Traceback" not in err + out
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def test_gate_passes_and_writes_an_int8_checkpoint(run_cli, run, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run_cli("quantize", run, out, "--bits", "8")
    assert code == 0, err
    assert "Δbpb" in stdout and "KL(float || int8)" in stdout and "validation split" in stdout
    meta = json.loads((out / "config.json").read_text())
    assert meta["quantized"] == {"bits": 8, "scheme": "per-channel-absmax"}
    gate = meta["quantize_gate"]
    assert abs(gate["bpb_int8"] - gate["bpb_float"]) < 0.01 and gate["kl"] >= 0
    tensors = load_file(str(out / "model.safetensors"))
    float_ckpt = load_checkpoint(run)
    for name, m in float_ckpt.model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "":
            q, s = quantize_weight(m.weight)
            assert tensors[f"{name}.weight_int8"].dtype == torch.int8
            assert torch.equal(tensors[f"{name}.weight_int8"], q) and torch.equal(tensors[f"{name}.scale"], s), name
            assert f"{name}.weight" not in tensors
    # the embedding stays float (the tied head has its own int8 copy) and equals the float checkpoint's
    assert torch.equal(tensors["transformer.wte.weight"], float_ckpt.model.transformer.wte.weight)
    loaded = load_checkpoint(out)
    assert is_quantized(loaded.model)
    for k, v in loaded.model.state_dict().items():  # the file, bit for bit
        assert torch.equal(v, tensors[k] if k != "lm_head.weight" else tensors["transformer.wte.weight"]), k


def test_gate_refuses_over_the_threshold_and_writes_nothing(run_cli, run, tmp_path):
    out = tmp_path / "q"
    before = set(tmp_path.iterdir())
    result = run_cli("quantize", run, out, "--max-bpb-increase", "-1")
    line = one_error(result, "max-bpb-increase", "nothing written")
    assert "Δbpb" in result[1]  # the measurement is printed before the refusal
    assert "+" in line or "-" in line
    assert not out.exists() and set(tmp_path.iterdir()) == before  # no temp folder left either


def test_data_file_for_a_checkpoint_without_a_run(run_cli, lone, corpus_file, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run_cli("quantize", lone, out, "--data", corpus_file, "--max-tokens", "0")
    assert code == 0, err
    assert str(corpus_file) in stdout
    # eval of the quantized checkpoint reproduces the gate's int8 bits per byte (same text, same windows)
    gate = json.loads((out / "config.json").read_text())["quantize_gate"]
    code, stdout, err = run_cli("eval", out, "--data", corpus_file, "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["bpb"] == pytest.approx(gate["bpb_int8"], rel=2e-3)


@pytest.mark.parametrize(
    "flags, words",
    [
        ([], ["--data"]),  # no run folder: no validation split
        (["--bits", "4"], ["--bits 4", "int8"]),
        (["--data", "/nonexistent/text.txt"], ["not found"]),
    ],
)
def test_bad_input_is_one_line(run_cli, lone, tmp_path, flags, words):
    out = tmp_path / "q"
    one_error(run_cli("quantize", lone, out, *flags), *words)
    assert not out.exists()


def test_a_non_empty_out_is_refused(run_cli, run, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_error(run_cli("quantize", run, out), "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_quantized_checkpoint_is_not_quantized_again(run_cli, run, tmp_path):
    assert run_cli("quantize", run, tmp_path / "q")[0] == 0
    one_error(run_cli("quantize", tmp_path / "q", tmp_path / "q2"), "quantized already")


def test_a_quantized_checkpoint_generates_and_chats_through_the_cli(run_cli, run, tmp_path):
    out = tmp_path / "q"
    assert run_cli("quantize", run, out)[0] == 0
    code, stdout, err = run_cli("generate", out, "--prompt", "the model", "--max-new-tokens", "8", "--temperature", "0")
    assert code == 0, err
    assert stdout.startswith("the model") and len(stdout) > len("the model")
    code, stdout, err = run_cli("generate", out, "--max-new-tokens", "4", "-v", "--temperature", "0")
    assert code == 0 and "kernels" in err, err
    # the same text as quantizing on load: the same int8 weights, the same engine
    q1 = run_cli("generate", out, "--prompt", "the", "--max-new-tokens", "8", "--temperature", "0")
    q2 = run_cli(
        "generate", run, "--prompt", "the", "--max-new-tokens", "8", "--temperature", "0", "--quantize", "int8"
    )
    assert q1[0] == q2[0] == 0 and q1[1] == q2[1]


def test_training_merging_and_export_want_the_float_checkpoint(run_cli, run, tmp_path, corpus_file):
    out = tmp_path / "q"
    assert run_cli("quantize", run, out)[0] == 0
    one_error(run_cli("convert", "--to-hf", out, tmp_path / "hf"), "needs float weights", str(resolve(run)))
    one_error(
        run_cli("finetune", out, "--data", corpus_file, "--out", tmp_path / "ft", "--train.max_steps", "1"),
        "needs float weights",
    )


def test_library_function_returns_the_numbers(run, tmp_path):
    r = quantize_checkpoint(run, tmp_path / "q", verbose=False)
    assert r.out == tmp_path / "q" and r.tokens > 0 and r.kl >= 0
    assert r.delta_bpb == pytest.approx(r.bpb_int8 - r.bpb_float)
    assert resolve(tmp_path / "q") == tmp_path / "q"


def test_serve_loads_a_quantized_checkpoint_or_quantizes_on_load(run, tmp_path):
    pytest.importorskip("fastapi")
    from pocketgpt.serve.app import create_app

    quantize_checkpoint(run, tmp_path / "q", verbose=False)
    assert is_quantized(create_app(tmp_path / "q").state.served.scheduler.engine.model)

    app = create_app(run, quantize="int8", dtype="float32")
    engine = app.state.served.scheduler.engine
    assert is_quantized(engine.model) and engine.dtype == int8_activation_dtype("cpu")  # not the float32 asked
    assert any(isinstance(m, Int8Linear) for m in engine.model.modules())
