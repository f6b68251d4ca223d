"""Speculative decoding: greedy output equal to plain greedy, sampled output from plain sampling's distribution.

Every model here is a tiny random GPT the test builds (its head scaled up so the next token is clear-cut: random
GPTs at init give near-uniform logits, where float rounding between a one-token and a multi-token forward could
flip an argmax tie).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pocketgpt.checkpoint import save_checkpoint
from pocketgpt.config import ModelConfig, SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.generate import sampling as S
from pocketgpt.generate import speculative as spec
from pocketgpt.generate.engine import Engine
from pocketgpt.model import GPT, KVCache
from pocketgpt.tokenizer import Tokenizer


def make_gpt(vocab: int, *, layers: int = 2, embd: int = 32, block: int = 64, seed: int = 0, scale: float = 20.0):
    torch.manual_seed(seed)
    m = GPT(ModelConfig(n_layer=layers, n_head=2, n_embd=embd, block_size=block, vocab_size=vocab)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(scale)
    return m


@pytest.fixture(scope="module")
def engine():
    return Engine(make_gpt(50), draft=make_gpt(50, layers=1, block=32, seed=1), kernels="linear")


PROMPTS = {
    "repeats": [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2],
    "random": [7, 31, 2, 44, 9, 18, 3, 27],
    "near-limit": [(i * 7) % 50 for i in range(61)],  # 61 of 64 positions: room for 2 drafts, then the slide
    "too-long": [(i * 11) % 50 for i in range(100)],  # cropped to the last 63, as plain decoding does
}


# --- the KV cache ---------------------------------------------------------------------------------------------
def test_kv_cache_rollback_forgets_the_last_positions():
    model = make_gpt(50)
    cfg = model.config
    with torch.inference_mode():
        cache = KVCache(cfg, 1)
        model.hidden(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        model.hidden(torch.tensor([[4, 5]]), kv_cache=cache)  # two drafts, both rejected
        cache.rollback(2)
        assert cache.pos == 3
        after = model.lm_head(model.hidden(torch.tensor([[6, 7]]), kv_cache=cache))[0]
        full, _ = model(torch.tensor([[1, 2, 3, 6, 7]]))
    assert (after - full[0, -2:]).abs().max() < 1e-4
    cache.rollback(0)
    with pytest.raises(ValueError, match="roll back 6"):
        cache.rollback(6)


# --- greedy: token for token what plain greedy decoding gives -------------------------------------------------
@pytest.mark.parametrize("mode", ["ngram", "draft"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("max_new,k", [(1, 4), (7, 4), (13, 3), (90, 4), (40, 1)])
def test_greedy_equals_plain_greedy(engine, mode, prompt, max_new, k):
    p = PROMPTS[prompt]
    plain = engine.generate([p], SampleConfig(max_new_tokens=max_new, temperature=0))[0][0]
    got = engine.generate([p], SampleConfig(max_new_tokens=max_new, temperature=0, speculative=mode, draft_tokens=k))[
        0
    ][0]
    assert got.tokens == plain.tokens and got.finish_reason == plain.finish_reason == "length"
    stats = engine.spec_stats
    assert stats.mode == mode and stats.tokens == max_new and stats.accepted <= stats.drafted
    if max_new >= 40 and prompt == "repeats":
        assert stats.forwards < max_new  # it did skip model passes


@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_greedy_with_penalties_bias_and_logprobs(engine, mode):
    base = dict(
        max_new_tokens=30,
        temperature=0,
        repetition_penalty=1.4,
        frequency_penalty=0.5,
        presence_penalty=0.3,
        logit_bias={3: 2.0, 4: -50.0},
        logprobs=True,
        top_logprobs=3,
    )
    for p in (PROMPTS["repeats"], PROMPTS["random"]):
        plain = engine.generate([p], SampleConfig(**base))[0][0]
        got = engine.generate([p], SampleConfig(**base, speculative=mode))[0][0]
        assert got.tokens == plain.tokens and 4 not in got.tokens
        assert torch.allclose(torch.tensor(got.logprobs), torch.tensor(plain.logprobs), atol=1e-4)
        assert [[t for t, _ in row] for row in got.top_logprobs] == [[t for t, _ in row] for row in plain.top_logprobs]


@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_stop_tokens_should_stop_and_streaming(engine, mode):
    p = PROMPTS["random"]
    full = engine.generate([p], SampleConfig(max_new_tokens=30, temperature=0))[0][0].tokens
    stop_tok = full[6]  # the first place it appears ends the text
    cut = full.index(stop_tok)
    sc = SampleConfig(max_new_tokens=30, temperature=0, speculative=mode)
    got = engine.generate([p], sc, stop_ids=[stop_tok])[0][0]
    assert got.tokens == full[:cut] and got.finish_reason == "stop"
    assert list(engine.stream(p, sc, stop_ids=[stop_tok])) == full[:cut]
    asked = []

    def should_stop(row, tokens):
        asked.append(len(tokens))
        return len(tokens) == 9

    got = engine.generate([p], sc, should_stop=should_stop)[0][0]
    assert got.tokens == full[:9] and got.finish_reason == "stop" and asked == list(range(1, 10))
    assert engine.generate([p], SampleConfig(max_new_tokens=0, speculative=mode))[0][0].tokens == []


def test_several_prompts_and_samples_run_row_by_row(engine):
    prompts = [PROMPTS["repeats"], PROMPTS["random"]]
    sc = SampleConfig(max_new_tokens=12, temperature=0)
    plain = engine.generate(prompts, sc)
    got = engine.generate(prompts, SampleConfig(max_new_tokens=12, temperature=0, speculative="ngram"))
    assert [[c.tokens for c in row] for row in got] == [[c.tokens for c in row] for row in plain]
    sampled = engine.generate(prompts, SampleConfig(max_new_tokens=12, seed=3, num_samples=3, speculative="draft"))
    assert [len(row) for row in sampled] == [3, 3]
    again = engine.generate([prompts[1]], SampleConfig(max_new_tokens=12, seed=3, num_samples=3, speculative="draft"))
    assert [c.tokens for c in again[0]] == [c.tokens for c in sampled[1]]  # a row repeats whatever else runs


# --- sampling: seeded, and from plain sampling's distribution --------------------------------------------------
@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_seeded_sampling_repeats(engine, mode):
    sc = SampleConfig(max_new_tokens=40, temperature=4.0, top_k=10, seed=11, speculative=mode)
    a = engine.generate([PROMPTS["repeats"]], sc)[0][0].tokens
    assert engine.generate([PROMPTS["repeats"]], sc)[0][0].tokens == a
    assert list(engine.stream(PROMPTS["repeats"], sc)) == a
    other = SampleConfig(max_new_tokens=40, temperature=4.0, top_k=10, seed=12, speculative=mode)
    assert engine.generate([PROMPTS["repeats"]], other)[0][0].tokens != a


SAMPLING = {
    "plain": dict(temperature=1.0),
    "filters+penalties": dict(
        temperature=0.8, top_k=2, repetition_penalty=1.5, presence_penalty=0.3, logit_bias={0: 0.5}
    ),
    "nucleus+min_p": dict(temperature=1.3, top_p=0.85, min_p=0.15, frequency_penalty=0.4),
}
STEPS, RUNS = 3, 1500
VOCAB3_PROMPT = [0, 1, 2, 0, 1, 2, 0, 1]


def exact_joint(model, prompt: list[int], opts: dict) -> dict[tuple[int, ...], float]:
    """P(first STEPS tokens) under plain sampling: the model's full forward (no cache), then the adjustments and
    filters of sampling.py, step by step over every prefix."""
    sc = SampleConfig(**opts)
    V = model.config.vocab_size
    out = {}
    for seq in itertools.product(range(V), repeat=STEPS):
        prob = 1.0
        for t in range(STEPS):
            ctx = prompt + list(seq[:t])
            with torch.no_grad():
                x = model(torch.tensor([ctx]))[0][:, -1].float()
            x = S.add_logit_bias(x, sc.logit_bias)
            seen = torch.zeros(1, V, dtype=torch.bool)
            seen[0, ctx] = True
            x = S.repetition_penalty(x, seen, sc.repetition_penalty)
            counts = torch.bincount(torch.tensor(seq[:t], dtype=torch.long), minlength=V)[None].float()
            x = S.frequency_presence_penalty(x, counts, sc.frequency_penalty, sc.presence_penalty)
            p = S.distribution(x, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p, min_p=sc.min_p)
            prob *= float(p[0, seq[t]])
        out[seq] = prob
    return out


def chi_square_p(observed: dict, expected: dict, n: int) -> float:
    """Pearson's chi-square p-value over the cells the model can produce (a cell it cannot must stay empty)."""
    assert all(observed.get(c, 0) == 0 for c, p in expected.items() if p == 0), "a sequence plain sampling never makes"
    cells = [c for c, p in expected.items() if p > 0]
    stat = sum((observed.get(c, 0) - n * expected[c]) ** 2 / (n * expected[c]) for c in cells)
    df = len(cells) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2.0)))


