"""explain: the numbers are the math on every model kind (learned / sinusoidal / RoPE, LoRA, converted GPT-2, int8):
attention rows sum to 1 and are exactly 0 above the diagonal, probabilities are softmax(logits) of the model's own
forward, the converted GPT-2 shows what transformers computes; token_report is small JSON; the folder is atomic."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pocketgpt.checkpoint import load_checkpoint, save_checkpoint
from pocketgpt.config import LoRAConfig, ModelConfig
from pocketgpt.errors import UserError
from pocketgpt.explain import (
    JSON_NAME,
    explain_prompt,
    explain_tokens,
    label,
    prompt_ids,
    token_of,
    token_report,
    write_explanation,
)
from pocketgpt.model import GPT
from pocketgpt.model.lora import apply_lora
from pocketgpt.model.quant import quantize_model

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = "the model reads tokens 中文 🙂"


def tiny(tokenizer, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tokenizer.n_vocab, **kw)
    return GPT(cfg).eval()


def assert_the_math(model: GPT, exp, ids: list[int]) -> None:
    """Attention rows are a causal softmax; probabilities are softmax(logits) of model(ids)."""
    T = len(ids)
    w = torch.from_numpy(exp.attention)  # (L, H, T, T)
    assert w.shape == (len(exp.layers), len(exp.heads), T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-5)
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (w[..., above] == 0).all()
    torch.testing.assert_close(
        torch.from_numpy(exp.head_mean).sum(-1), torch.ones(len(exp.layers), T), atol=1e-5, rtol=0
    )
    with torch.no_grad():
        probs = model(torch.tensor([ids]))[0][0].double().softmax(-1)  # (T, V): the model's plain forward
    for p in exp.positions:
        want = probs[p.pos].topk(exp.top_k)
        assert [c.id for c in p.top] == want.indices.tolist()
        assert [c.prob for c in p.top] == pytest.approx(want.values.tolist(), abs=1e-5)
        if p.pos + 1 < T:
            assert p.next.id == ids[p.pos + 1]
            assert p.next.prob == pytest.approx(probs[p.pos, ids[p.pos + 1]].item(), abs=1e-5)
            assert p.next_rank == int((probs[p.pos] > probs[p.pos, ids[p.pos + 1]]).sum()) + 1
        else:
            assert p.next is None
    assert [t.id for t in exp.tokens] == ids


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_every_positional_kind(tiny_tokenizer, pos):
    model = tiny(tiny_tokenizer, pos_encoding=pos)
    ids = [tiny_tokenizer.eot_id] + tiny_tokenizer.encode(TEXT)
    exp = explain_tokens(model, tiny_tokenizer, ids, top_k=4)
    assert_the_math(model, exp, ids)
    assert exp.model["pos_encoding"] == pos and not exp.model["lora"] and not exp.model["int8"]


def test_a_lora_model_shows_its_adapter(tiny_tokenizer):
    model = tiny(tiny_tokenizer)
    base = explain_tokens(model, tiny_tokenizer, tiny_tokenizer.encode(TEXT))
    apply_lora(model, LoRAConfig(rank=2, targets="attn,mlp"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.5)  # a trained adapter, not the zero start
    ids = tiny_tokenizer.encode(TEXT)
    exp = explain_tokens(model.eval(), tiny_tokenizer, ids)
    assert_the_math(model, exp, ids)
    assert exp.model["lora"]
    assert abs(exp.attention - base.attention).max() > 1e-3  # the adapter changes attention


def test_an_int8_model(tiny_tokenizer):
    model = tiny(tiny_tokenizer, pos_encoding="rope")
    q = copy.deepcopy(model)
    quantize_model(q)
    ids = [tiny_tokenizer.eot_id] + tiny_tokenizer.encode(TEXT)
    exp = explain_tokens(q, tiny_tokenizer, ids, layers=[-1], heads=[1])
    assert_the_math(q, exp, ids)
    assert exp.model["int8"] and exp.layers == [1] and exp.heads == [1]
    close = explain_tokens(model, tiny_tokenizer, ids, layers=[-1], heads=[1])
    assert abs(exp.attention - close.attention).max() < 0.02  # int8 is near its float model


def test_a_converted_gpt2_shows_what_transformers_computes(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    from pocketgpt.interop import convert_from_hf
    from pocketgpt.interop.hf_tokenizer import save_hf_tokenizer

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=64, vocab_size=tiny_tokenizer.n_vocab, bos_token_id=None
    )
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    hf.set_attn_implementation("eager")
    hf.eval()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, safe_serialization=True)
    save_hf_tokenizer(tiny_tokenizer, folder, model_max_length=64)
    ckpt = load_checkpoint(convert_from_hf(folder, tmp_path / "ours"))

    exp = explain_prompt(ckpt, TEXT, top_k=3)
    ids = tiny_tokenizer.encode(TEXT)
    assert exp.source["bos"] is False and [t.id for t in exp.tokens] == ids  # converted: no <|endoftext|> first
    assert_the_math(ckpt.model, exp, ids)
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    theirs = torch.stack([a[0] for a in out.attentions]).numpy()  # (L, H, T, T)
    assert abs(exp.attention - theirs).max() < 1e-5
    probs = out.logits[0].double().softmax(-1)
    assert [c.prob for c in exp.positions[2].top] == pytest.approx(probs[2].topk(3).values.tolist(), abs=1e-5)


def test_prompts_are_framed_as_generate_frames_them(tmp_path, tiny_tokenizer):
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "run", "ckpt-0000001", tiny(tiny_tokenizer), tiny_tokenizer))
    eot = tiny_tokenizer.eot_id
    assert prompt_ids(ckpt, "hi") == [eot] + tiny_tokenizer.encode("hi")  # pocketgpt-trained: bos by default
    assert prompt_ids(ckpt, "hi", bos=False) == tiny_tokenizer.encode("hi")
    exp = explain_prompt(ckpt, "hi", bos=False)
    assert exp.source == {"checkpoint": str(ckpt.path), "prompt": "hi", "bos": False}
    with pytest.raises(UserError, match="prompt is empty"):
        explain_prompt(ckpt, "")
    with pytest.raises(UserError, match="at most 64"):
        explain_prompt(ckpt, "x " * 100)
    with pytest.raises(UserError, match="no layer 2: the model has 2 layers"):
        explain_prompt(ckpt, "hi", layers=[2])
    with pytest.raises(UserError, match="no head -3"):
        explain_prompt(ckpt, "hi", heads=[-3])
    with pytest.raises(UserError, match="top_k"):
        explain_prompt(ckpt, "hi", top_k=0)


def test_pieces_ids_and_bytes(tiny_tokenizer):
    ids = tiny_tokenizer.encode("中")
    toks = [token_of(tiny_tokenizer, i) for i in ids]
    assert b"".join(t.bytes for t in toks) == "中".encode()
    eot = token_of(tiny_tokenizer, tiny_tokenizer.eot_id)
    assert eot.special and eot.bytes == b"" and eot.text == "<|endoftext|>" and label(eot, 16) == "<|endoftext|>"
    if len(toks) > 1:  # byte-level BPE split the character: each piece says which bytes it holds
        assert label(toks[0]).startswith('"\\x')
    assert label(token_of(tiny_tokenizer, tiny_tokenizer.encode("\n")[0])) == '"\\n"'


def test_token_report_is_small_json_from_the_last_layer(tiny_tokenizer):
    model = tiny(tiny_tokenizer)
    ids = [tiny_tokenizer.eot_id] + tiny_tokenizer.encode(TEXT)
    r = json.loads(json.dumps(token_report(model, tiny_tokenizer, ids, top_k=2, n_attended=3)))
    assert "last layer" in r["attends"]
    assert [t["id"] for t in r["tokens"]] == ids
    exp = explain_tokens(model, tiny_tokenizer, ids, top_k=2)
    last = exp.head_mean[-1]
    for p, e in zip(r["positions"], exp.positions):
        assert [c["id"] for c in p["top"]] == [c.id for c in e.top]
        assert len(p["attends"]) == min(3, p["pos"] + 1)
        assert all(a["pos"] <= p["pos"] for a in p["attends"])  # only earlier positions (and itself)
        weights = [a["weight"] for a in p["attends"]]
        assert weights == sorted(weights, reverse=True)
        assert weights[0] == pytest.approx(last[p["pos"], : p["pos"] + 1].max(), abs=1e-6)
    assert r["positions"][-1]["next"] is None and r["positions"][0]["next"]["id"] == ids[1]


def test_the_folder_holds_every_number_and_is_written_at_once(tmp_path, tiny_tokenizer, monkeypatch):
    model = tiny(tiny_tokenizer)
    ids = [tiny_tokenizer.eot_id] + tiny_tokenizer.encode("the model")
    exp = explain_tokens(model, tiny_tokenizer, ids, heads=[0])
    out = tmp_path / "explained"
    paths = write_explanation(exp, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert {p.name for p in paths} == {JSON_NAME, "attention-layer-0.png", "attention-layer-1.png", "next-token.png"}
    for p in paths[1:]:
        assert p.read_bytes()[:8] == PNG
    d = json.loads((out / JSON_NAME).read_text())
    assert d["format"] == "pocketgpt-explain" and d["attention"]["heads"] == [0]
    w = torch.tensor(d["attention"]["weights"], dtype=torch.float64)
    assert w.shape == (2, 1, len(ids), len(ids))
    torch.testing.assert_close(w, torch.from_numpy(exp.attention).double(), rtol=0, atol=1e-8)
    assert d["positions"][1]["next"]["prob"] == exp.positions[1].next.prob

    import pocketgpt.explain as ex

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "plot_next_token", broken)
    with pytest.raises(RuntimeError):
        write_explanation(exp, tmp_path / "half")
    assert not (tmp_path / "half").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".half")]
    with pytest.raises(RuntimeError):
        write_explanation(exp, out)  # an earlier explain folder stays as it was
    assert (out / JSON_NAME).exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier explain folder"):
        write_explanation(exp, tmp_path / "other")


def test_a_classifier_is_refused(tiny_tokenizer):
    from pocketgpt.model.classifier import GPTClassifier

    clf = GPTClassifier(tiny(tiny_tokenizer).config, 2)
    with pytest.raises(UserError, match="classifier"):
        explain_tokens(clf, tiny_tokenizer, [1, 2, 3])
