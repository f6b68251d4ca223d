"""GGUF export: the file read back with gguf's own reader (tensors, shapes, metadata, tokenizer, chat template),
the quantized types within their error bounds, every refused variant with a one-line error, nothing half-written.
llama.cpp itself (loading, tokenizer ids, logits, greedy text) is in test_llamacpp.py, marked slow."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from pocketgpt.checkpoint import save_checkpoint  # noqa: E402
from pocketgpt.config import ModelConfig  # noqa: E402
from pocketgpt.errors import UserError  # noqa: E402
from pocketgpt.interop.gguf_export import CHAT_JINJA, NAMES, convert_to_gguf  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.tokenizer import Tokenizer  # noqa: E402
from pocketgpt.tokenizer.chat import render_for_completion  # noqa: E402


def jiggle(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def chat_tokenizer(corpus_text) -> Tokenizer:
    return Tokenizer.train([corpus_text], vocab_size=320).with_chat_specials()


def checkpoint(tmp_path, tokenizer, extra=None, **kw):
    cfg = ModelConfig(
        **{**dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tokenizer.n_vocab, bias=True), **kw}
    )
    torch.manual_seed(0)
    model = GPT(cfg)
    jiggle(model)
    path = tmp_path / f"ckpt-{len(list(tmp_path.glob('ckpt-*')))}"
    return save_checkpoint(path, "ckpt-0000001", model.eval(), tokenizer, extra=extra), model


def read(path):
    r = gguf.GGUFReader(str(path))

    def field(name):
        f = r.fields[name]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            return [f.contents(i) for i in range(len(f.data))]
        return f.contents()

    return r, field


@pytest.mark.parametrize("tie,bias,vocab_pad", [(True, True, 0), (False, False, 13)])
def test_round_trip_f32_tensors_and_metadata(tmp_path, chat_tokenizer, tie, bias, vocab_pad):
    ckpt, model = checkpoint(
        tmp_path, chat_tokenizer, tie_embeddings=tie, bias=bias, vocab_size=chat_tokenizer.n_vocab + vocab_pad
    )
    out = convert_to_gguf(ckpt, tmp_path / "m.gguf")
    r, field = read(out)
    cfg = model.config
    assert field("general.architecture") == "gpt2"
    assert field("gpt2.context_length") == cfg.block_size
    assert field("gpt2.embedding_length") == cfg.n_embd
    assert field("gpt2.feed_forward_length") == 4 * cfg.n_embd
    assert field("gpt2.block_count") == cfg.n_layer
    assert field("gpt2.attention.head_count") == cfg.n_head
    assert field("gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg.layer_norm_eps)

    state = model.state_dict()
    tensors = {t.name: t for t in r.tensors}
    expected = set()
    for ours, name in NAMES.items():
        for i in range(cfg.n_layer) if "{i}" in ours else [None]:
            key, name_i = ours.format(i=i), name.format(i=i)
            if key == "lm_head.weight" and tie:
                assert name_i not in tensors  # llama.cpp ties output to token_embd
                continue
            expected.add(name_i)
            t = tensors[name_i]
            want = state[key].numpy() if key in state else np.zeros(tensors[name_i].data.shape, np.float32)
            if key not in state:
                assert not bias and key.endswith(".bias")
            assert tuple(int(d) for d in t.shape) == tuple(reversed(want.shape))  # ggml dims: reversed numpy dims
            np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
    assert set(tensors) == expected

    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size  # one entry per embedding row
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    for s, i in chat_tokenizer.special_tokens.items():
        assert tokens[i] == s and types[i] == gguf.TokenType.CONTROL
    assert all(t == gguf.TokenType.UNUSED for t in types[chat_tokenizer.n_vocab :])
    assert all(t == gguf.TokenType.NORMAL for t in types[:256])
    merges = field("tokenizer.ggml.merges")
    assert len(merges) == chat_tokenizer.n_vocab - 256 - len(chat_tokenizer.special_tokens)  # one per merged token
    assert field("tokenizer.ggml.bos_token_id") == chat_tokenizer.eot_id
    assert field("tokenizer.ggml.eot_token_id") == chat_tokenizer.special_tokens["<|end|>"]
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.chat_template") == CHAT_JINJA
    assert json.loads(field("pocketgpt.config"))["n_embd"] == cfg.n_embd


def test_tokens_and_merges_rebuild_the_same_tokenizer(tmp_path, chat_tokenizer):
    """The GGUF's token strings + merges, written back as GPT-2 files, encode text to the ids pocketgpt gives."""
    ckpt, _ = checkpoint(tmp_path, chat_tokenizer)
    _, field = read(convert_to_gguf(ckpt, tmp_path / "m.gguf"))
    tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
    folder = tmp_path / "files"
    folder.mkdir()
    specials = chat_tokenizer.special_tokens
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    back = Tokenizer.from_gpt2_files(folder)
    text = "def return import class, 1234 ünïcödé 中文 🙂\n\n  spaces"
    assert back.encode(text) == chat_tokenizer.encode(text)
    assert back.special_tokens == {s: i for s, i in specials.items() if s in back.special_tokens}
    assert back.encode("<|end|>", allowed_special="all") == [specials["<|end|>"]]


