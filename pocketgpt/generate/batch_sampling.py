"""One token per row of a running batch, each row with its own sampling settings and generator.

The decode loop's pick (rows.pick, scheduler.py step 4): a row is anything with `sample` (SampleConfig), `generator`,
`context` (ids so far), and the lazily made `counts` / `seen` / `noise` fields of `rows.Row`. Rows sharing
temperature / top_k / top_p / min_p are sampled together in one vectorised pass, drawing exactly what one
`sampling.pick` per row would. Knows nothing of caches, queues or HTTP.
"""

from __future__ import annotations

import concurrent.futures

import torch

from pocketgpt.generate import sampling as S


def choose_tokens(rows: list, logits: torch.Tensor) -> list[int]:
    """Every row's next token from (B, V) CPU logits, as the engine picks alone: that row's bias and
    penalties, then greedy or a draw from its own generator. Rows sharing temperature / top_k / top_p / min_p
    are filtered and sampled together in one vectorised pass (sampling.pick_rows), which draws exactly what
    row-by-row `pick` calls would."""
    x = logits
    for a, s in enumerate(rows):  # per-row adjustments (rare): on a copy of the logits
        sp, V = s.sample, logits.shape[-1]
        if s.counts is None and (sp.frequency_penalty != 0 or sp.presence_penalty != 0):
            s.counts = torch.zeros(V)
        if s.seen is None and sp.repetition_penalty != 1.0:
            s.seen = torch.zeros(V, dtype=torch.bool)
            s.seen[s.context] = True
        if not (sp.logit_bias or s.seen is not None or s.counts is not None):
            continue
        if x is logits:
            x = logits.clone()
        r = S.add_logit_bias(x[a : a + 1], sp.logit_bias)  # (1, V)
        if s.seen is not None:
            r = S.repetition_penalty(r, s.seen[None], sp.repetition_penalty)
        if s.counts is not None:
            r = S.frequency_presence_penalty(r, s.counts[None], sp.frequency_penalty, sp.presence_penalty)
        x[a] = r[0]
    groups: dict[tuple, list[int]] = {}
    for a, s in enumerate(rows):
        sp, temp = s.sample, s.sample.effective_temperature
        groups.setdefault((0.0, 0, 1.0, 0.0) if temp == 0 else (temp, sp.top_k, sp.top_p, sp.min_p), []).append(a)
    if len(groups) == 1:  # one group (batch 1, or rows with the same settings): no scatter into `out`
        ((temp, top_k, top_p, min_p),) = groups
        noise = take_noise(rows, x.shape[-1]) if temp > 0 else None
        gens = [s.generator for s in rows]
        return S.pick_rows(x, gens, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, noise=noise).tolist()
    out = torch.empty(len(rows), dtype=torch.long)
    for (temp, top_k, top_p, min_p), idx in groups.items():
        group = [rows[a] for a in idx]
        noise = take_noise(group, x.shape[-1]) if temp > 0 else None
        out[idx] = S.pick_rows(
            x if len(idx) == len(rows) else x[idx],
            [s.generator for s in group],
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            noise=noise,
        )
    return out.tolist()


def take_noise(group: list, V: int) -> torch.Tensor | None:
    """(len(group), V): each row's pre-drawn noise, drawn now for rows that have none (new rows); taken."""
    if all(s.noise is None for s in group):
        return None  # pick_rows draws it
    missing = [s for s in group if s.noise is None]
    if missing:
        for s, row in zip(missing, S.draw_noise(V, [s.generator for s in missing])):
            s.noise = row
    q = torch.stack([s.noise for s in group])
    for s in group:
        s.noise = None
    return q


class NoiseDrawer:
    """Draws the sampling noise of the scheduler's next pick on a helper thread, so that it runs beside the decode
    forward (on another core; the noise needs no logits): each sampling row's generator draws exactly what it would
    draw at the pick."""

    def __init__(self, vocab_size: int):
        self.V, self.pool = vocab_size, None

    def start(self, rows: list):
        """Begin drawing for `rows` that sample and hold no noise yet; returns the wait that stores it in the rows,
        or None when there is nothing to draw."""
        todo = [s for s in rows if s.noise is None and s.sample.effective_temperature > 0]
        if not todo or not S._fast_draws():
            return None
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pocketgpt-sampling-noise")
        job = self.pool.submit(S.draw_noise, self.V, [s.generator for s in todo])

        def wait() -> None:
            for s, row in zip(todo, job.result()):
                s.noise = row

        return wait

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None