@pytest.fixture(scope="module")
def vocab3():
    """Target and draft models over 3 tokens (draft: another random model, so q differs from p and rejections
    happen); scales chosen so that no sequence of 3 tokens is rarer than 0.75% (11+ expected in 1,500 runs)."""
    target = make_gpt(3, layers=1, embd=16, scale=2.0, seed=5)
    draft = make_gpt(3, layers=1, embd=16, scale=5.0, seed=6)
    return target, Engine(target, draft=draft, kernels="linear")


def sampled_joint(eng, opts, mode, runs=RUNS) -> dict:
    sc = SampleConfig(max_new_tokens=STEPS + 1, seed=0, num_samples=runs, speculative=mode, **opts)
    rows = eng.generate([VOCAB3_PROMPT], sc)[0]
    counts: dict[tuple[int, ...], int] = {}
    for c in rows:
        seq = tuple(c.tokens[:STEPS])  # one more token was asked for, so that token 3 is verified too
        counts[seq] = counts.get(seq, 0) + 1
    return counts


@pytest.mark.parametrize(
    "mode,opts",
    [
        ("ngram", "filters+penalties"),
        ("draft", "nucleus+min_p"),
        pytest.param("ngram", "plain", marks=pytest.mark.slow),
        pytest.param("draft", "plain", marks=pytest.mark.slow),
    ],
)
def test_sampled_sequences_follow_plain_sampling(vocab3, mode, opts):
    """1,500 seeded runs of 3 tokens against the exact probabilities of all 27 sequences: tokens 2 and 3 come from
    the acceptance rule (token 1 from the prefill). Seeds are fixed, so the test is deterministic; with a correct
    implementation a p-value below 1e-3 had a 1-in-1,000 chance per case. The next test shows it can fail."""
    target, eng = vocab3
    expected = exact_joint(target, VOCAB3_PROMPT, SAMPLING[opts])
    observed = sampled_joint(eng, SAMPLING[opts], mode)
    assert eng.spec_stats.drafted > RUNS and 0.2 < eng.spec_stats.acceptance < 0.9  # accepts and rejects
    assert chi_square_p(observed, expected, RUNS) > 1e-3


