"""From generated tokens to OpenAI response objects: text per choice, stop strings, log-probabilities, usage.

Lives here: `ChoiceText` (a choice's tokens -> text pieces that are whole characters and never hold or follow a
stop string, as generate/text.py streams), the `should_stop` check the scheduler asks on its thread, the
log-probability shapes of both endpoints, the chat extension `explain` (each answer token's probability, top
alternatives and most-attended earlier tokens, from explain.token_report), and the JSON objects / SSE chunks. Not
here: routes (app.py), request checking (protocol.py), sampling (generate/), the numbers themselves (explain.py).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import threading
import time
import uuid

from pocketgpt.errors import UserError
from pocketgpt.explain import label, token_of, token_report
from pocketgpt.generate.scheduler import Token
from pocketgpt.generate.text import StopMatcher


def token_bytes(tokenizer, tid: int) -> bytes:
    """A token's bytes; ids the tokenizer lacks (a model vocabulary padded past it) give nothing."""
    return tokenizer.decode_bytes([tid]) if 0 <= tid < tokenizer.n_vocab else b""


def stop_check(tokenizer, stops: tuple[str, ...]):
    """`should_stop(j, tokens)` for the scheduler: True once sample j's text holds a stop string."""
    if not stops:
        return None
    matcher, buffers = StopMatcher(stops), {}

    def should_stop(j: int, tokens: list[int]) -> bool:
        buf = buffers.setdefault(j, bytearray())
        before = len(buf)
        buf += token_bytes(tokenizer, tokens[-1])
        return matcher.find(bytes(buf), before) >= 0

    return should_stop


