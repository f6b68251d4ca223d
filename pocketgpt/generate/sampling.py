"""Pure functions over logits: each strategy is one function, randomness comes from an explicit torch.Generator.

All take logits of shape (B, V) (float32) and return new logits, or token ids (B,) for the pickers.
Filtering sets excluded logits to -inf, so softmax gives them probability 0.

Drawing: `sample` draws exactly what `torch.multinomial(probs, 1, generator)` draws (PyTorch's CPU kernel races
p / q with q ~ Exp(1) from the generator and takes the argmax), but makes the Exp(1) noise from 53-bit uniforms
with one vectorised log instead of PyTorch's serial per-element `exponential_` (~3x less time over a 50k
vocabulary). `pick_rows` / `sample_rows` do a whole batch at once with one generator per row, equal to calling
`pick` / `sample` row by row: the continuous-batching scheduler samples all its rows in one pass, with noise
it drew (`draw_noise`) while the model ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token per row, (B,): the first one on ties, as argmax.

    `max(dim).indices` and `argmax` give the same index (tests/generate/test_sampling.py), but their speed differs
    by CPU: on a 2-core Xeon with AMX, over a 50k vocabulary, 31 vs 74 us a row. So the first call per device,
    dtype and vocabulary size times both on this machine and keeps the faster (`_greedy_kernel`)."""
    if _greedy_kernel(logits):
        return logits.max(dim=-1).indices
    return logits.argmax(dim=-1)


_GREEDY_BY_MAX: dict[tuple, bool] = {}


def _greedy_kernel(logits: torch.Tensor) -> bool:
    """True where `max(dim).indices` measured faster than `argmax` for rows like these (timed once, ~10 ms)."""
    key = (logits.device.type, logits.dtype, logits.shape[-1])
    choice = _GREEDY_BY_MAX.get(key)
    if choice is None:
        if logits.device.type != "cpu" or logits.shape[-1] < 1024:
            choice = False  # argmax: GPU kernels and short rows, where timing is noise
        else:
            import time

            x = torch.randn(1, logits.shape[-1]).to(logits.dtype)
            best = {}
            for name, fn in (("max", lambda: x.max(dim=-1)), ("argmax", lambda: x.argmax(dim=-1))) * 2:
                fn()
                t = time.perf_counter()
                for _ in range(20):
                    fn()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            choice = best["max"] < best["argmax"]
        _GREEDY_BY_MAX[key] = choice
    return choice


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row; k <= 0 or k >= V keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability sum reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly better tokens
    drop_sorted = mass_before >= p  # the best token is always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face / CTRL: for tokens already in the text (seen (B, V) bool), positive logits / penalty, negative * penalty."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(
    logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI: logit -= count * frequency + (count > 0) * presence, counts (B, V) over generated tokens."""
    if frequency == 0.0 and presence == 0.0:
        return logits
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def add_logit_bias(logits: torch.Tensor, bias: dict[int, float] | None) -> torch.Tensor:
    """OpenAI logit_bias: add a value to chosen token ids' logits (-100 bans, +100 forces in practice)."""
    if not bias:
        return logits
    ids = torch.tensor(list(bias.keys()), dtype=torch.long, device=logits.device)
    vals = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(-1, ids, vals.expand(logits.shape[0], -1))


def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from softmax(logits), (B,): what torch.multinomial(probs, 1, generator) draws."""
    probs = logits.float().softmax(dim=-1)
    if not _fast_draws():
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return _race(probs, _exponential(probs.shape, [generator]))


def sample_rows(
    logits: torch.Tensor, generators: Sequence[torch.Generator | None], noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Row b drawn with generators[b], (B,): equal to torch.cat([sample(logits[b:b + 1], g) for b, g in ...]).
    `noise`: the (B, V) `draw_noise(V, generators)` made beforehand (the generators have moved on already)."""
    if len(generators) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows but {len(generators)} generators")
    probs = logits.float().softmax(dim=-1)
    if noise is not None:
        return _race(probs, noise)
    if not _fast_draws():
        return torch.cat(
            [torch.multinomial(probs[b : b + 1], 1, generator=g).squeeze(-1) for b, g in enumerate(generators)]
        )
    return _race(probs, _exponential(probs.shape, generators))


