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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from pocketgpt.config import SampleConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.completion import Completion, crop_prompt
from pocketgpt.generate.engine import Engine


@dataclass
class TextCompletion:
    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    score: float | None = None


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
    def __init__(
        self,
        model,
        tokenizer,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        kernels: str = "auto",
        draft=None,
        bos: bool = True,
    ):
        """`draft`: a smaller model with the same tokenizer, for `SampleConfig(speculative="draft")`. `bos`: prompts
        start with <|endoftext|> (checkpoint.prompt_bos(ckpt) says what a checkpoint expects)."""
        self.engine = Engine(model, device=device, dtype=dtype, kernels=kernels, draft=draft)
        self.tokenizer = tokenizer
        self.bos = bos

    def encode_prompt(self, prompt: str) -> list[int]:
        """[<|endoftext|>, if bos] + the prompt's ids, cropped to the context (keeping the end) with a warning."""
        ids = self.tokenizer.encode(prompt)
        if not ids and not self.bos:
            raise UserError("the prompt is empty and --no-bos leaves nothing to start from: give a prompt")
        return self._fit(([self.tokenizer.eot_id] if self.bos else []) + ids)

    def _fit(self, ids: list[int]) -> list[int]:
        context, cropped = crop_prompt(list(ids), self.engine.cfg.block_size)
        if cropped:
            warnings.warn(
                f"prompt has {len(ids)} tokens, more than the context of {self.engine.cfg.block_size} "
                f"allows; keeping the last {len(context)}",
                stacklevel=4,
            )
        return context

    def complete(self, prompts: list[str], sample: SampleConfig) -> list[list[TextCompletion]]:
        """`sample.num_samples` completions per prompt (the best beams with beam search)."""
        return self.complete_ids_batch([self.encode_prompt(p) for p in prompts], sample, [self.tokenizer.eot_id])

    def complete_ids(self, prompt_ids: list[int], sample: SampleConfig, stop_ids: Iterable[int]) -> TextCompletion:
        """The one completion of a prompt given as token ids (a chat template's); num_samples must be 1."""
        if sample.num_samples != 1:
            raise ValueError(
                f"complete_ids returns one completion: use num_samples=1 (got {sample.num_samples}) "
                "or complete_ids_batch"
            )
        return self.complete_ids_batch([prompt_ids], sample, stop_ids)[0][0]

    def complete_ids_batch(
        self, prompts: list[list[int]], sample: SampleConfig, stop_ids: Iterable[int]
    ) -> list[list[TextCompletion]]:
        """`complete` for prompts given as token ids, ended by any of `stop_ids` (never part of the text)."""
        tok = self.tokenizer
        matcher = StopMatcher(sample.stop)
        buffers: dict[int, bytearray] = {}

        def should_stop(row: int, tokens: list[int]) -> bool:
            buf = buffers.setdefault(row, bytearray())
            before = len(buf)
            buf += tok.decode_bytes(tokens[-1:])
            return matcher.find(bytes(buf), before) >= 0

        results = self.engine.generate(
            [self._fit(p) for p in prompts],
            sample,
            stop_ids=list(stop_ids),
            should_stop=should_stop if sample.stop else None,
        )
        return [[self._finish(c, matcher) for c in row] for row in results]

    def _finish(self, c: Completion, matcher: StopMatcher) -> TextCompletion:
        raw = self.tokenizer.decode_bytes(c.tokens)
        cut = matcher.find(raw) if matcher.stops else -1
        reason = c.finish_reason
        if cut >= 0:
            raw, reason = raw[:cut], "stop"
        return TextCompletion(
            raw.decode("utf-8", errors="replace"), c.tokens, reason, c.logprobs, c.top_logprobs, c.score
        )

    def stream(self, prompt: str, sample: SampleConfig) -> Iterator[str]:
        """Yield pieces of text as soon as they are whole characters and cannot start a stop string."""
        yield from self.stream_ids(self.encode_prompt(prompt), sample, [self.tokenizer.eot_id])

    def stream_ids(self, prompt_ids: list[int], sample: SampleConfig, stop_ids: Iterable[int]) -> Iterator[str]:
        """`stream` for a prompt given as token ids, ended by any of `stop_ids` (never part of the text)."""
        tok = self.tokenizer
        prompt_ids, stop_ids = self._fit(prompt_ids), list(stop_ids)
        matcher = StopMatcher(sample.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buf, sent = bytearray(), 0  # sent: bytes of buf already handed to the decoder
        for t in self.engine.stream(prompt_ids, sample, stop_ids=stop_ids):
            before = len(buf)
            buf += tok.decode_bytes([t])
            cut = matcher.find(bytes(buf), before) if matcher.stops else -1
            if cut >= 0:  # returning closes the engine's generator
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


def generate_text(
    model,
    tokenizer,
    prompt: str = "",
    sample: SampleConfig | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """The continuation of `prompt` (without the prompt); stops at <|endoftext|>, a stop string or max_new_tokens.

    Bytes that do not form valid UTF-8 (a model can emit half a character) become U+FFFD, so the text prints.
    """
    sample = sample or SampleConfig()
    return TextGenerator(model, tokenizer, device=device, dtype=dtype).complete([prompt], sample)[0][0].text
