"""The one decode loop: many sequences decoded together, each joining and leaving between decode steps.

`Engine.generate` / `Engine.stream` drive it synchronously (submit, then `step()` until done); the server drives it
from a background thread (`start()`), requests joining whenever they arrive (continuous batching). So every
decoding feature (seeds, penalties, stop ids, max tokens, the half-context slide, logprobs, grammars, speculative
rows, prefix reuse) is written once, here and in rows.py. Beam search is a different algorithm (beam_search.py).

`Scheduler(engine)` owns the running batch: a list of rows (rows.py), one batched KV cache with one row per
sequence, and the logits of each row's next token. Each `step()`:
    1) drops cancelled requests;
    2) admits waiting requests into free rows (at most `max_batch` rows) with one batched prefill (rows with the
       same prompt, a request's samples, share one prefilled row);
    3) merges new rows (and rows whose window slid) into the batch cache;
    4) picks one token per row with that row's own SampleConfig and torch.Generator (rows.pick: rows sharing
       settings in one vectorised pass), hands it to the request, and retires rows that hit a stop id,
       `should_stop` or their max tokens;
    5) re-prefills the last half-context of rows that filled the context (the sliding window);
    6) runs ONE decode forward for all remaining rows, while a helper thread draws the sampling noise of their next
       pick from their generators (the same numbers the pick would draw; it needs no logits).

Speculative requests take a row of `max_batch` but not of the batch cache: each runs speculative.py's batch-1 loop
on its own KV cache, one token per `step()`, with that path's output (greedy = plain greedy, seeded runs repeat).
Prompts that start like a recent one reuse its keys and values (prefix_cache.py).

The cache layout. KVCache writes every row at the same slot (`pos`), so rows are right-aligned: a row holding
`fed` tokens fills slots [pos - fed, pos), the slots before are left padding that the cache's `valid` mask hides,
and each row decodes at its own position (`fed`). When rows join, the batch is rebuilt by copying every row's
live slots into a fresh cache aligned to the longest row (`_pack`), which also drops padding no row needs; rows
that leave are removed with `KVCache.select`; a full cache is repacked the same way. A row therefore computes
exactly what it would alone (tests/generate/test_scheduler.py checks rows against a batch of one and against a
plain full-forward decode; seeded samples repeat whatever else is in the batch).

Knows only token ids: no strings, HTTP or argv (stop strings are the caller's, through `should_stop`).
"""

from __future__ import annotations

import asyncio
import collections
import random
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate.batch_sampling import NoiseDrawer
from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.generate.handles import QueueFull, RequestHandle, SchedulerClosed, Token  # noqa: F401  (public here)
from pocketgpt.generate.prefix_cache import PrefixCache, prefill_with_prefix
from pocketgpt.generate.rows import Row, pick
from pocketgpt.generate.speculative import SpecStats, advance_rows, decode_row
from pocketgpt.model import KVCache