def draw_noise(vocab: int, generators: Sequence[torch.Generator | None]) -> torch.Tensor | None:
    """The (B, V) noise the next `sample_rows` over these generators would draw, drawn now (it needs no logits: a
    caller may draw it while the model runs); None where this PyTorch's draws cannot be reproduced this way."""
    return _exponential(torch.Size((len(generators), vocab)), generators) if _fast_draws() else None


def pick(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Temperature 0 is greedy; otherwise temperature, then top-k, then top-p, then min-p, then sample."""
    logits = logits.float()
    if temperature == 0:
        return greedy(logits)
    return sample(_filtered(logits, temperature, top_k, top_p, min_p), generator)


def pick_rows(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """`pick` with one generator per row, for rows sharing these settings, (B,): equal to
    torch.cat([pick(logits[b:b + 1], ..., generator=generators[b]) for b in range(B)]) in one vectorised pass.
    `noise`: see `sample_rows` (unused when temperature is 0)."""
    logits = logits.float()
    if temperature == 0:
        return greedy(logits)
    return sample_rows(_filtered(logits, temperature, top_k, top_p, min_p), generators, noise)


def distribution(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """The probabilities (B, V) `pick` draws from: temperature, top-k, top-p, min-p, softmax; temperature 0 is a
    point mass on the greedy token (speculative decoding compares these)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, greedy(logits)[:, None], 1.0)
    return _filtered(logits, temperature, top_k, top_p, min_p).softmax(dim=-1)


def _filtered(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    logits = apply_temperature(logits, temperature)
    return min_p_filter(top_p_filter(top_k_filter(logits, top_k), top_p), min_p)


def _exponential(shape: torch.Size, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Exp(1) noise (B, V) float32; one generator for the whole tensor, or one per row. PyTorch's CPU
    `exponential_` computes -log1p(-u) per element from a 53-bit uniform u of the generator's 64-bit stream and
    rounds it to float32; `uniform_` on float64 consumes the same stream, so this equals
    torch.empty(shape).exponential_(1, generator=g) (checked once by `_fast_draws`), with the log vectorised."""
    u = torch.empty(shape, dtype=torch.float64)
    if len(generators) == 1:
        u.uniform_(generator=generators[0])
    else:
        for row, g in zip(u, generators):
            row.uniform_(generator=g)
    return u.neg_().log1p_().float().neg_()  # rounding commutes with negation


def _race(probs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """argmax(p / q), q ~ Exp(1): a draw from p (torch.multinomial's own method, and its input check)."""
    if not bool(torch.isfinite(probs.sum())):  # NaN / inf logits (softmax is never negative)
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    return greedy(probs.div_(q))  # probs: softmax's fresh output


_FAST: bool | None = None


def _fast_draws() -> bool:
    """Whether `_exponential` reproduces this PyTorch's `exponential_` (else sampling uses torch.multinomial)."""
    global _FAST
    if _FAST is None:
        want = torch.empty(2, 4096).exponential_(1, generator=torch.Generator().manual_seed(20261125))
        got = _exponential(torch.Size((2, 4096)), [torch.Generator().manual_seed(20261125)])
        _FAST = torch.equal(want, got)
    return _FAST


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's log-probability of each chosen token (B,), and the k most likely (ids (B, k), logprobs (B, k))."""
    logp = logits.float().log_softmax(dim=-1)
    chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1)
    if k <= 0:
        empty = torch.empty(logits.shape[0], 0)
        return chosen_lp, empty.long(), empty
    vals, ids = logp.topk(k, dim=-1)
    return chosen_lp, ids, vals
