"""Hugging Face GPT-2 interop: tiny random configs both ways, identical logits, greedy text, tokenizer, errors.

Everything is built in the test: random GPT2Config models, a tokenizer trained on the shared test text.
Nothing is downloaded (the Hub tests force offline mode).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pocketgpt.config import ModelConfig, SampleConfig  # noqa: E402
from pocketgpt.errors import UserError  # noqa: E402
from pocketgpt.generate.engine import generate_ids  # noqa: E402
from pocketgpt.interop import (  # noqa: E402
    config_from_hf,
    config_to_hf,
    convert_from_hf,
    convert_to_hf,
    from_hf_state_dict,
    hf_files,  # noqa: E402
    to_hf_state_dict,
)
from pocketgpt.interop.hf_tokenizer import load_hf_tokenizer, save_hf_tokenizer  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.tokenizer import Tokenizer  # noqa: E402

TOL = 1e-5


def jiggle(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Random values in every parameter (biases and LayerNorms too), so a swapped tensor cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def hf_model(seed: int = 0, attn: str | None = None, **kw) -> GPT2LMHeadModel:
    args = dict(n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=97, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**args, **kw}))
    if attn:
        model.set_attn_implementation(attn)
    jiggle(model, seed)
    return model.eval()


def ours_from_hf(hf: GPT2LMHeadModel) -> GPT:
    cfg = config_from_hf(hf.config.to_dict())
    model = GPT(cfg)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    return model.eval()


def max_diff(ours: GPT, hf: GPT2LMHeadModel, vocab: int, T: int = 64, seed: int = 0) -> float:
    idx = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, _ = ours(idx)
        b = hf(idx).logits
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def tok400(corpus_text) -> Tokenizer:
    return Tokenizer.train([corpus_text], vocab_size=400)


def save_ours(model: GPT, tok: Tokenizer, where) -> str:
    return str(save_checkpoint(where, "ckpt-0000001", model, tok))


def hf_folder(tmp_path, tok: Tokenizer, name: str = "hf", **kw):
    """A saved random HF GPT-2 (model.safetensors + config.json) with our tokenizer's HF files."""
    hf = hf_model(vocab_size=tok.n_vocab, **kw)
    folder = tmp_path / name
    hf.save_pretrained(folder, safe_serialization=True)
    save_hf_tokenizer(tok, folder, model_max_length=hf.config.n_positions)
    return hf, folder


# ---- logits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_layer,n_head,n_embd,vocab,n_inner,act,eps,attn",
    [
        (1, 1, 16, 97, None, "gelu_new", 1e-5, None),
        (3, 2, 16, 50, None, "gelu_new", 1e-5, None),
        (3, 4, 64, 300, None, "gelu_pytorch_tanh", 1e-6, None),
        (1, 4, 64, 1000, 100, "gelu", 1e-5, None),
        (3, 2, 64, 257, 37, "gelu_new", 1e-5, "eager"),
    ],
)
def test_hf_to_pocketgpt_logits(n_layer, n_head, n_embd, vocab, n_inner, act, eps, attn):
    hf = hf_model(
        seed=n_layer * 7 + n_head,
        attn=attn,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab,
        n_inner=n_inner,
        activation_function=act,
        layer_norm_epsilon=eps,
    )
    ours = ours_from_hf(hf)
    assert ours.config.mlp_width == (n_inner or 4 * n_embd)
    assert max_diff(ours, hf, vocab) < TOL


def test_hub_key_layout_without_prefix_with_mask_buffers():
    """Hub `gpt2` files say `h.0.attn...`, carry attn.bias/masked_bias buffers and no lm_head."""
    hf = hf_model(n_layer=2)
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    cfg = config_from_hf(hf.config.to_dict())
    ours = GPT(cfg)
    ours.load_state_dict(from_hf_state_dict(sd, cfg))
    assert max_diff(ours.eval(), hf, 97) < TOL


