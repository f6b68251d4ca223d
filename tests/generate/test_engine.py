"""The engine: batches equal single prompts, samples share a prefill, every decoding option, stop strings, streaming."""

import copy

import pytest
import torch
import torch.nn as nn

from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.engine import Engine, bucket_length
from pocketgpt.generate.text import StopMatcher, TextGenerator
from pocketgpt.model import GPT
from pocketgpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def byte_tok():
    """Character tokenizer on ASCII text: ids 0..255 are the raw bytes."""
    return Tokenizer.train(["abc"], vocab_size=None, kind="char")


class Scripted(nn.Module):
    """A mock model that emits a fixed script of token ids, one per forward, whatever the input."""

    def __init__(self, script, vocab_size, block_size=64):
        super().__init__()
        self.config = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=block_size, vocab_size=vocab_size)
        self.script, self.calls = list(script), 0
        self.w = nn.Parameter(torch.zeros(1))

    def hidden(self, idx, kv_cache=None, pos=None):
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        step = min(self.calls, len(self.script) - 1)
        self.calls += 1
        return torch.full((idx.shape[0], idx.shape[1], 1), float(step))

    def lm_head(self, h):
        step = int(h.reshape(-1)[0])
        out = torch.full((*h.shape[:-1], self.config.vocab_size), -10.0)
        out[..., self.script[step]] = 10.0
        return out


def scripted_text(tok, text: str, vocab_size: int):
    return Scripted(list(text.encode("utf-8")) + [tok.eot_id], vocab_size)


def test_batch_rows_equal_single_prompts(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg)
    eng = Engine(model)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]
    _, batch_logits = eng.prefill(prompts)
    for i, p in enumerate(prompts):
        _, alone = eng.prefill([p])
        assert (batch_logits[i] - alone[0]).abs().max() < 1e-5
    greedy = SampleConfig(max_new_tokens=40, temperature=0)
    batch = eng.generate(prompts, greedy)
    for i, p in enumerate(prompts):
        assert batch[i][0].tokens == eng.generate([p], greedy)[0][0].tokens


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_padded_batch_logits_match_full_forward(pos, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tiny_tokenizer.n_vocab, pos_encoding=pos
    )
    model = GPT(cfg).eval()
    eng = Engine(model)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    cache, logits = eng.prefill(prompts)
    nxt = torch.tensor([3, 4])
    step = eng.decode(cache, nxt, torch.tensor([6, 2]))
    for i, p in enumerate(prompts):
        full, _ = model(torch.tensor([p + [int(nxt[i])]]))
        assert (full[0, -2] - logits[i]).abs().max() < 1e-5
        assert (full[0, -1] - step[i]).abs().max() < 1e-5


def test_samples_share_a_prefill_and_repeat_with_a_seed(tiny_model):
    eng = Engine(tiny_model)
    s = SampleConfig(max_new_tokens=15, temperature=1.0, seed=3, num_samples=3)
    a = eng.generate([[1, 2, 3]], s)[0]
    b = eng.generate([[1, 2, 3]], s)[0]
    assert [c.tokens for c in a] == [c.tokens for c in b]
    assert len({tuple(c.tokens) for c in a}) == 3  # three different samples
    assert (
        eng.generate([[1, 2, 3]], SampleConfig(max_new_tokens=15, temperature=1.0, seed=3))[0][0].tokens == a[0].tokens
    )


def test_logprobs_are_the_models(tiny_model):
    eng = Engine(tiny_model)
    c = eng.generate(
        [[1, 2, 3]], SampleConfig(max_new_tokens=5, temperature=1.0, seed=0, logprobs=True, top_logprobs=3)
    )[0][0]
    ctx = [1, 2, 3] + c.tokens
    with torch.no_grad():
        logits, _ = tiny_model(torch.tensor([ctx]))
    logp = logits[0].log_softmax(-1)
    for t, tok in enumerate(c.tokens):
        assert c.logprobs[t] == pytest.approx(logp[2 + t, tok].item(), abs=1e-5)
        best = logp[2 + t].topk(3)
        assert [i for i, _ in c.top_logprobs[t]] == best.indices.tolist()


