"""The OpenAI request schema: a JSON body in, a checked `Job` out, or an `APIError` naming the bad parameter.

Lives here: the OpenAI error object, and the parsing of /v1/completions and /v1/chat/completions bodies (every
field programs send, each checked with its value in the message) into token ids and a SampleConfig, within the
server's limits. Not here: the limits themselves (`ServeConfig` in config.py; `ServeLimits` is its old name),
routes and HTTP (app.py), generation (generate/), the chat template (tokenizer/chat.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pocketgpt.config import SampleConfig, ServeConfig
from pocketgpt.errors import UserError
from pocketgpt.generate.structured import parse_response_format
from pocketgpt.tokenizer.chat import answer_stops, chat_problem, render_for_completion, stop_token_ids

ServeLimits = ServeConfig  # the old name of the server's settings, kept for callers that import it from here


class APIError(Exception):
    """An error the client sees as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Job:
    """One checked request: prompts as token ids, the sampling settings, and how to answer."""

    chat: bool
    prompts: list[list[int]]
    sample: SampleConfig  # num_samples = n; stop = the stop strings
    stop_ids: list[int]
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: off; else the number of alternatives per token
    echo: bool = False  # completions: the prompt's text (and its tokens' log-probabilities) come first
    echo_skip: int = 0  # leading prompt tokens the server added (<|endoftext|>), not echoed
    grammar: str | None = None  # chat response_format json_object / json_schema: the grammar decoding follows
    explain: tuple[int, int] | None = None  # chat extension `explain`: (top_k, attended) per answer token; None: off


COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "stream",
    "stream_options",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
}  # the last three: extensions (as vLLM accepts)
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls"}
CHAT = (
    COMMON
    | IGNORED
    | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice", "explain"}
)
EXPLAIN_TOP_K = (1, 20, 5)  # the extension `explain`: (least, most, default) alternatives shown per answer token
EXPLAIN_ATTENDED = (0, 20, 3)  # ... and earlier tokens it attended to most
TEXT = COMMON | IGNORED | {"prompt", "echo", "suffix", "best_of"}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(body: dict, name: str, lo: float, hi: float, default):
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v) or not lo <= v <= hi:
        raise bad(f"{name} must be a number between {lo} and {hi}, got {v!r:.40}", name)
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int | None, default):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(f"{name} must be an integer {limit}, got {v!r:.40}", name)
    return v


