"""What a caller of the scheduler holds: a `RequestHandle` per sequence, iterated (sync or async) for its `Token`s,
and the two refusals `submit` raises (QueueFull: HTTP 429; SchedulerClosed: HTTP 503). The scheduler (scheduler.py)
puts tokens in from its thread; nothing here decodes.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pocketgpt.generate.completion import Completion


class QueueFull(RuntimeError):
    """The waiting queue holds `max_queue` requests: come back later (HTTP 429)."""


class SchedulerClosed(RuntimeError):
    """The scheduler was closed: it takes no more requests (HTTP 503)."""


@dataclass
class Token:
    """One generated token, with its log-probability and the best alternatives when asked for."""

    id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


_END = object()


class RequestHandle:
    """One sequence being generated: iterate it (sync or async) for its `Token`s; `cancel()` frees its row.

    After the last token, `finish_reason` is "stop" (a stop id or should_stop), "length" (max tokens) or
    "cancelled". With a `loop` (the server's asyncio loop) it is consumed with `async for`, else with `for`.
    """

    def __init__(
        self,
        index: int,
        prompt_tokens: int,
        loop: asyncio.AbstractEventLoop | None = None,
        on_cancel: Callable[[RequestHandle], None] = lambda h: None,
    ):
        self.index = index  # sample index j within its submit (seed + j)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._loop = loop
        self._q = asyncio.Queue() if loop is not None else queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._ended = False
        self._on_cancel = on_cancel

    # --- the scheduler's side ---------------------------------------------------------------------
    def _put(self, item) -> None:
        try:
            self._q.put(item) if self._loop is None else self._loop.call_soon_threadsafe(self._q.put_nowait, item)
        except RuntimeError:  # the consumer's loop is gone: nobody is listening
            self._cancelled.set()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self._put(_END if error is None else error)

    # --- the consumer's side ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating: the row is freed before the next decode step; a waiting request leaves the queue."""
        if not self._cancelled.is_set() and self.finish_reason is None:
            self._cancelled.set()
            self._on_cancel(self)

    def _unpack(self, item, stop: type[Exception]) -> Token:
        if item is _END or isinstance(item, BaseException):
            self._ended = True
            raise stop if item is _END else item
        return item

    @property
    def done(self) -> bool:
        """Every token has been consumed (the end was reached by iterating or `drain`)."""
        return self._ended

    def drain(self) -> list[Token]:
        """The tokens ready now, without waiting (a synchronous driver calls it between `Scheduler.step()`s)."""
        out = []
        while not self._ended:
            try:
                item = self._q.get_nowait()
            except (queue.Empty, asyncio.QueueEmpty):
                break
            if item is _END or isinstance(item, BaseException):
                self._ended = True
                if item is not _END:
                    raise item
                break
            out.append(item)
        return out

    def __iter__(self) -> RequestHandle:
        return self

    def __next__(self) -> Token:
        if self._ended:
            raise StopIteration
        return self._unpack(self._q.get(), StopIteration)

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> Token:
        if self._ended:
            raise StopAsyncIteration
        return self._unpack(await self._q.get(), StopAsyncIteration)

    def result(self) -> Completion:
        """Wait for the whole sequence (handles submitted without a loop)."""
        toks = list(self)
        lp = None if not toks or toks[0].logprob is None else [t.logprob for t in toks]
        return Completion([t.id for t in toks], self.finish_reason, lp, lp and [t.top_logprobs for t in toks])
