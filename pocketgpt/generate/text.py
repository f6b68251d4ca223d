"""Text in, text out: prompts framed and encoded, stop strings matched on decoded bytes, streams cut at whole characters.

The engine works on ids; this layer adds what needs the tokenizer:
- prompts are framed as the model saw documents in training (after <|endoftext|>) and cropped to the
  context with a warning;
- stop strings are matched on the decoded bytes, also when one spans several tokens, and never emitted;
- streaming yields text as soon as it is complete UTF-8 and cannot be the start of a stop string.
What does not live here: sampling and the KV cache (engine.py), chat templates (tokenizer/chat.py).
"""

from __future__ import annotations

import codecs
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.generate.engine import Completion, Engine, crop_prompt


@dataclass
class TextCompletion:
    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: Optional[list[float]] = None
    top_logprobs: Optional[list[list[tuple[int, float]]]] = None
    score: Optional[float] = None


class StopMatcher:
    """Finds the first stop string in a growing byte buffer; says how much of the tail must be held back."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = [s.encode("utf-8") for s in stops]
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, buf: bytes, start: int = 0) -> int:
        """Byte offset of the earliest stop string at or after about `start`, or -1."""
        hits = [i for s in self.stops if (i := buf.find(s, max(0, start - len(s) + 1))) >= 0]
        return min(hits) if hits else -1

    def hold(self, buf: bytes) -> int:
        """Length of the longest tail of buf that is a proper prefix of some stop string (may still become one)."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


class TextGenerator:
    def __init__(self, model, tokenizer, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.engine = Engine(model, device=device, dtype=dtype)
        self.tokenizer = tokenizer

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = [self.tokenizer.eot_id] + self.tokenizer.encode(prompt)
        context, cropped = crop_prompt(ids, self.engine.cfg.block_size)
        if cropped:
            warnings.warn(f"prompt has {len(ids)} tokens, more than the context of {self.engine.cfg.block_size} "
                          f"allows; keeping the last {len(context)}", stacklevel=3)
        return context

    def complete(self, prompts: list[str], sample: SampleConfig) -> list[list[TextCompletion]]:
        """`sample.num_samples` completions per prompt (the best beams with beam search)."""
        tok = self.tokenizer
        matcher = StopMatcher(sample.stop)
        buffers: dict[int, bytearray] = {}

        def should_stop(row: int, tokens: list[int]) -> bool:
            buf = buffers.setdefault(row, bytearray())
            before = len(buf)
            buf += tok.decode_bytes(tokens[-1:])
            return matcher.find(bytes(buf), before) >= 0

        results = self.engine.generate([self.encode_prompt(p) for p in prompts], sample, stop_ids=[tok.eot_id],
                                       should_stop=should_stop if sample.stop else None)
        return [[self._finish(c, matcher) for c in row] for row in results]

    def _finish(self, c: Completion, matcher: StopMatcher) -> TextCompletion:
        raw = self.tokenizer.decode_bytes(c.tokens)
        cut = matcher.find(raw) if matcher.stops else -1
        reason = c.finish_reason
        if cut >= 0:
            raw, reason = raw[:cut], "stop"
        return TextCompletion(raw.decode("utf-8", errors="replace"), c.tokens, reason, c.logprobs, c.top_logprobs,
                              c.score)

    def stream(self, prompt: str, sample: SampleConfig) -> Iterator[str]:
        """Yield pieces of text as soon as they are whole characters and cannot start a stop string."""
        tok = self.tokenizer
        matcher = StopMatcher(sample.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buf, sent = bytearray(), 0                       # sent: bytes of buf already handed to the decoder
        for t in self.engine.stream(self.encode_prompt(prompt), sample, stop_ids=[tok.eot_id]):
            before = len(buf)
            buf += tok.decode_bytes([t])
            cut = matcher.find(bytes(buf), before) if matcher.stops else -1
            if cut >= 0:                                  # returning closes the engine's generator
                text = decoder.decode(bytes(buf[sent:cut]), final=True)
                if text:
                    yield text
                return
            safe = len(buf) - matcher.hold(bytes(buf)) if matcher.stops else len(buf)
            if safe > sent:
                text = decoder.decode(bytes(buf[sent:safe]))
                sent = safe
                if text:
                    yield text
        text = decoder.decode(bytes(buf[sent:]), final=True)
        if text:
            yield text


def generate_text(model, tokenizer, prompt: str = "", sample: SampleConfig | None = None, *,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> str:
    """The continuation of `prompt` (without the prompt); stops at <|endoftext|>, a stop string or max_new_tokens.

    Bytes that do not form valid UTF-8 (a model can emit half a character) become U+FFFD, so the text prints.
    """
    sample = sample or SampleConfig()
    return TextGenerator(model, tokenizer, device=device, dtype=dtype).complete([prompt], sample)[0][0].text