@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_the_distribution_check_catches_a_wrong_rejection_rule(vocab3, mode, monkeypatch):
    """A classic bug: after a rejection, draw from p instead of max(0, p - q). The check must reject it."""
    monkeypatch.setattr(spec, "residual_draw", lambda p, d, q, g: int(torch.multinomial(p, 1, generator=g)))
    target, eng = vocab3
    expected = exact_joint(target, VOCAB3_PROMPT, SAMPLING["plain"])
    assert chi_square_p(sampled_joint(eng, SAMPLING["plain"], mode, runs=1000), expected, 1000) < 1e-6


# --- bad inputs --------------------------------------------------------------------------------------------------
def test_bad_inputs_are_refused(engine):
    with pytest.raises(UserError, match="same tokenizer"):
        Engine(make_gpt(50), draft=make_gpt(40), kernels="linear")
    with pytest.raises(UserError, match="needs a draft model"):
        Engine(make_gpt(50), kernels="linear").generate([[1, 2]], SampleConfig(speculative="draft"))
    with pytest.raises(UserError, match="beam search"):
        SampleConfig(speculative="ngram", num_beams=2)
    with pytest.raises(UserError, match="draft_tokens"):
        SampleConfig(speculative="ngram", draft_tokens=0)
    with pytest.raises(UserError, match="speculative must be"):
        SampleConfig(speculative="medusa")
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SampleConfig(speculative="ngram"))


def test_ngram_drafter_copies_the_latest_occurrence():
    d = spec.NgramDrafter()
    assert d.propose([5, 6, 7, 9, 5, 6, 7, 8, 1, 5, 6, 7], 3)[0] == [8, 1, 5]  # latest of the 3-gram 5 6 7
    assert d.propose([5, 6, 7, 9, 5, 6, 7, 8, 1, 5, 6, 7, 2, 8], 2)[0] == [1, 5]  # only the 1-gram 8 recurs
    assert spec.NgramDrafter().propose([1, 2, 3], 4)[0] == []  # nothing recurs
    assert spec.NgramDrafter().propose([4, 4, 4], 5)[0] == [4, 4, 4, 4, 4]  # the copy continues itself


# --- the CLI -------------------------------------------------------------------------------------------------------
@pytest.fixture
def ckpts(tmp_path, tiny_tokenizer, tiny_cfg):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "big", "ckpt-0000001", GPT(tiny_cfg), tiny_tokenizer, step=1)
    small = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tiny_cfg.vocab_size)
    save_checkpoint(tmp_path / "small", "ckpt-0000001", GPT(small), tiny_tokenizer, step=1)
    other = Tokenizer.train(["some other text entirely"], vocab_size=None, kind="char")
    odd = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=other.n_vocab)
    save_checkpoint(tmp_path / "other", "ckpt-0000001", GPT(odd), other, step=1)
    return tmp_path


def one_line_error(result, *words):
    code, out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pocketgpt: error: "), (code, err)
    assert "Traceback" not in err and all(w in lines[0] for w in words), lines