class ChoiceText:
    """One choice's text as its tokens arrive: `feed` returns the text that became safe to send."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.matcher = tokenizer, StopMatcher(stops)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.buf, self.sent = bytearray(), 0  # sent: bytes of buf already handed to the decoder
        self.stopped = False  # ended (a stop string, or flushed): nothing more is sent
        self.hit_stop = False  # a stop string ended it
        self.tokens: list[Token] = []  # tokens whose text starts before any stop string
        self.starts: list[int] = []  # byte offset of each kept token in the text
        self.cut: int | None = None  # byte offset where a stop string began (the text ends there)
        self.text = ""  # everything sent so far

    def feed(self, tok: Token) -> str:
        if self.stopped:
            return ""
        before = len(self.buf)
        self.tokens.append(tok)
        self.starts.append(before)
        self.buf += token_bytes(self.tokenizer, tok.id)
        if self.matcher.stops:
            cut = self.matcher.find(bytes(self.buf), before)
            if cut >= 0:
                self.stopped = self.hit_stop = True
                self.cut = cut
                while self.starts and self.starts[-1] >= cut:  # tokens that only hold the stop string
                    self.starts.pop()
                    self.tokens.pop()
                return self._send(self.decoder.decode(bytes(self.buf[self.sent : cut]), final=True))
        safe = len(self.buf) - (self.matcher.hold(bytes(self.buf)) if self.matcher.stops else 0)
        if safe <= self.sent:
            return ""
        piece = self.decoder.decode(bytes(self.buf[self.sent : safe]))
        self.sent = safe
        return self._send(piece)

    def flush(self) -> str:
        """The held-back tail once the choice has ended."""
        if self.stopped:
            return ""
        self.stopped = True
        return self._send(self.decoder.decode(bytes(self.buf[self.sent :]), final=True))

    def _send(self, piece: str) -> str:
        self.text += piece
        return piece


# --- log-probabilities ---------------------------------------------------------------------------------
def _entry(tokenizer, tid: int, lp: float) -> dict:
    raw = token_bytes(tokenizer, tid)
    return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}


def chat_logprobs(tokenizer, tokens: list[Token]) -> dict:
    """Chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}."""
    return {
        "content": [
            {
                **_entry(tokenizer, t.id, t.logprob),
                "top_logprobs": [_entry(tokenizer, i, lp) for i, lp in t.top_logprobs or []],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def text_logprobs(tokenizer, tokens: list[Token], starts: list[int], text: bytes = b"") -> dict:
    """Completions shape: parallel lists tokens / token_logprobs / top_logprobs / text_offset (characters into
    the generated `text`, given as bytes, at which each token starts)."""

    def s(tid):
        return token_bytes(tokenizer, tid).decode("utf-8", "replace")

    return {
        "tokens": [s(t.id) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{s(i): lp for i, lp in t.top_logprobs or []} for t in tokens],
        "text_offset": [len(text[:o].decode("utf-8", "replace")) for o in starts],
    }


# --- explain: what the model thought at each answer token ----------------------------------------------
EXPLAIN_ABOUT = (
    "per answer token: text (its share of the answer: joined, they are the answer), prob (softmax of the model's "
    "logits where it was chosen: temperature 1, before top-p, penalties or a grammar) and rank (1 = the model's "
    "first choice), top (the most likely tokens there), attended (the tokens, by index into prompt + answer, that "
    "the position choosing it attended to most: {attends})"
)


def token_pieces(choice: ChoiceText) -> list[str]:
    """Each kept token's share of the choice's text: what decoding its bytes adds (a character split across
    tokens belongs to the token holding its last byte, so a token can have ""), ending where a stop string
    began. Joined, they are `choice.text`."""
    end = choice.cut if choice.cut is not None else len(choice.buf)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    bounds = [*choice.starts[1:], end]
    return [
        decoder.decode(bytes(choice.buf[s : min(e, end)]), final=k == len(bounds) - 1)
        for k, (s, e) in enumerate(zip(choice.starts, bounds))
    ]


def _shown(tokenizer, tid: int, prob: float) -> dict:
    t = token_of(tokenizer, tid)
    return {"id": tid, "text": t.text, "label": label(t, 16), "special": t.special, "prob": prob}


def answer_explanation(tokenizer, report: dict, prompt_len: int, choice: ChoiceText, unexplained: int = 0) -> dict:
    """The `explain` object of one choice from token_report over prompt + answer: {"about", "prompt_tokens",
    "tokens": [{index, id, text, label, special, prob, rank, top: [...], attended: [{index, text, label, weight}]}],
    "unexplained"}: the last `unexplained` answer tokens (past the model's context) have no entry."""
    tokens, positions = report["tokens"], report["positions"]
    out = []
    for k, piece in enumerate(token_pieces(choice)[: len(choice.tokens) - unexplained]):
        at = prompt_len + k  # the token's index in prompt + answer
        chose = positions[at - 1]  # the position whose output chose it
        nxt = chose["next"]
        out.append(
            {
                "index": at,
                "id": nxt["id"],
                "text": piece,
                "label": tokens[at]["label"],
                "special": nxt["special"],
                "prob": nxt["prob"],
                "rank": nxt["rank"],
                "top": [_shown(tokenizer, c["id"], c["prob"]) for c in chose["top"]],
                "attended": [
                    {"index": a["pos"], "text": tokens[a["pos"]]["text"], "label": a["label"], "weight": a["weight"]}
                    for a in chose["attends"]
                ],
            }
        )
    return {
        "about": EXPLAIN_ABOUT.format(attends=report["attends"]),
        "prompt_tokens": prompt_len,
        "tokens": out,
        "unexplained": unexplained,
    }


_EXPLAINING = threading.Lock()  # one explanation at a time: its attention weights are n_layer x n_head x T x T floats


def _report(model, tokenizer, ids: list[int], top_k: int, attended: int) -> dict:
    with _EXPLAINING:
        return token_report(model, tokenizer, ids, top_k, attended)


async def explain_choice(model, tokenizer, prompt: list[int], choice: ChoiceText, want: tuple[int, int]) -> dict:
    """One forward pass over prompt + the choice's answer (explain.token_report, in a thread, one at a time in
    this process) -> its `explain` object. Answer tokens past the model's context are left unexplained (the
    scheduler slid its window there, so one pass cannot say what the model saw)."""
    top_k, attended = want
    answer = [t.id for t in choice.tokens]
    room = max(0, model.config.block_size - len(prompt))
    ids = prompt + answer[:room]
    try:
        report = await asyncio.to_thread(_report, model, tokenizer, ids, top_k, attended)
    except UserError as e:  # a model explain cannot read: the answer stands, without its explanation
        about, n = EXPLAIN_ABOUT.format(attends="none"), len(prompt)
        return {"about": about, "error": str(e), "prompt_tokens": n, "tokens": [], "unexplained": len(answer)}
    return answer_explanation(tokenizer, report, len(prompt), choice, max(0, len(answer) - room))


# --- response objects ----------------------------------------------------------------------------------
class Reply:
    """The fixed parts of one response (id, created, model, object names) and builders for its objects."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": None}

    def logprobs(self, tokenizer, choice: ChoiceText, want: int | None, last: bool = False) -> dict | None:
        """The choice's log-probabilities in this endpoint's shape (None when not asked for); `last`: only
        its newest token (one streamed chunk)."""
        if want is None:
            return None
        tokens, starts = (choice.tokens[-1:], choice.starts[-1:]) if last else (choice.tokens, choice.starts)
        if self.chat:
            return chat_logprobs(tokenizer, tokens)
        return text_logprobs(tokenizer, tokens, starts, bytes(choice.buf))

    def full(self, choices: list[dict], usage: dict) -> dict:
        """The non-streaming object; `choices` hold index, text, finish_reason, logprobs."""
        out = []
        for c in choices:
            if self.chat:
                out.append(
                    {
                        "index": c["index"],
                        "message": {"role": "assistant", "content": c["text"], "refusal": None},
                        "logprobs": c["logprobs"],
                        "finish_reason": c["finish_reason"],
                    }
                )
                if "explain" in c:  # the extension, only when asked for
                    out[-1]["explain"] = c["explain"]
            else:
                out.append(
                    {
                        "index": c["index"],
                        "text": c["text"],
                        "logprobs": c["logprobs"],
                        "finish_reason": c["finish_reason"],
                    }
                )
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": out, "usage": usage}

    def chunk(
        self,
        index: int,
        text: str | None,
        finish: str | None = None,
        logprobs=None,
        first: bool = False,
        usage: dict | None = None,
        include_usage: bool = False,
        explain: dict | None = None,
    ) -> str:
        """One SSE event: a piece of choice `index` (text None: only the finish_reason; `explain`, the chat
        extension's object, rides on a choice's finishing chunk)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            if explain is not None:
                choice["explain"] = explain
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        obj = {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}
        if include_usage:
            obj["usage"] = None
        return sse(obj)

    def usage_chunk(self, usage: dict) -> str:
        return sse(
            {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [], "usage": usage}
        )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
