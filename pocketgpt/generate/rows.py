"""The decode loop's rows: what one sequence carries while it is generated, and how a batch of them picks its next
tokens. The scheduler (scheduler.py) owns the batch and the model calls; `Engine.generate` / `Engine.stream` and
the server both run through it, so every decoding rule below exists once:
- a row's next token: its logit bias and penalties, then greedy or a draw from its own seeded generator
  (batch_sampling.choose_tokens: rows sharing settings are sampled together, drawing what each would alone);
- a structured-output grammar masks the logits before anything else and ends the row when complete;
- a stop id ends the row and is not emitted; `should_stop(index, tokens)` ends it keeping the token;
  `max_new_tokens` ends it with "length";
- log-probabilities are the model's own (before bias and penalties), with the best alternatives when asked for.
Knows nothing of caches, queues or HTTP beyond handing each token to the row's `RequestHandle`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.batch_sampling import choose_tokens
from pocketgpt.generate.completion import Completion
from pocketgpt.generate.handles import RequestHandle, Token


@dataclass(eq=False)
class Row:
    """One sequence being decoded: its request, its tokens and its sampling state."""

    handle: RequestHandle
    sample: SampleConfig
    stop: frozenset[int]
    should_stop: Callable[[int, list[int]], bool] | None
    context: list[int]  # every token the model has seen (prompt + generated)
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)  # generated so far
    fed: int = 0  # tokens of this row in the cache
    counts: torch.Tensor | None = None  # (V,) generated-token counts, for frequency/presence
    seen: torch.Tensor | None = None  # (V,) bool, tokens in the text, for repetition_penalty
    noise: torch.Tensor | None = None  # (V,) its generator's next draw, made during a decode
    constraint: object | None = None  # structured output: the grammar state (structured.Constraint)
    spec: object | None = None  # speculative rows: the running batch-1 loop (a generator of tokens)
    out: Completion | None = None  # speculative rows: what the loop has produced (tokens, logprobs, finish)


def pick(rows: list[Row], logits: torch.Tensor) -> dict[int, str]:
    """Choose each row's next token from its (B, V) logits and hand it to the row's request; returns
    {row position: finish reason} for the rows that finished (their handles are not finished yet)."""
    finished: dict[int, str] = {}
    logits = logits.float().cpu()  # the generators live on the CPU
    for a, s in enumerate(rows):
        if s.constraint is not None:
            s.constraint.mask(logits[a])  # forbidden tokens to -inf, before penalties and sampling
    ids = choose_tokens(rows, logits)
    for a, (s, tid) in enumerate(zip(rows, ids)):
        if tid in s.stop:
            finished[a] = "stop"
            continue
        tok = Token(tid)
        sp = s.sample
        if sp.logprobs or sp.top_logprobs > 0:
            lp, top_ids, top_vals = S.top_logprobs(logits[a : a + 1], torch.tensor([tid]), sp.top_logprobs)
            tok.logprob = float(lp[0])
            tok.top_logprobs = list(zip(top_ids[0].tolist(), top_vals[0].tolist()))
        s.tokens.append(tid)
        s.context.append(tid)
        if s.counts is not None:
            s.counts[tid] += 1
        if s.seen is not None:
            s.seen[tid] = True
        s.handle.completion_tokens += 1
        s.handle._put(tok)
        if s.constraint is not None:
            s.constraint.consume(tid)
        if s.constraint is not None and s.constraint.done:
            finished[a] = "stop"  # the grammar is complete: nothing else may follow
        elif s.should_stop is not None and s.should_stop(s.handle.index, s.tokens):
            finished[a] = "stop"
        elif len(s.tokens) >= sp.max_new_tokens:
            finished[a] = "length"
    return finished
