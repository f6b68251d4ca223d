"""What a decode returns (`Completion`) and the prompt-length rules every decoder shares: the engine, beam search
and the scheduler import this, and it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Completion:
    tokens: list[int]
    finish_reason: str = "length"  # "stop": a stop token or should_stop; "length": max_new_tokens
    logprobs: list[float] | None = None  # log-probability of each token under the model
    top_logprobs: list[list[tuple[int, float]]] | None = None
    score: float | None = None  # beam search: sum log-prob / length ** length_penalty


def crop_prompt(ids: list[int], block_size: int) -> tuple[list[int], bool]:
    """The last block_size - 1 tokens of the prompt (room for one new token), and whether it was cropped."""
    limit = max(1, block_size - 1)
    return (ids[-limit:], True) if len(ids) > limit else (list(ids), False)


def bucket_length(n: int) -> int:
    """n rounded up to one of few lengths: a multiple of 16 up to 64, then of a quarter of the power of two at or
    below n (at most 25% more): about 20 lengths up to a context of 1024."""
    step = max(16, 1 << max(0, n.bit_length() - 3))
    return -(-n // step) * step
