"""Batch sampling: `choose_tokens` picks each row of a running batch as that row would be picked alone, and the
vectorised draws under it (sampling.sample / sample_rows / pick_rows) draw exactly what torch.multinomial and
row-by-row `pick` draw, seed for seed."""

from types import SimpleNamespace

import pytest
import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.batch_sampling import choose_tokens
from pocketgpt.generate.engine import Engine

V = 5003


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def gens(n: int, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_the_fast_path_is_active_on_this_torch():
    assert S._fast_draws()  # else sampling still works (torch.multinomial), only slower


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_sample_draws_what_multinomial_draws(rows):
    x = logits(rows)
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(20):  # the generators also stay in step
        want = torch.multinomial(x.softmax(-1), 1, generator=ga).squeeze(-1)
        assert torch.equal(S.sample(x, gb), want)


def test_sample_rows_draws_each_row_from_its_own_generator():
    x = logits(6, seed=1)
    ga, gb = gens(6), gens(6)
    for _ in range(20):
        want = torch.cat(
            [torch.multinomial(x[b : b + 1].softmax(-1), 1, generator=g).squeeze(-1) for b, g in enumerate(ga)]
        )
        assert torch.equal(S.sample_rows(x, gb), want)


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=40),
        dict(temperature=1.3, top_p=0.9),
        dict(temperature=0.9, min_p=0.05),
        dict(temperature=1.1, top_k=100, top_p=0.8, min_p=0.01),
        dict(temperature=0),
    ],
)
def test_pick_rows_equals_pick_row_by_row(settings):
    x = logits(8, seed=2)
    x[3, :10] = x[3, 0]  # ties
    ga, gb = gens(8), gens(8)
    for _ in range(10):
        want = torch.cat([S.pick(x[b : b + 1], generator=g, **settings) for b, g in enumerate(ga)])
        assert torch.equal(S.pick_rows(x, gb, **settings), want)


def test_the_draws_follow_the_distribution():
    x = torch.tensor([[0.0, 1.0, 2.0]]).repeat(20000, 1)
    draws = S.sample_rows(x, gens(20000))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, x[0].softmax(-1), atol=0.02)


def test_invalid_logits_are_refused_as_multinomial_refuses_them():
    x = logits(2)
    x[1, 5] = float("nan")
    with pytest.raises(RuntimeError, match="probability tensor"):
        S.sample_rows(x, gens(2))
    with pytest.raises(ValueError):
        S.sample_rows(x, gens(3))


def test_without_the_fast_path_the_same_tokens_come_out(monkeypatch, tiny_model):
    s = SampleConfig(max_new_tokens=25, temperature=0.9, top_p=0.95, seed=5, num_samples=3)
    fast = Engine(tiny_model).generate([[1, 2, 3], [4, 5]], s)
    monkeypatch.setattr(S, "_FAST", False)  # torch.multinomial, row by row
    slow = Engine(tiny_model).generate([[1, 2, 3], [4, 5]], s)
    assert [[c.tokens for c in r] for r in fast] == [[c.tokens for c in r] for r in slow]


# --- choose_tokens: the scheduler's pick for a whole batch ------------------------------------------


def row(sample: SampleConfig, context: list[int], counts: dict[int, int] | None = None):
    """What choose_tokens reads of a scheduler row (scheduler._Seq): settings, generator, text, lazy state."""
    c = None
    if counts is not None:
        c = torch.zeros(V)
        for i, n in counts.items():
            c[i] = n
    gen = torch.Generator().manual_seed(sample.seed)
    return SimpleNamespace(sample=sample, generator=gen, context=context, counts=c, seen=None, noise=None)


def alone(r, logits_row: torch.Tensor, gen: torch.Generator) -> int:
    """The row picked by itself, as the engine does: bias, repetition, frequency/presence, then `pick`."""
    sp, x = r.sample, logits_row[None].clone()
    x = S.add_logit_bias(x, sp.logit_bias)
    seen = torch.zeros(1, V, dtype=torch.bool)
    seen[0, r.context] = True
    x = S.repetition_penalty(x, seen, sp.repetition_penalty)
    counts = r.counts[None] if r.counts is not None else torch.zeros(1, V)
    x = S.frequency_presence_penalty(x, counts, sp.frequency_penalty, sp.presence_penalty)
    t = sp.effective_temperature
    return int(S.pick(x, temperature=t, top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p, generator=gen)[0])


def batch_rows():
    return [
        row(SampleConfig(temperature=0, seed=0, logit_bias={7: 100.0}), [1]),
        row(SampleConfig(temperature=0, seed=0, repetition_penalty=50.0), list(range(0, V, 2))),
        row(SampleConfig(temperature=1.0, seed=1), [3]),
        row(SampleConfig(temperature=1.0, seed=2, frequency_penalty=2.0, presence_penalty=1.0), [4], {5: 3, 9: 1}),
        row(SampleConfig(temperature=0.7, top_k=5, seed=3), [5]),
        row(SampleConfig(temperature=0.7, top_k=5, seed=4), [6]),
        row(SampleConfig(temperature=0.9, top_p=0.8, min_p=0.05, seed=5, logit_bias={2: -100.0}), [7]),
    ]


def test_choose_tokens_gives_each_row_what_it_would_pick_alone():
    x = logits(7, seed=3)
    before = x.clone()
    rows = batch_rows()
    top = int(x[1].argmax())
    rows[1].context = [top]  # the greedy row has already seen its favourite
    rows[4].noise = S.draw_noise(V, [rows[4].generator])[0] if S._fast_draws() else None  # drawn during a decode
    refs = [torch.Generator().manual_seed(r.sample.seed) for r in rows]
    want = [alone(r, x[a], g) for a, (r, g) in enumerate(zip(rows, refs))]
    got = choose_tokens(rows, x)
    assert got == want
    assert got[0] == 7  # the +100 bias wins
    assert got[1] != top and x[1, top] > 0  # repetition_penalty 50 pushed the seen token down
    assert torch.equal(x, before)  # the adjustments went to a copy
    assert all(r.noise is None for r in rows)  # pre-drawn noise is used once
    for r, g in zip(rows[2:], refs[2:]):  # every sampling row's generator moved exactly as alone
        assert torch.equal(torch.rand(3, generator=r.generator), torch.rand(3, generator=g))


def test_choose_tokens_makes_the_lazy_penalty_state_once():
    rows = batch_rows()
    choose_tokens(rows, logits(7, seed=4))
    assert rows[1].seen is not None and rows[1].seen.tolist() == [i % 2 == 0 for i in range(V)]
    assert rows[3].counts[5] == 3 and rows[3].counts.sum() == 4  # given counts are kept, not reset
    assert all(r.seen is None for i, r in enumerate(rows) if i != 1)  # only rows that need it
    assert all(r.counts is None for i, r in enumerate(rows) if i != 3)


def test_choose_tokens_over_many_steps_repeats_row_by_row_picks():
    rows = [row(SampleConfig(temperature=1.0, top_k=50, seed=10 + i), [i]) for i in range(4)]
    refs = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    for step in range(10):
        x = logits(4, seed=100 + step)
        want = [alone(r, x[a], g) for a, (r, g) in enumerate(zip(rows, refs))]
        assert choose_tokens(rows, x) == want
