"""Continuous batching: many requests decoded together, each joining and leaving between decode steps.

`Scheduler(engine)` owns the running batch: a list of sequences, one batched KV cache with one row per sequence,
and the logits of each row's next token. Each `step()`:
    1) drops cancelled requests;
    2) admits waiting requests into free rows (at most `max_batch` rows) with one batched prefill;
    3) merges new rows (and rows whose window slid) into the batch cache;
    4) picks one token per row with that row's own SampleConfig and torch.Generator (rows sharing settings in one
       vectorised pass), hands it to the request, and retires rows that hit a stop id, `should_stop` or their max
       tokens;
    5) re-prefills the last half-context of rows that filled the context (the engine's sliding window);
    6) runs ONE decode forward for all remaining rows, while a helper thread draws the sampling noise of their next
       pick from their generators (the same numbers the pick would draw; it needs no logits).
A background thread (`start()`) calls `step()` whenever there is work; tests may call `step()` themselves instead.

Speculative requests take a row of `max_batch` but not of the batch cache: each runs speculative.py's batch-1 loop
on its own KV cache, one token per `step()`, with that path's output (greedy = plain greedy, seeded runs repeat).
Prompts that start like a recent one reuse its keys and values (prefix_cache.py).

The cache layout. KVCache writes every row at the same slot (`pos`), so rows are right-aligned: a row holding
`fed` tokens fills slots [pos - fed, pos), the slots before are left padding that the cache's `valid` mask hides,
and each row decodes at its own position (`fed`). When rows join, the batch is rebuilt by copying every row's
live slots into a fresh cache aligned to the longest row (`_pack`), which also drops padding no row needs; rows
that leave are removed with `KVCache.select`; a full cache is repacked the same way. A row therefore computes
exactly what it would alone (greedy results equal `Engine.generate` on that prompt alone; seeded samples repeat).

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
from dataclasses import dataclass, field

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate import sampling as S
from pocketgpt.generate.batch_sampling import NoiseDrawer, choose_tokens
from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.generate.engine import Engine
from pocketgpt.generate.handles import QueueFull, RequestHandle, SchedulerClosed, Token  # noqa: F401  (public here)
from pocketgpt.generate.prefix_cache import PrefixCache, prefill_with_prefix
from pocketgpt.generate.speculative import SpecStats, advance_rows, decode_row
from pocketgpt.model import KVCache


@dataclass(eq=False)
class _Seq:
    """One row of the batch: its request, its tokens and its sampling state."""

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


class Scheduler:
    def __init__(self, engine: Engine, *, max_batch: int = 8, max_queue: int = 64, prefix_cache_mb: float = 0):
        """`engine`: an Engine (or a model, wrapped in one). `max_batch` rows decode together; `max_queue`
        requests may wait for a row before `submit` raises QueueFull. `prefix_cache_mb` > 0 keeps recent prompts'
        keys and values (prefix_cache.py) so that a prompt sharing their start prefills only the rest."""
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        self.engine = engine if isinstance(engine, Engine) else Engine(engine)
        self.cfg = self.engine.cfg
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._rows: list[_Seq] = []  # the batch, in cache order
        self._spec: list[_Seq] = []  # speculative rows, each on its own cache
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.spec_stats = SpecStats("mixed")  # drafted / accepted tokens of every speculative row so far
        self._cache: KVCache | None = None
        self._logits: torch.Tensor | None = None  # (len(rows), V): each row's next-token logits
        self._joining: list[tuple[list[_Seq], KVCache, torch.Tensor]] = []  # prefilled, not yet merged
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
            _Seq(
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
        # 5) rows that filled the context re-prefill their last half-context (as Engine does alone)
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
        positions = torch.tensor([s.fed for s in self._rows])  # (B,)
        noise = self._noise.start(self._rows)
        self._logits = self.engine.decode(self._cache, nxt, positions)  # (B, V)
        if noise is not None:
            noise()
        self.decode_calls += 1
        self.decode_batch_sizes.append(len(self._rows))
        for s in self._rows:
            s.fed += 1
        return True

    def _start_speculative(self, s: _Seq) -> None:
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

    def _prefill(self, seqs: list[_Seq], contexts: list[list[int]], store: bool = False) -> None:
        cache, logits = self.engine.prefill(contexts, bucket=True)  # few shapes: bounded oneDNN caches
        self.prefill_calls += 1
        for b, (s, c) in enumerate(zip(seqs, contexts)):
            s.fed = len(c)
            if store:  # row b's prompt fills the last len(c) slots (left padding before it)
                sl = slice(cache.pos - len(c), cache.pos)
                self.prefix_cache.store(c, cache.k[:, b, :, sl], cache.v[:, b, :, sl])
        with self._cv:
            self._joining.append((seqs, cache, logits))

    def _prefill_from_cache(self, seqs: list[_Seq]) -> list[_Seq]:
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

    def _pack(self, parts: list[tuple[KVCache, list[_Seq]]]) -> KVCache:
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
        """Choose each row's next token from its logits, hand it over, retire the rows that finished."""
        finished: dict[int, str] = {}
        logits = self._logits.float().cpu()  # (B, V): the generators live on the CPU
        for a, s in enumerate(self._rows):
            if s.constraint is not None:
                s.constraint.mask(logits[a])  # forbidden tokens to -inf, before penalties and sampling
        ids = choose_tokens(self._rows, logits)
        for a, (s, tid) in enumerate(zip(self._rows, ids)):
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
            elif len(s.tokens) >= s.sample.max_new_tokens:
                finished[a] = "length"
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
