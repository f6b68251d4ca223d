"""Vectorised sampling draws exactly what torch.multinomial and row-by-row `pick` draw, seed for seed."""

import pytest
import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.engine import Engine, bucket_length

V = 5003


def logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def gens(n: int, base: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_the_fast_path_is_active_on_this_torch():
    assert S._fast_draws()          # else sampling still works (torch.multinomial), only slower


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_sample_draws_what_multinomial_draws(rows):
    x = logits(rows)
    ga, gb = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(20):                       # the generators also stay in step
        want = torch.multinomial(x.softmax(-1), 1, generator=ga).squeeze(-1)
        assert torch.equal(S.sample(x, gb), want)


def test_sample_rows_draws_each_row_from_its_own_generator():
    x = logits(6, seed=1)
    ga, gb = gens(6), gens(6)
    for _ in range(20):
        want = torch.cat([torch.multinomial(x[b:b + 1].softmax(-1), 1, generator=g).squeeze(-1)
                          for b, g in enumerate(ga)])
        assert torch.equal(S.sample_rows(x, gb), want)


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=40),
                                      dict(temperature=1.3, top_p=0.9), dict(temperature=0.9, min_p=0.05),
                                      dict(temperature=1.1, top_k=100, top_p=0.8, min_p=0.01), dict(temperature=0)])
def test_pick_rows_equals_pick_row_by_row(settings):
    x = logits(8, seed=2)
    x[3, :10] = x[3, 0]                       # ties
    ga, gb = gens(8), gens(8)
    for _ in range(10):
        want = torch.cat([S.pick(x[b:b + 1], generator=g, **settings) for b, g in enumerate(ga)])
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
    monkeypatch.setattr(S, "_FAST", False)                 # torch.multinomial, row by row
    slow = Engine(tiny_model).generate([[1, 2, 3], [4, 5]], s)
    assert [[c.tokens for c in r] for r in fast] == [[c.tokens for c in r] for r in slow]


def test_bucket_lengths_are_few_and_close():
    got = {n: bucket_length(n) for n in range(1, 1025)}
    assert all(n <= b <= max(n + 15, n * 1.25) for n, b in got.items())
    assert len(set(got.values())) <= 24
    assert bucket_length(16) == 16 and bucket_length(17) == 32 and bucket_length(100) == 112


def test_a_bucketed_prefill_gives_the_same_next_token_logits(tiny_model):
    eng = Engine(tiny_model)
    eng.bucket_prefill = True                                    # on by default only for CPU bf16 / fp16
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    cache, lg = eng.prefill(prompts, bucket=True)
    _, want = eng.prefill(prompts)
    assert cache.pos == bucket_length(5) and torch.allclose(lg, want, atol=1e-5)
    eng.bucket_prefill = False
    assert eng.prefill(prompts, bucket=True)[0].pos == 5