def test_cli_speculative_prints_the_same_text_and_stats(run_cli, ckpts):
    args = ["generate", ckpts / "big", "--prompt", "the model", "--temperature", "0", "--max-new-tokens", "20"]
    args += ["--dtype", "float32"]  # bf16 rounds a k-token pass differently enough to flip near-ties
    code, plain, _ = run_cli(*args)
    assert code == 0
    for extra in (["--speculative", "ngram"], ["--draft", ckpts / "small"], ["--draft", ckpts / "small", "--stream"]):
        code, out, err = run_cli(*args, *extra, "-v")
        assert code == 0 and out == plain, extra
        assert "speculative (" in err and "accepted (acceptance" in err
    code, _, err = run_cli(*args, "--speculative", "ngram")
    assert code == 0 and "speculative (" not in err  # only with -v


def test_cli_refuses_a_draft_with_another_tokenizer(run_cli, ckpts):
    base = ["generate", ckpts / "big", "--prompt", "a", "--max-new-tokens", "3"]
    one_line_error(run_cli(*base, "--draft", ckpts / "other"), "another tokenizer")
    one_line_error(run_cli(*base, "--speculative", "draft"), "--draft")
    one_line_error(run_cli(*base, "--speculative", "ngram", "--draft", ckpts / "small"), "drop one")
    one_line_error(run_cli(*base, "--speculative", "ngram", "--beams", "2"), "beam search")


# --- the scheduler: speculative requests beside ordinary ones ---------------------------------------------------
def drain(sched, handles):
    while any(h.finish_reason is None for h in handles):
        sched.step()
    return [h.result() for h in handles]


@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_scheduler_speculative_rows_equal_the_engine(engine, mode):
    """Greedy speculative requests in the scheduler give plain greedy's tokens, alone and beside plain rows; seeded
    sampled ones repeat the engine's speculative output whatever else runs (each has its own cache)."""
    from pocketgpt.generate.scheduler import Scheduler

    sched = Scheduler(engine, max_batch=4)
    vary = dict(frequency_penalty=2.0, presence_penalty=2.0)  # this model's greedy text would repeat one token
    greedy = SampleConfig(max_new_tokens=30, temperature=0, speculative=mode, draft_tokens=3, **vary)
    plain = SampleConfig(max_new_tokens=30, temperature=0, **vary)
    sampled = SampleConfig(max_new_tokens=25, temperature=2.0, seed=5, speculative=mode)
    want = {k: engine.generate([p], plain)[0][0].tokens for k, p in PROMPTS.items()}
    want_sampled = engine.generate([PROMPTS["random"]], sampled)[0][0].tokens

    (alone,) = drain(sched, [sched.submit(PROMPTS["repeats"], greedy)])
    assert alone.tokens == want["repeats"] and alone.finish_reason == "length"
    handles = [sched.submit(p, greedy if i % 2 else plain) for i, p in enumerate(PROMPTS.values())]
    handles.append(sched.submit(PROMPTS["random"], sampled))  # waits for a free row (max_batch 4)
    out = drain(sched, handles)
    assert [c.tokens for c in out[:4]] == list(want.values())
    assert all(len(set(c.tokens)) > 5 for c in out[:4])
    assert out[4].tokens == want_sampled
    assert sched.spec_stats.drafted > 0 and sched.stats()["running"] == 0


def test_scheduler_speculative_stops_cancels_and_logprobs(engine):
    from pocketgpt.generate.scheduler import Scheduler

    sched = Scheduler(engine, max_batch=2)
    sc = SampleConfig(max_new_tokens=30, speculative="ngram", logprobs=True, top_logprobs=2, temperature=3.0, seed=7)
    ref = engine.generate([PROMPTS["random"]], sc)[0][0]  # seeded: the scheduler must give these very tokens
    first = next(i for i in range(1, 30) if ref.tokens[i] not in ref.tokens[:i])  # a token new at position i >= 1
    stop_at = ref.tokens[first]
    h = sched.submit(PROMPTS["random"], sc, stop_ids=[stop_at])
    (c,) = drain(sched, [h])
    assert c.tokens == ref.tokens[: ref.tokens.index(stop_at)] and c.finish_reason == "stop"
    assert c.logprobs == pytest.approx(ref.logprobs[: len(c.tokens)])
    h = sched.submit(PROMPTS["random"], SampleConfig(max_new_tokens=30, speculative="ngram"))
    sched.step()
    sched.step()
    h.cancel()
    (c,) = drain(sched, [h])
    assert h.finish_reason == "cancelled" and len(c.tokens) < 30
    h = sched.submit(PROMPTS["random"], sc, should_stop=lambda j, toks: len(toks) == 4)
    assert drain(sched, [h])[0].tokens == ref.tokens[:4]