def test_untied_hf_model_imports_with_its_own_head():
    hf = hf_model(n_layer=2, tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    ours = ours_from_hf(hf)
    assert not ours.config.tie_embeddings
    assert max_diff(ours, hf, 97) < TOL


def test_reorder_and_upcast_attn_is_the_same_math():
    hf = hf_model(attn="eager", n_layer=2, reorder_and_upcast_attn=True)
    assert max_diff(ours_from_hf(hf), hf, 97) < TOL


@pytest.mark.parametrize(
    "bias,act,n_layer,n_head,n_embd",
    [
        (True, "gelu", 1, 1, 16),
        (True, "gelu_tanh", 3, 2, 64),
        (False, "gelu", 3, 4, 64),
        (False, "gelu_tanh", 1, 2, 16),
    ],
)
def test_pocketgpt_to_hf_logits(bias, act, n_layer, n_head, n_embd):
    cfg = ModelConfig(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=64, vocab_size=123, bias=bias, activation=act
    )
    torch.manual_seed(1)
    ours = GPT(cfg)
    jiggle(ours, 2)
    sd = to_hf_state_dict(ours.eval())
    if not bias:
        assert all(not v.any() for k, v in sd.items() if k.endswith(".bias"))  # HF always has biases
    hf = GPT2LMHeadModel(GPT2Config(**config_to_hf(cfg))).eval()
    hf.load_state_dict(sd)
    assert max_diff(ours, hf, 123) < TOL
    # and back: a bias=False config takes the zero biases away again
    back = GPT(cfg)
    back.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


# ---- greedy generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["from_hf", "to_hf"])
def test_greedy_50_tokens_identical(direction):
    if direction == "from_hf":
        hf = hf_model(seed=3, n_layer=2, n_head=2, n_embd=32, vocab_size=211)
        ours = ours_from_hf(hf)
    else:
        cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=211, activation="gelu_tanh")
        torch.manual_seed(3)
        ours = GPT(cfg)
        jiggle(ours, 4, scale=0.3)
        hf = GPT2LMHeadModel(GPT2Config(**config_to_hf(cfg, eot_id=None))).eval()
        hf.load_state_dict(to_hf_state_dict(ours.eval()))
    prompt = [5, 17, 42, 8, 99]
    mine = list(generate_ids(ours, prompt, SampleConfig(max_new_tokens=50, temperature=0)))
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=50,
            eos_token_id=None,
            pad_token_id=0,
        )
    theirs = theirs[0, len(prompt) :].tolist()
    assert len(mine) == len(theirs) == 50
    assert mine == theirs
    assert len(set(mine)) > 1  # a tiny random model, but not a constant one


# ---- tokenizer ------------------------------------------------------------------------------------

TEXTS = [
    "Hello world! The model reads tokens and predicts the next one.",
    "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    "中文 测试，你好世界。日本語もテスト",
    "emoji 🙂🚀👩‍👩‍👧 and Café déjà vu",
    "   leading, trailing and   many    spaces   \n\n\n\t\t  ",
    "it's they're we'll I'd 1234567 3.14159 $$$ !!!",
    "",
]
SPECIAL_TEXTS = ["<|endoftext|>", "end <|endoftext|> start", "<|user|>hi<|end|><|assistant|>yo", "<|endoftext"]


def test_exported_tokenizer_encodes_identically(tmp_path, tok400):
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tok400.n_vocab)
    out = convert_to_hf(save_ours(GPT(cfg), tok400, tmp_path / "run"), tmp_path / "hf")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    split = AutoTokenizer.from_pretrained(out, split_special_tokens=True)
    assert auto.eos_token_id == tok400.eot_id and auto.bos_token_id == tok400.eot_id
    assert set(auto.all_special_ids) == set(tok400.special_tokens.values())
    for text in TEXTS:
        want = tok400.encode(text)
        assert fast(text)["input_ids"] == want, text
        assert auto(text)["input_ids"] == want, text
        assert auto.decode(want) == text
    for text in SPECIAL_TEXTS:
        # HF convention: special strings become special ids (so `text + eos_token` works) ...
        assert fast(text)["input_ids"] == tok400.encode(text, allowed_special="all"), text
        assert auto(text)["input_ids"] == tok400.encode(text, allowed_special="all"), text
        # ... and with split_special_tokens=True HF follows our default: special strings are plain text
        assert split(text)["input_ids"] == tok400.encode(text), text
    # and back in: from vocab.json + merges.txt, and from tokenizer.json alone
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    shutil.copy(out / "tokenizer.json", only_json)
    for back in (load_hf_tokenizer(out), load_hf_tokenizer(only_json)):
        assert back.special_tokens == tok400.special_tokens
        for text in TEXTS + SPECIAL_TEXTS:
            assert back.encode(text) == tok400.encode(text)


# ---- folders both ways -------------------------------------------------------------------------


def test_hf_to_pocketgpt_to_hf_reproduces_every_tensor(tmp_path, tok400):
    hf, src = hf_folder(tmp_path, tok400, n_layer=3, n_head=4, n_embd=32, n_inner=48)
    ckpt = convert_from_hf(src, tmp_path / "ours")
    loaded = load_checkpoint(ckpt)  # OUT is itself a pocketgpt checkpoint folder
    assert loaded.tokenizer.encode(TEXTS[0]) == tok400.encode(TEXTS[0])
    assert max_diff(loaded.model, hf, tok400.n_vocab) < TOL
    dst = convert_to_hf(ckpt, tmp_path / "back")
    a, b = load_file(str(src / "model.safetensors")), load_file(str(dst / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = GPT2LMHeadModel.from_pretrained(dst).eval()
    sd0, sd1 = hf.state_dict(), again.state_dict()
    assert sorted(sd0) == sorted(sd1)
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    c0, c1 = hf.config.to_dict(), json.loads((dst / "config.json").read_text())
    for k in (
        "n_layer",
        "n_head",
        "n_embd",
        "n_positions",
        "vocab_size",
        "n_inner",
        "activation_function",
        "layer_norm_epsilon",
        "tie_word_embeddings",
    ):
        assert c0[k] == c1[k], k


def test_pytorch_model_bin_with_plain_tensors_converts(tmp_path, tok400):
    hf, src = hf_folder(tmp_path, tok400)
    (src / "model.safetensors").unlink()
    torch.save(hf.state_dict(), src / "pytorch_model.bin")
    ckpt = load_checkpoint(convert_from_hf(src, tmp_path / "ours"))
    assert max_diff(ckpt.model, hf, tok400.n_vocab) < TOL


def test_pocketgpt_checkpoint_to_hf_loads_with_identical_logits(tmp_path, tok400):
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, vocab_size=tok400.n_vocab, activation="gelu_tanh")
    torch.manual_seed(5)
    ours = GPT(cfg)
    jiggle(ours, 6)
    out = convert_to_hf(save_ours(ours.eval(), tok400, tmp_path / "run"), tmp_path / "hf")  # a run folder: LATEST
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok(TEXTS[0] + " " + TEXTS[3])["input_ids"]])
    assert ids[0].tolist() == tok400.encode(TEXTS[0] + " " + TEXTS[3])
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max().item() < TOL
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied as HF expects


