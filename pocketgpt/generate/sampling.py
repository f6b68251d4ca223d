"""Pure functions over logits: each strategy is one function, randomness comes from an explicit torch.Generator.

All take logits of shape (B, V) (float32) and return new logits, or token ids (B,) for the pickers.
Filtering sets excluded logits to -inf, so softmax gives them probability 0.
"""

from __future__ import annotations

from typing import Optional

import torch


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token per row, (B,)."""
    return logits.argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row; k <= 0 or k >= V keeps all."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]                 # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability sum reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs                         # probability of strictly better tokens
    drop_sorted = mass_before >= p                                     # the best token is always kept
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


def frequency_presence_penalty(logits: torch.Tensor, counts: torch.Tensor, frequency: float,
                               presence: float) -> torch.Tensor:
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


def sample(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw one token per row from softmax(logits), (B,)."""
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def pick(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
         min_p: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Temperature 0 is greedy; otherwise temperature, then top-k, then top-p, then min-p, then sample."""
    logits = logits.float()
    if temperature == 0:
        return greedy(logits)
    logits = apply_temperature(logits, temperature)
    logits = min_p_filter(top_p_filter(top_k_filter(logits, top_k), top_p), min_p)
    return sample(logits, generator)


def top_logprobs(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's log-probability of each chosen token (B,), and the k most likely (ids (B, k), logprobs (B, k))."""
    logp = logits.float().log_softmax(dim=-1)
    chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1)
    if k <= 0:
        empty = torch.empty(logits.shape[0], 0)
        return chosen_lp, empty.long(), empty
    vals, ids = logp.topk(k, dim=-1)
    return chosen_lp, ids, vals
