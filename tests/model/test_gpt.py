"""The model against the formulas: shapes, init loss, causality, positional variants, attention, GELU, KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig, model_preset
from pocketgpt.errors import UserError
from pocketgpt.model import GPT, KVCache
from pocketgpt.model.positional import POSITIONAL, sinusoidal_table

VARIANTS = [dict(pos_encoding=p) for p in POSITIONAL] + [
    dict(activation="relu"),
    dict(activation="relu2"),
    dict(tie_embeddings=False),
    dict(bias=False),
    dict(activation="gelu_tanh"),
    dict(qk_norm=True),
    dict(pos_encoding="rope", qk_norm=True),
]


def cfg_with(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=300), **kw})


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_shapes_and_loss_at_init(kw):
    torch.manual_seed(0)
    cfg = cfg_with(**kw)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 40))
    targets = torch.randint(0, cfg.vocab_size, (3, 40))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 40, cfg.vocab_size)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.1  # near-uniform predictions at init
    assert model(idx)[1] is None


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_causality(kw):
    """Changing token t changes no logit before t, and does change the logit at t."""
    torch.manual_seed(0)
    model = GPT(cfg_with(**kw)).eval()
    idx = torch.randint(0, 300, (1, 30))
    t = 17
    changed = idx.clone()
    changed[0, t] = (idx[0, t] + 1) % 300
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])


def test_ignore_index_masks_targets():
    torch.manual_seed(0)
    model = GPT(cfg_with())
    idx = torch.randint(0, 300, (2, 10))
    tgt = torch.randint(0, 300, (2, 10))
    masked = tgt.clone()
    masked[:, :5] = -1
    logits, loss = model(idx, masked)
    ref = F.cross_entropy(logits[:, 5:].reshape(-1, 300), tgt[:, 5:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_sinusoidal_table_is_the_closed_form():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_is_added_to_the_input_and_has_no_parameters():
    cfg = cfg_with(pos_encoding="sinusoidal")
    model = GPT(cfg)
    assert not any("wpe" in n for n, _ in model.named_parameters())
    assert "transformer.wpe.table" not in model.state_dict()  # recomputed, not stored
    h0 = model.transformer.wte(torch.tensor([[5, 5]]))
    x = model.transformer.wpe.add_to_input(h0, torch.arange(2))
    assert torch.allclose(x[0, 1] - h0[0, 1], sinusoidal_table(64, 32)[1])


def test_rope_rotates_queries_and_keys_by_relative_position():
    """With RoPE, q·k depends only on the distance between positions."""
    cfg = cfg_with(pos_encoding="rope")
    rope = POSITIONAL["rope"](cfg)
    from pocketgpt.model.positional import apply_rotary

    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)

    def score(i, j):
        qi = apply_rotary(q, rope.rotation(torch.tensor([i])))
        kj = apply_rotary(k, rope.rotation(torch.tensor([j])))
        return (qi * kj).sum().item()

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_attention_equals_the_handwritten_formula():
    """softmax(Q K^T / sqrt(d_k)) V with a causal mask, written out by hand."""
    torch.manual_seed(0)
    cfg = cfg_with()
    model = GPT(cfg).eval()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 12, cfg.n_embd)
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim)  # (B, nh, T, T)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    expected = attn.c_proj(y)
    got = attn(x, None, None)
    assert torch.allclose(got, expected, atol=1e-5)


def test_gelu_is_the_exact_erf_formula():
    model = GPT(cfg_with(activation="gelu"))
    x = torch.linspace(-6, 6, 1001)
    expected = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    assert torch.allclose(model.transformer.h[0].mlp.act(x), expected, atol=1e-6)
    # GPT-2's tanh approximation is a different (close) function; the articles' formula mixes the two up
    tanh = GPT(cfg_with(activation="gelu_tanh")).transformer.h[0].mlp.act(x)
    approx = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(tanh, approx, atol=1e-6)
    assert (tanh - expected).abs().max() > 1e-5


def test_tied_and_untied_heads():
    tied, untied = GPT(cfg_with()), GPT(cfg_with(tie_embeddings=False))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == 300 * 32


@pytest.mark.parametrize("pos", list(POSITIONAL) + ["rope+qk_norm"])
def test_kv_cache_decoding_equals_full_forward(pos):
    torch.manual_seed(0)
    cfg = cfg_with(pos_encoding=pos.split("+")[0], qk_norm="qk_norm" in pos)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 300, (2, 40))
    full, _ = model(idx)
    cache = KVCache(cfg, batch_size=2)
    parts = [model(idx[:, :9], kv_cache=cache)[0], model(idx[:, 9:15], kv_cache=cache)[0]]  # prefill, then a chunk
    parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(15, 40)]  # one token per step
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5
    assert cache.pos == 40


def test_context_overflow_is_an_error():
    model = GPT(cfg_with())
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_gpt2_preset_has_124m_parameters():
    cfg = model_preset("gpt2")
    n = sum(p.numel() for p in GPT(cfg).parameters())  # built once: ~0.5 s
    assert n == 124_439_808  # Hugging Face's gpt2, counted the same way


@pytest.mark.parametrize(
    "bad",
    [dict(n_embd=30, n_head=4), dict(n_layer=0), dict(dropout=1.0), dict(n_embd=6, n_head=2, pos_encoding="rope")],
)
def test_bad_config_names_the_value(bad):
    with pytest.raises(UserError):
        cfg_with(**bad)


def test_dropout_acts_in_training_only():
    """Every dropout site (embeddings, each attention and MLP output) drops in train mode and none runs in eval:
    eval logits equal those of the same weights with dropout 0; in training each nn.Dropout module is called and
    changes its input, and two calls differ."""
    torch.manual_seed(0)
    model = GPT(cfg_with(dropout=0.5))
    plain = GPT(cfg_with(dropout=0.0))
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 300, (2, 16))
    sites = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert len(sites) == 1 + 2 * 2  # transformer.drop, and attn.resid_dropout + mlp.dropout in each of 2 blocks
    dropped: dict[str, bool] = {}
    for name, m in sites.items():
        m.register_forward_hook(
            lambda mod, inp, out, name=name: dropped.__setitem__(name, not torch.equal(inp[0], out))
        )
    torch.testing.assert_close(model.eval()(idx)[0], plain.eval()(idx)[0], rtol=0, atol=0)
    assert dropped == {}  # no dropout module runs in eval
    model.train()
    a, b = model(idx)[0], model(idx)[0]
    assert dropped == dict.fromkeys(sites, True)  # each site ran and dropped
    assert not torch.allclose(a, b)
