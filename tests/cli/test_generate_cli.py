"""`pocketgpt generate` with the engine's options, and `pocketgpt convert`, as a user types them."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.checkpoint import save_checkpoint
from pocketgpt.generate.kernels import candidates


@pytest.fixture
def ckpt(tmp_path, tiny_model, tiny_tokenizer):
    save_checkpoint(tmp_path / "run", "ckpt-0000001", tiny_model, tiny_tokenizer, step=1)
    return tmp_path / "run"


def test_stream_prints_the_same_text_as_batch(run_cli, ckpt):
    code, streamed, _ = run_cli(
        "generate", ckpt, "--prompt", "The model", "--temperature", "0", "--max-new-tokens", "30", "--stream"
    )
    assert code == 0
    code, plain, _ = run_cli("generate", ckpt, "--prompt", "The model", "--temperature", "0", "--max-new-tokens", "30")
    assert code == 0 and streamed == plain and streamed.startswith("The model")


def test_num_samples_and_beams(run_cli, ckpt):
    code, out, _ = run_cli(
        "generate", ckpt, "--prompt", "a", "--num-samples", "3", "--seed", "1", "--max-new-tokens", "10"
    )
    assert code == 0 and out.count("--- sample") == 3
    code, out, _ = run_cli(
        "generate", ckpt, "--prompt", "a", "--beams", "3", "--num-samples", "2", "--max-new-tokens", "10"
    )
    assert code == 0 and out.count("--- beam") == 2 and "score" in out


def test_stop_strings_repeatable(run_cli, ckpt):
    code, full, _ = run_cli("generate", ckpt, "--prompt", "", "--temperature", "0", "--max-new-tokens", "40")
    text = full.rstrip("\n")
    assert code == 0 and len(text) > 6
    stop = text[3:5]
    code, out, _ = run_cli(
        "generate",
        ckpt,
        "--prompt",
        "",
        "--temperature",
        "0",
        "--max-new-tokens",
        "40",
        "--stop",
        "zzzz",
        "--stop",
        stop,
    )
    assert code == 0 and out.rstrip("\n") == text[: text.index(stop)]


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--beams", "0"], "num_beams"),
        (["--num-samples", "0"], "num_samples"),
        (["--beams", "2", "--temperature", "0.7"], "beam search"),
        (["--beams", "2", "--top-k", "5"], "beam search"),
        (["--stream", "--num-samples", "2"], "--stream"),
        (["--top-p", "0"], "top_p"),
        (["--temperature", "nan"], "temperature"),
        (["--frequency-penalty", "3"], "frequency_penalty"),
        (["--dtype", "float16"], "--dtype"),
    ],
)
def test_bad_generate_flags(run_cli, ckpt, flags, needle):
    code, out, err = run_cli("generate", ckpt, "--prompt", "x", *flags)
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_convert_round_trip_and_errors(run_cli, ckpt, tmp_path):
    pytest.importorskip("transformers")
    code, out, err = run_cli("convert", "--to-hf", ckpt, tmp_path / "hf")
    assert code == 0, err
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    code, out, err = run_cli("convert", "--from-hf", tmp_path / "hf", tmp_path / "back")
    assert code == 0, err
    a = run_cli("generate", ckpt, "--prompt", "x", "--temperature", "0", "--max-new-tokens", "20")[1]
    b = run_cli("generate", tmp_path / "back", "--prompt", "x", "--temperature", "0", "--max-new-tokens", "20")[1]
    assert a == b
    for args, needle in [
        (("convert", tmp_path / "z"), "exactly one"),
        (("convert", "--from-hf", tmp_path / "hf", "--to-hf", ckpt, tmp_path / "z"), "exactly one"),
        (("convert", "--from-hf", tmp_path / "nope" / "x", tmp_path / "z"), ""),
        (("convert", "--to-hf", ckpt, tmp_path / "hf"), ""),
    ]:
        code, _, err = run_cli(*args)
        assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "z").exists()


def test_verbose_prints_the_kernels_and_forced_kernels_give_the_same_text(run_cli, ckpt):
    flags = (
        "generate",
        ckpt,
        "--prompt",
        "The model",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--dtype",
        "float32",
    )
    code, auto, err = run_cli(*flags, "-v")
    assert code == 0
    assert "kernels (" in err and "linear" in err and "µs" in err and "device: cpu" in err
    assert "kernels" not in auto  # stdout holds only the text
    texts = {run_cli(*flags, "--kernels", k)[1] for k in candidates(torch.device("cpu"), torch.float32)}
    assert texts == {auto}
    code, _, err = run_cli(*flags, "--kernels", "split", "-v")
    assert code == 0 and "forced" in err