def test_logit_bias_bans_and_forces(tiny_model):
    eng = Engine(tiny_model)
    greedy = eng.generate([[1]], SampleConfig(max_new_tokens=10, temperature=0))[0][0].tokens
    banned = eng.generate([[1]], SampleConfig(max_new_tokens=10, temperature=0, logit_bias={greedy[0]: -100.0}))[0][
        0
    ].tokens
    assert greedy[0] not in banned
    forced = eng.generate([[1]], SampleConfig(max_new_tokens=5, temperature=1.0, seed=0, logit_bias={42: 100.0}))
    assert forced[0][0].tokens == [42] * 5


def test_penalty_functions_follow_their_definitions():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    assert S.repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, 0.5]]
    counts = torch.tensor([[3.0, 0.0, 1.0, 0.0]])
    out = S.frequency_presence_penalty(logits, counts, frequency=0.5, presence=1.0)
    assert out.tolist() == [[2.0 - 1.5 - 1.0, -2.0, 1.0 - 0.5 - 1.0, 0.5]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(S.min_p_filter(probs.log(), 0.35))[0].tolist()
    assert kept == [True, True, False, False]  # 0.35 * 0.5 = 0.175


def test_repetition_and_frequency_penalties_reduce_repeats(tiny_model):
    eng = Engine(tiny_model)
    base = eng.generate([[1]], SampleConfig(max_new_tokens=40, temperature=0))[0][0].tokens
    pen = eng.generate([[1]], SampleConfig(max_new_tokens=40, temperature=0, frequency_penalty=2.0))[0][0].tokens
    rep = eng.generate([[1]], SampleConfig(max_new_tokens=40, temperature=0, repetition_penalty=5.0))[0][0].tokens
    assert len(set(pen)) > len(set(base)) and len(set(rep)) > len(set(base))


def test_stop_string_across_tokens_is_never_emitted(byte_tok):
    model = scripted_text(byte_tok, "hello wor" + "ld and more", byte_tok.n_vocab)
    gen = TextGenerator(model, byte_tok)
    out = gen.complete([""], SampleConfig(max_new_tokens=50, temperature=0, stop=("world",)))[0][0]
    assert out.text == "hello " and out.finish_reason == "stop"
    model = gen.engine.model  # the engine drives its own copy of the model (the caller's is never changed)
    model.calls = 0
    pieces = list(gen.stream("", SampleConfig(max_new_tokens=50, temperature=0, stop=("world", "zz"))))
    assert "".join(pieces) == "hello "
    model.calls = 0
    full = gen.complete([""], SampleConfig(max_new_tokens=50, temperature=0))[0][0]
    assert full.text == "hello world and more" and full.finish_reason == "stop"  # ended by <|endoftext|>
    model.calls = 0
    short = gen.complete([""], SampleConfig(max_new_tokens=5, temperature=0))[0][0]
    assert short.text == "hello" and short.finish_reason == "length"


def test_stop_matcher_holds_back_only_real_prefixes():
    m = StopMatcher(("END", "\n\n"))
    assert m.hold(b"text E") == 1 and m.hold(b"text EN") == 2 and m.hold(b"text X") == 0
    assert m.hold(b"a\n") == 1
    assert m.find(b"abcEND", 0) == 3 and m.find(b"abc", 0) == -1


@pytest.mark.parametrize("text", ["中文测试，好的。", "emoji 🙂👍🏽 and 👨‍👩‍👧", "mixé ü 日本"])
def test_streaming_yields_only_whole_characters(byte_tok, text):
    model = scripted_text(byte_tok, text, byte_tok.n_vocab)  # one byte per token
    pieces = list(TextGenerator(model, byte_tok).stream("", SampleConfig(max_new_tokens=200, temperature=0)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 1  # it streamed, not one final blob


def test_long_prompt_is_cropped_with_a_warning(tiny_model, tiny_tokenizer):
    gen = TextGenerator(tiny_model, tiny_tokenizer)
    with pytest.warns(UserWarning, match="keeping the last 63"):
        gen.complete(["word " * 200], SampleConfig(max_new_tokens=3, temperature=0))


def test_generation_past_the_context_slides_in_batches(tiny_model):
    eng = Engine(tiny_model)
    out = eng.generate([[1, 2], [3, 4, 5, 6, 7]], SampleConfig(max_new_tokens=150, temperature=1.0, seed=1))
    assert [len(r[0].tokens) for r in out] == [150, 150]


def test_bf16_inference_runs_and_stays_close(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg).eval()
    x = [[1, 2, 3, 4]]
    _, f32 = Engine(model).prefill(x)
    _, b16 = Engine(copy.deepcopy(model), dtype=torch.bfloat16).prefill(x)
    assert (f32 - b16).abs().max() < 0.1


def test_max_new_tokens_zero_and_empty_prompt(tiny_model):
    eng = Engine(tiny_model)
    assert eng.generate([[1]], SampleConfig(max_new_tokens=0))[0][0].tokens == []
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], SampleConfig(max_new_tokens=3))


def test_bucket_lengths_are_few_and_close():
    got = {n: bucket_length(n) for n in range(1, 1025)}
    assert all(n <= b <= max(n + 15, n * 1.25) for n, b in got.items())
    assert len(set(got.values())) <= 24
    assert bucket_length(16) == 16 and bucket_length(17) == 32 and bucket_length(100) == 112


def test_a_bucketed_prefill_gives_the_same_next_token_logits(tiny_model):
    eng = Engine(tiny_model)
    eng.bucket_prefill = True  # on by default only for CPU bf16 / fp16
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    cache, lg = eng.prefill(prompts, bucket=True)
    _, want = eng.prefill(prompts)
    assert cache.pos == bucket_length(5) and torch.allclose(lg, want, atol=1e-5)
    eng.bucket_prefill = False
    assert eng.prefill(prompts, bucket=True)[0].pos == 5


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with no KV cache, no batch and no scheduler: a full forward over the window every token. The
    window rule is the one every decoder here follows: the prompt keeps its last block_size - 1 tokens; when the
    window holds block_size tokens, it restarts from the last block_size // 2."""
    bs = model.config.block_size
    ctx, start, out = list(prompt[-(bs - 1) :]), 0, []
    for _ in range(n):
        if len(ctx) - start > bs:
            start = len(ctx) - bs // 2
        with torch.no_grad():
            logits, _ = model(torch.tensor([ctx[start:]]))
        out.append(int(logits[0, -1].argmax()))
        ctx.append(out[-1])
    return out


def test_the_decode_loop_equals_a_plain_full_forward_decode(tiny_model):
    """The one decode loop (scheduler rows, KV cache, padding, per-row windows) against `reference_greedy`: a batch of
    prompts of different lengths, run past the context (block_size 64) so every row's window slides."""
    prompts = [[1, 2], list(range(3, 50)), [7] * 80]  # the last is longer than the context: cropped
    out = Engine(tiny_model).generate(prompts, SampleConfig(max_new_tokens=100, temperature=0))
    for p, rows in zip(prompts, out):
        assert rows[0].tokens == reference_greedy(tiny_model, p, 100)


def test_the_engine_never_changes_the_callers_model(tiny_cfg):
    torch.manual_seed(0)
    model = GPT(tiny_cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    eng = Engine(model, dtype=torch.bfloat16, kernels="linear")
    eng.generate([[1, 2, 3]], SampleConfig(max_new_tokens=4, temperature=0))
    assert model.training and [type(m) for m in model.modules()] == classes
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(eng.model.parameters()).dtype == torch.bfloat16 and not eng.model.training

    f32 = Engine(model, kernels="split")  # every Linear becomes a SplitGemvLinear: on the engine's copy only
    assert [type(m) for m in model.modules()] == classes
    assert any(type(m).__name__ == "SplitGemvLinear" for m in f32.model.modules())
    # same dtype: the copy shares the weights (no second copy), so the engine sees the caller's updates
    w, w2 = model.transformer.wte.weight, f32.model.transformer.wte.weight
    assert w.data_ptr() == w2.data_ptr() and w2 is not w
    with torch.no_grad():
        w.add_(1.0)
    assert torch.equal(w, w2)

    t = Engine(model, kernels="t")  # the transposed layout is the engine's own copy: the caller's stays row-major
    assert all(p.is_contiguous() for p in model.parameters()) and model.lm_head.weight is model.transformer.wte.weight
    assert not t.model.lm_head.weight.is_contiguous() and torch.equal(t.model.lm_head.weight, w)
    greedy = SampleConfig(max_new_tokens=6, temperature=0)
    assert t.generate([[1, 2, 3]], greedy) == f32.generate([[1, 2, 3]], greedy)