def test_chat_template_renders_what_pocketgpt_renders(tmp_path, chat_tokenizer):
    """llama.cpp formats a chat with the Jinja template, then adds BOS (<|endoftext|>) and parses specials:
    the ids must be tokenizer.chat's."""
    import jinja2

    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "def return?"},
        {"role": "assistant", "content": "import class"},
        {"role": "user", "content": "print list"},
    ]
    text = jinja2.Template(CHAT_JINJA).render(messages=msgs, add_generation_prompt=True)
    ids = [chat_tokenizer.eot_id] + chat_tokenizer.encode(text, allowed_special="all")
    assert ids == render_for_completion(msgs, chat_tokenizer)


@pytest.mark.parametrize("kind,tol", [("f16", 2e-3), ("bf16", 1.6e-2), ("q8_0", 1.2e-2)])
def test_reduced_types_dequantize_within_their_error(tmp_path, tiny_tokenizer, kind, tol):
    ckpt, model = checkpoint(tmp_path, tiny_tokenizer, n_embd=64)
    r, _ = read(convert_to_gguf(ckpt, tmp_path / f"m-{kind}.gguf", dtype=kind))
    t = {t.name: t for t in r.tensors}
    qkv = t["blk.0.attn_qkv.weight"]
    assert qkv.tensor_type.name == kind.upper()
    got = gguf.quants.dequantize(qkv.data, qkv.tensor_type).reshape(192, 64)
    want = model.state_dict()["transformer.h.0.attn.c_attn.weight"].numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < err < tol  # reduced, and no more than the type's own rounding
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay float32


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(pos_encoding="rope"), "pos_encoding='rope'"),
        (dict(pos_encoding="sinusoidal"), "pos_encoding='sinusoidal'"),
        (dict(activation="relu2"), "activation='relu2'"),
        (dict(qk_norm=True), "qk_norm=True"),
    ],
)
def test_variants_gpt2_cannot_express_are_refused(tmp_path, tiny_tokenizer, kw, words):
    ckpt, _ = checkpoint(tmp_path, tiny_tokenizer, **kw)
    with pytest.raises(UserError, match="to-onnx") as e:
        convert_to_gguf(ckpt, tmp_path / "m.gguf")
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".m.gguf*"))


def test_char_tokenizer_and_bad_outputs_are_refused(tmp_path, corpus_text, tiny_tokenizer, run_cli):
    char = Tokenizer.train([corpus_text], None, kind="char")
    ckpt, _ = checkpoint(tmp_path, char)
    with pytest.raises(UserError, match="char tokenizer"):
        convert_to_gguf(ckpt, tmp_path / "m.gguf")
    good, _ = checkpoint(tmp_path, tiny_tokenizer)
    with pytest.raises(UserError, match=r"\.gguf"):
        convert_to_gguf(good, tmp_path / "m.bin")
    with pytest.raises(UserError, match="--type"):
        convert_to_gguf(good, tmp_path / "m.gguf", dtype="q4_0")
    (tmp_path / "taken.gguf").write_text("mine")
    code, _, err = run_cli("convert", "--to-gguf", good, tmp_path / "taken.gguf")
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "taken.gguf").read_text() == "mine"
    code, out, err = run_cli("convert", "--to-gguf", good, tmp_path / "cli.gguf", "--type", "f16")
    assert code == 0 and (tmp_path / "cli.gguf").is_file(), err
    code, _, err = run_cli("convert", "--to-hf", good, tmp_path / "x", "--type", "f16")
    assert code == 2 and "--type applies to --to-gguf only" in err


def test_converted_from_hugging_face_adds_no_bos(tmp_path, tiny_tokenizer):
    ckpt, model = checkpoint(tmp_path, tiny_tokenizer, extra={"converted_from": "huggingface-gpt2:gpt2"})
    _, field = read(convert_to_gguf(ckpt, tmp_path / "m.gguf"))
    assert field("tokenizer.ggml.add_bos_token") is False
    assert dataclasses.asdict(model.config)["pos_encoding"] == "learned"


def test_unmerged_lora_and_classifiers_are_refused(tmp_path, tiny_tokenizer):
    from pocketgpt.config import LoRAConfig
    from pocketgpt.interop.gguf_export import check_gguf_model
    from pocketgpt.model.classifier import GPTClassifier
    from pocketgpt.model.lora import apply_lora

    _, model = checkpoint(tmp_path, tiny_tokenizer)
    check_gguf_model(model, "plain")  # fine
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(UserError, match="pocketgpt merge"):
        check_gguf_model(model, "ckpt")
    _, base = checkpoint(tmp_path, tiny_tokenizer)
    with pytest.raises(UserError, match="classifier"):
        check_gguf_model(GPTClassifier.from_gpt(base, 3), "ckpt")