class Scheduler:
    def __init__(self, engine, *, max_batch: int = 8, max_queue: int = 64, prefix_cache_mb: float = 0):
        """`engine`: an Engine (generate/engine.py). `max_batch` rows decode together; `max_queue`
        requests may wait for a row before `submit` raises QueueFull. `prefix_cache_mb` > 0 keeps recent prompts'
        keys and values (prefix_cache.py) so that a prompt sharing their start prefills only the rest."""
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        if isinstance(engine, torch.nn.Module):  # engine.py imports this module, so it cannot be imported here
            raise TypeError("Scheduler takes an Engine: Scheduler(Engine(model))")
        self.engine = engine
        self.cfg = self.engine.cfg
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: collections.deque[Row] = collections.deque()
        self._rows: list[Row] = []  # the batch, in cache order
        self._spec: list[Row] = []  # speculative rows, each on its own cache
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.spec_stats = SpecStats("mixed")  # drafted / accepted tokens of every speculative row so far
        self._cache: KVCache | None = None
        self._logits: torch.Tensor | None = None  # (len(rows), V): each row's next-token logits
        self._joining: list[tuple[list[Row], KVCache, torch.Tensor]] = []  # prefilled, not yet merged
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._noise = NoiseDrawer(self.cfg.vocab_size)  # draws sampling noise beside each decode
        self._closed = False
        self.decode_calls = self.prefill_calls = self.finished = 0  # finished: rows that left, any reason
        self.decode_batch_sizes: collections.deque[int] = collections.deque(maxlen=100_000)  # rows per decode

    # --- the caller's side --------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        sample: SampleConfig,
        stop_ids: Iterable[int] = (),
        *,
        should_stop: Callable[[int, list[int]], bool] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        constraint: Callable[[], object] | None = None,
    ) -> RequestHandle:
        """Queue one sequence (sample.num_samples must be 1); see `submit_all`."""
        if sample.num_samples != 1:
            raise ValueError(f"submit queues one sequence: use submit_all for num_samples={sample.num_samples}")
        return self.submit_all(prompt_ids, sample, stop_ids, should_stop=should_stop, loop=loop, constraint=constraint)[
            0
        ]

    def submit_all(
        self,
        prompt_ids: list[int],
        sample: SampleConfig,
        stop_ids: Iterable[int] = (),
        *,
        should_stop: Callable[[int, list[int]], bool] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        constraint: Callable[[], object] | None = None,
    ) -> list[RequestHandle]:
        """Queue `sample.num_samples` sequences of one prompt, all or none (QueueFull), seeded seed + j as the
        engine does. `should_stop(j, tokens)` is asked after every token of sample j (on the scheduler's thread);
        True ends it with finish_reason "stop". Prompts longer than the context keep their last tokens.
        `constraint()` makes each sequence's grammar state (generate/structured.py): its mask applies before
        every pick, and the sequence ends when the grammar is complete (such rows never decode speculatively)."""
        if not prompt_ids or sample.num_beams > 1:
            raise ValueError("give a prompt of at least one token; beam search runs on Engine.generate, not here")
        if not all(0 <= int(t) < self.cfg.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in 0..{self.cfg.vocab_size - 1}")
        ctx, _ = crop_prompt([int(t) for t in prompt_ids], self.cfg.block_size)
        base_seed = sample.seed if sample.seed is not None else random.getrandbits(62)
        seqs = [
            Row(
                RequestHandle(j, len(ctx), loop, self._unqueue),
                sample,
                frozenset(stop_ids),
                should_stop,
                list(ctx),
                torch.Generator().manual_seed(base_seed + j),
                constraint=constraint() if constraint is not None else None,
            )
            for j in range(sample.num_samples)
        ]
        with self._cv:
            if self._closed:
                raise SchedulerClosed("the scheduler is closed")
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (limit {self.max_queue})")
            self._waiting.extend(seqs)
            self._cv.notify()
        return [s.handle for s in seqs]

    def stats(self) -> dict:
        """Rows running, requests waiting, and the forward counters."""
        with self._cv:
            return {
                "running": len(self._rows) + len(self._spec) + sum(len(r) for r, _, _ in self._joining),
                "waiting": len(self._waiting),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
                "decode_calls": self.decode_calls,
                "prefill_calls": self.prefill_calls,
                "finished": self.finished,
                **(self.prefix_cache.stats() if self.prefix_cache is not None else {}),
            }

    def _unqueue(self, handle: RequestHandle) -> None:
        with self._cv:  # a waiting request leaves the queue at once
            for s in self._waiting:
                if s.handle is handle:
                    self._waiting.remove(s)
                    handle._finish("cancelled")
                    break
            self._cv.notify()

    # --- the thread -----------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        """Run `step()` on a daemon thread whenever there is work (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pocketgpt-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; every unfinished request ends with finish_reason "cancelled"."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._end_all("cancelled", None, waiting=True)
        self._noise.close()

    def _end_all(self, reason: str, error: BaseException | None, waiting: bool = False) -> None:
        with self._cv:
            for s in [
                *(self._waiting if waiting else ()),
                *self._rows,
                *self._spec,
                *(s for r, _, _ in self._joining for s in r),
            ]:
                s.handle._finish(reason, error)
            if waiting:
                self._waiting.clear()
            self._rows, self._joining, self._cache, self._logits, self._spec = [], [], None, None, []

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not (self._waiting or self._rows or self._joining or self._spec):
                    self._cv.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # a bug: fail the requests in flight, keep serving
                traceback.print_exc(file=sys.stderr)
                self._end_all("error", RuntimeError(f"generation failed: {e.__class__.__name__}: {e}"))

    # --- one step ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> bool:
        """Admit, merge, pick one token per row, retire, slide, decode once. False when there was nothing to do."""
        # 1) cancelled rows leave
        gone = [a for a, s in enumerate(self._rows) if s.handle._cancelled.is_set()]
        for a in gone:
            self._rows[a].handle._finish("cancelled")
        self.finished += len(gone)
        self._drop(gone)
        # 2) admit waiting requests into free rows: one prefill for all of them
        with self._cv:
            free = self.max_batch - len(self._rows) - len(self._spec) - sum(len(r) for r, _, _ in self._joining)
            new = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        for s in new:
            if s.sample.max_new_tokens == 0:
                s.handle._finish("length")
        new = [s for s in new if s.sample.max_new_tokens > 0]
        spec = [s for s in new if s.sample.speculative != "off" and s.constraint is None]
        new = [s for s in new if s not in spec]
        for s in spec:
            self._start_speculative(s)
        if new and self.prefix_cache is not None:
            new = self._prefill_from_cache(new)
        if new:
            self._prefill(new, [s.context for s in new], store=self.prefix_cache is not None)
        ran_spec = self._advance_speculative()
        # 3) merge prefilled rows (new, or slid last step) into the batch
        if self._joining:
            self._merge()
        if not self._rows:
            return bool(new) or ran_spec
        # 4) one token per row; finished rows leave
        self._pick()
        # 5) rows that filled the context re-prefill their last half-context
        full = [a for a, s in enumerate(self._rows) if s.fed >= self.cfg.block_size]
        if full:
            slid = [self._rows[a] for a in full]
            self._drop(full)
            window = max(1, self.cfg.block_size // 2)
            self._prefill(slid, [s.context[-window:] for s in slid])
        if not self._rows:
            return True
        if self._cache.pos >= self._cache.max_len:  # full: drop padding no row needs, grow the capacity
            self._cache = self._pack([(self._cache, self._rows)])
        # 6) one decode forward for every remaining row: its last token, at its own position
        nxt = torch.tensor([s.context[-1] for s in self._rows], dtype=torch.long)  # (B,)
        # rows aligned at the cache's slot (no padding: batch 1, or rows that joined together) decode at its position
        positions = None if self._cache.valid is None else torch.tensor([s.fed for s in self._rows])  # (B,)
        noise = self._noise.start(self._rows)
        self._logits = self.engine.decode(self._cache, nxt, positions)  # (B, V)
        if noise is not None:
            noise()
        self.decode_calls += 1
        self.decode_batch_sizes.append(len(self._rows))
        for s in self._rows:
            s.fed += 1
        return True

    def _start_speculative(self, s: Row) -> None:
        s.out = Completion([])
        s.spec = decode_row(
            self.engine, s.context, s.sample, s.stop, s.should_stop, s.handle.index, s.generator, s.out, self.spec_stats
        )
        self._spec.append(s)

    def _advance_speculative(self) -> bool:
        if not self._spec:
            return False
        done = advance_rows(self._spec)
        if done:
            self._spec = [s for s in self._spec if s not in done]
            self.finished += len(done)
        return True

    def _prefill(self, seqs: list[Row], contexts: list[list[int]], store: bool = False) -> None:
        """One batched prefill; rows with the same context (a request's samples) share one row of it."""
        unique: dict[tuple[int, ...], int] = {}
        order = [unique.setdefault(tuple(c), len(unique)) for c in contexts]
        firsts = [list(c) for c in unique]
        cache, logits = self.engine.prefill(firsts, bucket=True)  # few shapes: bounded oneDNN caches
        self.prefill_calls += 1
        for b, c in enumerate(firsts):
            if store:  # row b's prompt fills the last len(c) slots (left padding before it)
                sl = slice(cache.pos - len(c), cache.pos)
                self.prefix_cache.store(c, cache.k[:, b, :, sl], cache.v[:, b, :, sl])
        if len(firsts) < len(contexts):
            idx = torch.tensor(order)
            cache, logits = cache.select(idx.to(cache.k.device)), logits[idx]
        for s, c in zip(seqs, contexts):
            s.fed = len(c)
        with self._cv:
            self._joining.append((seqs, cache, logits))

    def _prefill_from_cache(self, seqs: list[Row]) -> list[Row]:
        """Rows whose prompt starts like a cached one prefill only the rest, each on its own one-row cache (which
        the merge packs into the batch). Returns the rows that missed."""
        missed = []
        for s in seqs:
            got = prefill_with_prefix(self.prefix_cache, self.engine, s.context)
            if got is None:
                missed.append(s)
                continue
            self.prefill_calls += 1
            s.fed = len(s.context)
            with self._cv:
                self._joining.append(([s], *got))
        return missed

    def _merge(self) -> None:
        """Rows prefilled since the last step join the batch (one that was cancelled meanwhile leaves next step)."""
        with self._cv:
            joining, self._joining = self._joining, []
        parts = ([(self._cache, self._rows)] if self._rows else []) + [(c, rows) for rows, c, _ in joining]
        logits = ([self._logits] if self._rows else []) + [lg for _, _, lg in joining]
        self._cache = self._pack(parts)
        self._rows = [s for _, rows in parts for s in rows]
        self._logits = torch.cat(logits)  # (B, V)

    def _pack(self, parts: list[tuple[KVCache, list[Row]]]) -> KVCache:
        """One cache holding every part's rows, right-aligned at pos = the longest row; padding masked. Its
        capacity is twice that (at least 64 more, at most the context): copies scale with the text, not the context,
        and a full cache is repacked (step 5) about once per doubling."""
        P = max(s.fed for _, rows in parts for s in rows)
        B = sum(len(rows) for _, rows in parts)
        first = parts[0][0]
        cap = min(self.cfg.block_size, max(2 * P, P + 64))
        out = KVCache(self.cfg, B, max_len=cap, dtype=first.k.dtype, device=first.k.device)
        b = 0
        for cache, rows in parts:
            m = max(s.fed for s in rows)  # live slots of this part: [cache.pos - m, cache.pos)
            out.k[:, b : b + len(rows), :, P - m : P] = cache.k[:, :, :, cache.pos - m : cache.pos]
            out.v[:, b : b + len(rows), :, P - m : P] = cache.v[:, :, :, cache.pos - m : cache.pos]
            b += len(rows)
        out.pos = P
        out.set_padding(torch.tensor([P - s.fed for _, rows in parts for s in rows]))
        return out

    def _pick(self) -> None:
        """Choose each row's next token from its logits, hand it over, retire the rows that finished (rows.py)."""
        finished = pick(self._rows, self._logits)
        for a, reason in finished.items():
            self._rows[a].handle._finish(reason)
        self.finished += len(finished)
        self._drop(list(finished))

    def _drop(self, rows: list[int]) -> None:
        """Remove rows from the batch (cache, logits and list) without finishing them."""
        if not rows:
            return
        keep = [a for a in range(len(self._rows)) if a not in set(rows)]
        self._rows = [self._rows[a] for a in keep]
        if not keep:
            self._cache, self._logits = None, None
            return
        keep_t = torch.tensor(keep)
        self._cache = self._cache.select(keep_t.to(self._cache.k.device))
        self._logits = self._logits[keep_t.to(self._logits.device)]