def _flag(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise bad(f"{name} must be true or false, got {v!r:.40}", name)
    return bool(v)


def parse_job(
    body: Any,
    tokenizer,
    block_size: int,
    limits: ServeConfig,
    *,
    chat: bool,
    template: str | None = None,
    bos: bool = True,
) -> Job:
    """Check a request body and turn it into a Job; APIError (400) names the first bad parameter."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    grammar = None
    for k in body:
        if k not in (CHAT if chat else TEXT):
            raise bad(f"Unrecognized request argument supplied: {k:.60}", k)
    for k in ("user", "model"):
        if body.get(k) is not None and not isinstance(body[k], str):
            raise bad(f"{k} must be a string", k)
    max_prompt = min(limits.max_prompt_tokens or block_size - 1, block_size - 1)
    prompts = _chat_prompt(body, tokenizer, template) if chat else _text_prompts(body, tokenizer, bos)
    if chat and not bos:
        prompts = [p[1:] for p in prompts]  # the template's leading <|endoftext|>
    for ids in prompts:
        if len(ids) > max_prompt:
            raise bad(
                f"This model's maximum context length is {block_size} tokens and this server takes prompts of "
                f"at most {max_prompt} tokens; your prompt has {len(ids)} tokens.",
                "messages" if chat else "prompt",
                "context_length_exceeded",
            )
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    echo = not chat and _flag(body, "echo")
    max_tokens = _integer(body, name, 0 if echo else 1, None, limits.max_tokens)  # echo: 0 scores the prompt only
    if max_tokens > limits.max_tokens:
        raise bad(f"{name} is {max_tokens}, more than this server's limit of {limits.max_tokens}", name)
    n = _integer(body, "n", 1, limits.max_n, 1)
    if len(prompts) * n > limits.max_queue:
        raise bad(f"{len(prompts)} prompts x n={n} sequences exceed this server's queue of {limits.max_queue}", "n")
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:  # only the most likely token survives: greedy
        temperature, top_p = 0.0, 1.0
    seed = _integer(body, "seed", -(1 << 63), (1 << 64) - 1, None)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise bad(
            'stream_options must be an object {"include_usage": bool}, and only given with stream=true',
            "stream_options",
        )
    include_usage = _flag(options or {}, "include_usage")
    logprobs, top = _logprobs(body, chat)
    if not chat:
        if echo and stream:
            raise bad("echo is supported without stream only", "echo")
        if body.get("suffix") is not None:
            raise bad("suffix is not supported by this server", "suffix")
        if body.get("best_of") not in (None, n):
            raise bad("best_of is not supported by this server (leave it unset or equal to n)", "best_of")
    else:
        for k in ("tools", "tool_choice"):
            if body.get(k) not in (None, [], "none"):
                raise bad(f"{k}: this model cannot call tools", k)
        try:
            grammar = parse_response_format(body.get("response_format"))
        except UserError as e:
            raise bad(str(e), "response_format") from None
    try:
        sample = SampleConfig(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=_integer(body, "top_k", 0, None, 0),
            min_p=_number(body, "min_p", 0.0, 1.0, 0.0),
            repetition_penalty=_number(body, "repetition_penalty", 0.01, 100.0, 1.0),
            frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, 0.0),
            presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, 0.0),
            logit_bias=_logit_bias(body, tokenizer.n_vocab),
            seed=None if seed is None else seed % (1 << 62),
            num_samples=n,
            logprobs=logprobs,
            top_logprobs=top,
            stop=answer_stops(_stops(body)) if chat else _stops(body),
            speculative=limits.speculative,
            draft_tokens=limits.draft_tokens,
        )
    except UserError as e:  # a combination SampleConfig refuses
        raise bad(str(e)) from None
    stop_ids = stop_token_ids(tokenizer) if chat else [tokenizer.eot_id]
    skip = 1 if echo and bos and _text_given(body) else 0
    logprobs_k = top if logprobs else None
    job = Job(chat, prompts, sample, stop_ids, stream, include_usage, logprobs_k, echo, skip)
    job.grammar = grammar if chat else None
    job.explain = _explain(body) if chat else None
    return job


def _text_given(body: dict) -> bool:
    p = body.get("prompt")
    return isinstance(p, str) or (isinstance(p, list) and bool(p) and isinstance(p[0], str))


def _chat_prompt(body: dict, tokenizer, template: str | None) -> list[list[int]]:
    problem = chat_problem(tokenizer, template)
    if problem:
        lacks = "lacks" in problem
        raise bad(
            problem + ("; use /v1/completions" if lacks else ""), "messages", "chat_not_supported" if lacks else None
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad('messages must be a non-empty list of {"role", "content"} objects', "messages")
    clean = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{k}] must be an object", "messages")
        m = {key: v for key, v in m.items() if v is not None}
        if m.get("role") == "developer":  # newer clients' name for the system message
            m["role"] = "system"
        content = m.get("content", "")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise bad(f"messages[{k}].content: only text parts are supported", "messages")
            content = "".join(p["text"] for p in content)
        m["content"] = content
        clean.append(m)
    try:
        return [render_for_completion(clean, tokenizer)]
    except UserError as e:
        raise bad(str(e), "messages") from None


def _text_prompts(body: dict, tokenizer, bos: bool = True) -> list[list[int]]:
    """A string, a list of strings, a list of ids, or a list of id lists; strings follow <|endoftext|> when `bos`
    (token ids are taken as given)."""
    p = body.get("prompt")
    head = [tokenizer.eot_id] if bos else []

    def text(x: str) -> list[int]:
        ids = head + tokenizer.encode(x)
        if not ids:
            raise bad("the prompt is empty, and this model's prompts do not start with <|endoftext|>", "prompt")
        return ids

    if isinstance(p, str):
        return [text(p)]
    if isinstance(p, list) and p:
        if all(isinstance(x, str) for x in p):
            return [text(x) for x in p]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in p):
            return [_ids(p, tokenizer.n_vocab)]
        if all(isinstance(x, list) and x for x in p):
            return [_ids(x, tokenizer.n_vocab) for x in p]
    raise bad("prompt must be a string, a list of strings, a list of token ids, or a list of such lists", "prompt")


def _ids(ids: list, n_vocab: int) -> list[int]:
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_vocab for i in ids):
        raise bad(f"prompt token ids must be integers in 0..{n_vocab - 1}", "prompt")
    return list(ids)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > 4
        or not all(isinstance(s, str) and 0 < len(s) <= 200 for s in stops)
    ):
        raise bad("stop must be a non-empty string or a list of at most 4 of them (200 characters at most)", "stop")
    return tuple(stops)


def _logit_bias(body: dict, n_vocab: int) -> dict[int, float] | None:
    lb = body.get("logit_bias")
    if lb is None:
        return None
    if not isinstance(lb, dict) or len(lb) > 1024:
        raise bad("logit_bias must be an object mapping token ids to numbers (1024 entries at most)", "logit_bias")
    out = {}
    for k, v in lb.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) < n_vocab) or not _is_num(v) or not -100 <= v <= 100:
            raise bad(
                f"logit_bias: {k!r:.30} -> {v!r:.30}: keys are token ids in 0..{n_vocab - 1}, values numbers "
                "in [-100, 100]",
                "logit_bias",
            )
        out[int(k)] = float(v)
    return out or None


def _explain(body: dict) -> tuple[int, int] | None:
    """The chat extension {"explain": {"top_k": 1..20, "attended": 0..20}} (both optional) -> (top_k, attended);
    absent or null: None (off)."""
    e = body.get("explain")
    if e is None:
        return None
    if not isinstance(e, dict) or set(e) - {"top_k", "attended"}:
        raise bad(
            'explain must be an object {"top_k": integer 1..20, "attended": integer 0..20} (both optional), '
            f"got {e!r:.60}",
            "explain",
        )
    out = []
    for key, (lo, hi, default) in (("top_k", EXPLAIN_TOP_K), ("attended", EXPLAIN_ATTENDED)):
        try:
            out.append(_integer(e, key, lo, hi, default))
        except APIError as err:
            raise bad(f"explain.{err.message}", "explain") from None
    return out[0], out[1]


def _logprobs(body: dict, chat: bool) -> tuple[bool, int]:
    """(return log-probabilities?, alternatives per token): chat takes logprobs: bool + top_logprobs: 0..20,
    completions take logprobs: 0..5."""
    if not chat:
        k = _integer(body, "logprobs", 0, 5, None)
        return k is not None, k or 0
    on = _flag(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, 20, 0)
    if top and not on:
        raise bad("top_logprobs needs logprobs=true", "top_logprobs")
    return on, top