# ---- bad input ------------------------------------------------------------------------------------


def expect_error(out, match, fn, *args):
    with pytest.raises(UserError, match=match):
        fn(*args, out)
    assert not out.exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "src").mkdir()
    expect_error(tmp_path / "out", "no config.json", convert_from_hf, tmp_path / "src")


def test_model_type_llama(tmp_path, tok400):
    _, src = hf_folder(tmp_path, tok400)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    expect_error(tmp_path / "out", "llama", convert_from_hf, src)


@pytest.mark.parametrize(
    "key,value",
    [
        ("scale_attn_by_inverse_layer_idx", True),
        ("scale_attn_weights", False),
        ("add_cross_attention", True),
        ("activation_function", "relu"),
    ],
)
def test_hf_variant_we_cannot_represent(tmp_path, tok400, key, value):
    _, src = hf_folder(tmp_path, tok400)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, key: value}))
    expect_error(tmp_path / "out", key, convert_from_hf, src)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, tok400):
    _, src = hf_folder(tmp_path, tok400)
    sd = load_file(str(src / "model.safetensors"))
    sd["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(16, 60)
    save_file(sd, str(src / "model.safetensors"), metadata={"format": "pt"})
    expect_error(
        tmp_path / "out", r"transformer\.h\.0\.mlp\.c_fc\.weight has shape \(16, 60\).*\(16, 64\)", convert_from_hf, src
    )


def test_missing_tokenizer_names_files(tmp_path, tok400):
    _, src = hf_folder(tmp_path, tok400)
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        (src / f).unlink()
    expect_error(tmp_path / "out", "vocab.json.*merges.txt.*tokenizer.json", convert_from_hf, src)


def test_malicious_pickle_is_refused_and_never_run(tmp_path, tok400):
    _, src = hf_folder(tmp_path, tok400)
    (src / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"transformer.wte.weight": torch.zeros(2), "x": Evil()}, src / "pytorch_model.bin")
    assert not marker.exists()
    expect_error(tmp_path / "out", "refusing .*pytorch_model.bin", convert_from_hf, src)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(pos_encoding="rope"), "pos_encoding='rope'"),
        (dict(pos_encoding="sinusoidal"), "pos_encoding='sinusoidal'"),
        (dict(tie_embeddings=False), "tie_embeddings=False"),
        (dict(activation="relu"), "activation='relu'"),
        (dict(activation="relu2"), "activation='relu2'"),
    ],
)
def test_export_refuses_variants_gpt2_lacks(tmp_path, tok400, change, match):
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tok400.n_vocab, **change)
    expect_error(tmp_path / "out", match, convert_to_hf, save_ours(GPT(cfg), tok400, tmp_path / "run"))


def test_export_refuses_char_tokenizer(tmp_path, corpus_text):
    tok = Tokenizer.train([corpus_text], None, kind="char")
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tok.n_vocab)
    expect_error(tmp_path / "out", "char tokenizer", convert_to_hf, save_ours(GPT(cfg), tok, tmp_path / "run"))


def test_out_exists_and_not_empty(tmp_path, tok400):
    _, src = hf_folder(tmp_path, tok400)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        convert_from_hf(src, out)
    ckpt = convert_from_hf(src, tmp_path / "ckpt")
    with pytest.raises(UserError, match="not empty"):
        convert_to_hf(ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (convert_to_hf(ckpt, empty) / "tokenizer.json").is_file()  # an empty folder is fine
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


@pytest.mark.parametrize("repo", ["gpt2", "openai-community/gpt2"])
def test_offline_hub_id_fails_fast(tmp_path, monkeypatch, repo):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    expect_error(tmp_path / "out", f"could not download '{repo}'.*offline; pass a local folder", convert_from_hf, repo)
    assert time.perf_counter() - t < 5


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_files, "_hub_reachable", lambda endpoint, timeout=4.0: False)
    expect_error(tmp_path / "out", "could not download 'gpt2'.*offline", convert_from_hf, "gpt2")


def test_not_a_folder_nor_hub_id(tmp_path):
    expect_error(tmp_path / "out", "no such folder", convert_from_hf, str(tmp_path / "missing" / "x" / "y"))
