"""Prompt conditioning said out loud: whether prompts start with <|endoftext|> is the checkpoint's recorded
property (pocketgpt-trained: yes; converted from Hugging Face: no), and --bos / --no-bos override it everywhere."""

from __future__ import annotations

import httpx
import pytest
import torch

from pocketgpt.checkpoint import load_checkpoint, prompt_bos, save_checkpoint
from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.generate.text import TextGenerator
from pocketgpt.model import GPT


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("bos")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_tokenizer.n_vocab))
    ours = save_checkpoint(root / "ours", "ckpt-0000001", model, tiny_tokenizer)
    hf = save_checkpoint(
        root / "hf", "ckpt-0000001", model, tiny_tokenizer, extra={"converted_from": "huggingface-gpt2:x", "bos": False}
    )
    old_hf = save_checkpoint(
        root / "old", "ckpt-0000001", model, tiny_tokenizer, extra={"converted_from": "huggingface"}
    )
    return ours, hf, old_hf


def test_the_checkpoint_records_it(ckpts):
    ours, hf, old_hf = (load_checkpoint(p) for p in ckpts)
    assert prompt_bos(ours) is True and prompt_bos(hf) is False
    assert prompt_bos(old_hf) is False  # converted before "bos" was recorded: still no <|endoftext|>


def test_text_generator_and_cli_follow_it(ckpts, run_cli, tiny_tokenizer):
    ours, hf, _ = ckpts
    ck = load_checkpoint(ours)
    sc = SampleConfig(max_new_tokens=8, temperature=0)
    with_bos = TextGenerator(ck.model, ck.tokenizer, bos=True)
    without = TextGenerator(ck.model, ck.tokenizer, bos=False)
    assert with_bos.encode_prompt("def return") == [tiny_tokenizer.eot_id] + tiny_tokenizer.encode("def return")
    assert without.encode_prompt("def return") == tiny_tokenizer.encode("def return")
    a = with_bos.complete(["def return"], sc)[0][0].text
    b = without.complete(["def return"], sc)[0][0].text
    assert a != b  # the conditioning changes what a model says: which is why it is recorded
    flags = ["--prompt", "def return", "--max-new-tokens", "8", "--temperature", "0", "--dtype", "float32"]
    for path, extra, want in [(ours, [], a), (ours, ["--no-bos"], b), (hf, [], b), (hf, ["--bos"], a)]:
        code, out, err = run_cli("generate", path, *flags, *extra)
        assert code == 0, err
        assert out.rstrip("\n") == "def return" + want, (path, extra)
    code, _, err = run_cli("generate", ours, "--prompt", "", "--no-bos")
    assert code == 2 and "empty" in err


def test_the_server_follows_it(ckpts):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
    from serve_helpers import make_app, running

    ours, hf, _ = ckpts
    ck = load_checkpoint(ours)
    sc = SampleConfig(max_new_tokens=6, temperature=0)
    want = {b: TextGenerator(ck.model, ck.tokenizer, bos=b).complete(["def"], sc)[0][0].text for b in (True, False)}
    for path, kw, bos in [(ours, {}, True), (hf, {}, False), (hf, {"bos": True}, True), (ours, {"bos": False}, False)]:
        with running(make_app(path, **kw)) as url:
            body = {"prompt": "def", "max_tokens": 6, "temperature": 0}
            r = httpx.post(url + "/v1/completions", json=body).json()
            assert r["choices"][0]["text"] == want[bos], (path, kw)
            if not bos:
                empty = httpx.post(url + "/v1/completions", json={**body, "prompt": ""})
                assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"


def test_converting_records_it_both_ways(ckpts, tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    from pocketgpt.interop import convert_from_hf, convert_to_hf
    from pocketgpt.interop.hf_tokenizer import save_hf_tokenizer

    hf_dir = tmp_path / "hf"  # a plain transformers folder: its tokenizer adds no BOS
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=tiny_tokenizer.n_vocab)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(hf_dir)
    save_hf_tokenizer(tiny_tokenizer, hf_dir, model_max_length=64)
    assert prompt_bos(load_checkpoint(convert_from_hf(hf_dir, tmp_path / "from-hf"))) is False
    ours, _, _ = ckpts  # pocketgpt -> HF -> pocketgpt keeps "yes"
    back = convert_from_hf(convert_to_hf(ours, tmp_path / "to-hf"), tmp_path / "back")
    assert prompt_bos(load_checkpoint(back)) is True
