"""docs/article-mistakes.md: each mistake that introductory GPT articles make, checked in code.

Every test here would fail if the article's claim were right (or if pocketgpt did what the article says). Tiny sizes,
random weights, nothing downloaded, nothing read from ../shared.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig, SampleConfig, model_preset
from pocketgpt.generate.engine import Engine
from pocketgpt.model import GPT
from pocketgpt.model.gpt import ACTIVATIONS, CausalSelfAttention
from pocketgpt.model.positional import sinusoidal_table

V, C, T = 50, 32, 8


def tiny_gpt(n_layer: int = 2, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=n_layer, n_head=2, n_embd=C, block_size=16, vocab_size=V, **kw)).eval()


def ids(*tokens: int) -> torch.Tensor:
    return torch.tensor([tokens])


# 1) "GPT uses an RNN after attention"
def test_no_rnn_the_block_is_attention_then_a_position_wise_mlp():
    model = tiny_gpt()
    assert not any(isinstance(m, nn.RNNBase) for m in model.modules())
    assert [name for name, _ in model.transformer.h[0].named_children()] == ["ln_1", "attn", "ln_2", "mlp"]
    mlp, x = model.transformer.h[0].mlp, torch.randn(2, T, C)
    one_at_a_time = torch.cat([mlp(x[:, t : t + 1]) for t in range(T)], dim=1)  # each position on its own
    torch.testing.assert_close(mlp(x), one_at_a_time)  # no state carried from position to position
    logits, _ = model(torch.randint(V, (3, T)))
    assert logits.shape == (3, T, V)  # all positions in one parallel pass


# 2) "GPT uses Word2Vec embeddings"
def test_embeddings_are_a_random_table_trained_with_the_model():
    a, b = tiny_gpt(seed=0), tiny_gpt(seed=1)
    wte = a.transformer.wte
    assert isinstance(wte, nn.Embedding) and wte.weight.requires_grad
    assert abs(wte.weight.std().item() - 0.02) < 0.002  # normal(0, 0.02): random, nothing imported
    assert not torch.equal(wte.weight, b.transformer.wte.weight)  # a new seed, a new table
    assert a.lm_head.weight is wte.weight  # tied: the same matrix is the output head
    x = ids(3, 7, 7, 1, 4)
    _, loss = a(x, ids(7, 7, 1, 4, 9))
    loss.backward()  # the next-token loss trains the table, like every other weight
    used = wte.weight.grad[x[0]].abs().sum(dim=1)
    assert (used > 0).all()


# 3) positional encoding added to the attention output
def test_positions_are_added_to_the_token_embeddings_before_the_first_block():
    model = tiny_gpt()
    x, seen = ids(5, 1, 4, 1, 5, 9), {}

    def keep_input(module, args):
        seen["in"] = args[0]

    model.transformer.h[0].register_forward_pre_hook(keep_input)
    model(x)
    tr = model.transformer
    torch.testing.assert_close(seen["in"], tr.wte(x) + tr.wpe.weight[: x.size(1)])


def test_position_added_after_attention_leaves_the_attention_pattern_blind_to_order():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(C, 2, batch_first=True).eval()
    x, pe = torch.randn(1, T, C), torch.randn(1, T, C)
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])

    def weights(h):
        return attn(h, h, h, need_weights=True)[1][0]  # (T, T), averaged over heads

    # the article's order: attention on the bare embeddings, PE added afterwards -> weights just move with the tokens
    torch.testing.assert_close(weights(x[:, perm]), weights(x)[perm][:, perm])
    # pocketgpt's order: PE first -> who attends to whom depends on where the tokens are
    assert not torch.allclose(weights(x[:, perm] + pe), weights(x + pe)[perm][:, perm], atol=1e-3)


# 4) PE = sin(...) with no cosine half
def _shift_residual(table: torch.Tensor, k: int) -> float:
    """How far PE[p + k] is from a linear map of PE[p] (least squares over p): 0 for sin/cos pairs."""
    a, b = table[:-k].double(), table[k:].double()
    m = torch.linalg.lstsq(a, b).solution
    return ((a @ m - b).norm() / b.norm()).item()


def test_sinusoidal_table_has_a_sin_and_a_cos_per_frequency():
    n, d = 64, 16
    table = sinusoidal_table(n, d)
    pos, two_i = torch.arange(n)[:, None].double(), torch.arange(0, d, 2)[None].double()
    angle = pos / 10000 ** (two_i / d)
    torch.testing.assert_close(table[:, 0::2], angle.sin().float())
    torch.testing.assert_close(table[:, 1::2], angle.cos().float())
    torch.testing.assert_close(table[:, 0::2] ** 2 + table[:, 1::2] ** 2, torch.ones(n, d // 2))
    sin_only = torch.sin(pos / 10000 ** (torch.arange(d)[None].double() / d))  # the article's table
    assert sin_only[0].abs().max() == 0  # position 0 gets no signal at all
    assert _shift_residual(table, 3) < 1e-6  # with cos: PE[p + 3] = PE[p] @ (rotation per frequency)
    assert _shift_residual(sin_only, 3) > 1e-3  # without: no fixed linear map moves a position by 3


# 5) GELU(x) = x * sigmoid(1 + x * tanh(x))
def wrong_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1 + x * torch.tanh(x))


def test_the_articles_gelu_is_off_by_about_2_9_at_minus_3():
    x = torch.tensor(-3.0)
    gelu = ACTIVATIONS["gelu"]()
    assert abs(gelu(x).item() - (-0.00405)) < 1e-4
    assert abs(wrong_gelu(x).item() - gelu(x).item()) > 2.8  # -2.945 vs -0.004
    xs = torch.linspace(-6, 6, 1201)
    torch.testing.assert_close(gelu(xs), 0.5 * xs * (1 + torch.erf(xs / math.sqrt(2))))
    tanh_form = 0.5 * xs * (1 + torch.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs**3)))
    torch.testing.assert_close(ACTIVATIONS["gelu_tanh"]()(xs), tanh_form)
    assert (gelu(xs) - tanh_form).abs().max() < 5e-4


# 6) Attention = softmax(Q K^T / sqrt(d_k)) W^V
def test_attention_mixes_values_x_wv_not_the_weight_matrix():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=C, block_size=16, vocab_size=V)
    attn, x = CausalSelfAttention(cfg, 0).eval(), torch.randn(2, T, C)
    wq, wk, wv = attn.c_attn.weight.split(C)  # nn.Linear stores (out, in)
    bq, bk, bv = attn.c_attn.bias.split(C)
    q, k, v = x @ wq.T + bq, x @ wk.T + bk, x @ wv.T + bv  # V = x W^V: one value vector per token
    scores = (q @ k.transpose(1, 2)) / math.sqrt(C)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(attn(x, None), attn.c_proj(scores.softmax(-1) @ v), atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError):
        scores.softmax(-1) @ wv  # the article's formula: (T, T) @ (C, C) does not even multiply for T != C


# 7) nn.Transformer(...) as a GPT
def test_nn_transformer_is_encoder_decoder_and_needs_a_target():
    t = nn.Transformer(16, 2, 1, 1, 32, 0.0, batch_first=True)
    assert all(hasattr(layer, "multihead_attn") for layer in t.decoder.layers)  # cross-attention to an encoder
    with pytest.raises(TypeError, match="tgt"):
        t(torch.randn(1, 5, 16))  # the article's `forward(src)`
    assert not any("multihead_attn" in name or "encoder" in name for name, _ in tiny_gpt().named_modules())


def test_nn_transformer_device_passed_positionally_lands_in_a_layer_count():
    with pytest.raises(TypeError):
        nn.Transformer(
            16, 2, 1, "cpu", batch_first=True
        )  # (d_model, nhead, num_encoder_layers, num_decoder_layers=...)
    silent = nn.Transformer(16, 2, 1, 0, batch_first=True)  # device index 0 ("cuda:0") becomes num_decoder_layers=0
    assert len(silent.decoder.layers) == 0 and len(silent.encoder.layers) == 1
    assert nn.TransformerEncoderLayer(16, 2).self_attn.batch_first is False  # (T, B, C) unless batch_first=True


def test_nn_transformer_without_a_mask_lets_earlier_positions_see_the_future():
    torch.manual_seed(0)
    t = nn.Transformer(16, 2, 1, 1, 32, 0.0, batch_first=True).eval()
    src, tgt = torch.randn(1, 5, 16), torch.randn(1, 6, 16)
    changed = tgt.clone()
    changed[:, -1] = torch.randn(16)  # change only the LAST target position
    assert not torch.allclose(t(src, tgt)[:, 0], t(src, changed)[:, 0], atol=1e-4)  # position 0 saw it
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(t(src, tgt, tgt_mask=mask)[:, :-1], t(src, changed, tgt_mask=mask)[:, :-1])
    gpt, x = tiny_gpt(), ids(1, 2, 3, 4, 5, 6)
    y = x.clone()
    y[0, -1] = 7
    torch.testing.assert_close(gpt(x)[0][:, :-1], gpt(y)[0][:, :-1])  # pocketgpt: causal by construction


def test_nn_transformer_encoder_with_a_causal_mask_is_a_decoder_only_stack():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 64, 0.0, "gelu", batch_first=True, norm_first=True)
    stack = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False).eval()
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, -1] = torch.randn(16)  # change only the last position
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(stack(x, mask, is_causal=True)[:, :-1], stack(changed, mask, is_causal=True)[:, :-1])
    assert not torch.allclose(stack(x)[:, 0], stack(changed)[:, 0], atol=1e-4)  # the same stack without the mask


# 8) no positional encoding at all
def test_without_positions_attention_cannot_tell_word_order():
    torch.manual_seed(0)
    emb = nn.Embedding(V, C)
    layer = nn.TransformerEncoderLayer(C, 2, 64, 0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()  # the article's model: no PE
    x, perm = ids(11, 12, 13, 14, 15), torch.tensor([2, 1, 0, 3, 4])
    out = encoder(emb(x))
    torch.testing.assert_close(encoder(emb(x[:, perm])), out[:, perm])  # permutation-equivariant: a bag of words

    dog_bites_man, man_bites_dog = ids(11, 12, 13, 20), ids(13, 12, 11, 20)
    nope = tiny_gpt(n_layer=1)
    with torch.no_grad():
        nope.transformer.wpe.weight.zero_()  # pocketgpt's GPT with the position table removed
    torch.testing.assert_close(nope(dog_bites_man)[0][:, -1], nope(man_bites_dog)[0][:, -1])  # same prediction
    gpt = tiny_gpt(n_layer=1)  # with its (random, learnable) position table
    assert not torch.allclose(gpt(dog_bites_man)[0][:, -1], gpt(man_bites_dog)[0][:, -1], atol=1e-4)


# 9) a Keras "GPT" with no attention (Embedding -> Dense -> Dense(softmax))
def test_a_model_without_attention_ignores_every_earlier_token():
    torch.manual_seed(0)
    no_attention = nn.Sequential(nn.Embedding(V, C), nn.Linear(C, C), nn.ReLU(), nn.Linear(C, V))
    a, b = ids(1, 2, 3, 4), ids(9, 8, 7, 4)  # same last token, different context
    torch.testing.assert_close(no_attention(a)[:, -1], no_attention(b)[:, -1])  # a bigram model
    gpt = tiny_gpt()
    assert not torch.allclose(gpt(a)[0][:, -1], gpt(b)[0][:, -1], atol=1e-4)  # GPT reads the context


# 10) generate(max_length=5) "generates 5 tokens"
def test_pocketgpt_max_new_tokens_counts_only_new_tokens():
    prompt = [1, 2, 3, 4]
    (done,) = Engine(tiny_gpt()).generate([prompt], SampleConfig(max_new_tokens=5, temperature=0))[0]
    assert len(done.tokens) == 5 and done.finish_reason == "length"


def test_hugging_face_max_length_counts_the_prompt():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=None
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    prompt = torch.tensor([[1, 2, 3, 4]])
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    assert hf.generate(prompt, max_length=5, **kw).shape[1] == 5  # prompt 4 + ONE new token
    assert hf.generate(prompt, max_new_tokens=5, **kw).shape[1] == 9  # prompt 4 + 5 new tokens


# 11) "GPT is multimodal" / 13) "GPT does image and speech recognition"
def test_gpt_reads_token_ids_and_outputs_next_token_scores_only():
    gpt = tiny_gpt()
    with pytest.raises((ValueError, RuntimeError)):
        gpt(torch.randn(1, 3, 8, 8))  # an image tensor is not a (B, T) batch of token ids
    with pytest.raises(RuntimeError):
        gpt(torch.randn(1, 8))  # nor are float features (audio frames): the first layer is a table lookup
    logits, _ = gpt(ids(1, 2, 3))
    assert logits.shape[-1] == gpt.config.vocab_size  # one score per vocabulary entry: the next token


# 12) "GPT-2 was trained on 8,192 text blocks"
def test_gpt2_preset_has_a_1024_token_context_and_50257_tokens():
    cfg = model_preset("gpt2")
    assert (cfg.block_size, cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head) == (1024, 50257, 12, 768, 12)


# 14) softmax as the last layer before CrossEntropyLoss
def test_softmax_then_cross_entropy_is_a_different_wrong_loss():
    torch.manual_seed(0)
    z, y = torch.randn(16, V, requires_grad=True), torch.randint(V, (16,))
    right, wrong = F.cross_entropy(z, y), F.cross_entropy(z.softmax(-1), y)  # CE takes logits; it softmaxes itself
    assert abs(right.item() - wrong.item()) > 0.1
    g_right, g_wrong = (torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in (right, wrong))
    assert g_wrong.norm() < 0.2 * g_right.norm()  # the second softmax squashes the gradient
    perfect = 30.0 * F.one_hot(y, V).float()  # a model that is sure and right
    assert F.cross_entropy(perfect, y).item() < 1e-6
    floor = math.log(V - 1 + math.e) - 1  # -log softmax(one-hot)[y]: the lowest the wrong loss can go
    assert F.cross_entropy(perfect.softmax(-1), y).item() == pytest.approx(floor, rel=1e-4)
    assert math.log(50257 - 1 + math.e) - 1 > 9.8  # with GPT-2's vocabulary, never below 9.8 nats
