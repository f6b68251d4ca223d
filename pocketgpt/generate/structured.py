"""Structured output: decoding constrained by a grammar, so the text always parses (llguidance does the work).

    grammar = json_grammar({"type": "object", "properties": {...}})       # or json_grammar(None): any JSON object
    factory = ConstraintFactory(tokenizer, grammar, end_ids=[end])         # checks the grammar: UserError if bad
    constraint = factory()                                                 # one per sequence
    constraint.mask(logits_row)        # -inf on every token the grammar forbids next (in place)
    constraint.consume(token)          # advance; constraint.done once the grammar is complete

llguidance (Microsoft's, the engine behind guidance and several servers) compiles JSON schema to a grammar and
computes the allowed-token mask of a byte-level BPE from the tokenizer's own tiktoken ranks. Whitespace between
JSON tokens is not allowed (compact JSON), so a model cannot pad its answer forever. When the grammar is complete
only the end ids remain allowed, so the answer ends there. The scheduler applies the mask before each pick; the
pick itself (greedy, sampling, penalties) is unchanged.
"""

from __future__ import annotations

import json

import torch

from pocketgpt.errors import UserError

JSON_OPTIONS = {"whitespace_flexible": False}


def _llg():
    try:
        import llguidance
        import llguidance.tiktoken  # noqa: F401
    except ImportError:
        raise UserError("structured output needs llguidance: pip install 'pocketgpt[serve]'") from None
    return llguidance


def json_grammar(schema: dict | None) -> str:
    """The grammar of JSON that `schema` validates (None: any JSON object); UserError for a schema it refuses."""
    llg = _llg()
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(
            {"type": "object"} if schema is None else schema, defaults=JSON_OPTIONS
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"the JSON schema cannot be compiled: {str(e)[:300]}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise UserError(f"the JSON schema cannot be compiled: {messages[0][:300]}")
    return grammar


_LLTOKENIZERS: dict[tuple[int, int, tuple[int, ...]], tuple[object, object]] = {}


def _lltokenizer(tokenizer, n_vocab: int, end_ids: tuple[int, ...]):
    """The tokenizer as llguidance needs it (about a second to build for 50k tokens): built once per tokenizer."""
    key = (id(tokenizer), n_vocab, end_ids)
    hit = _LLTOKENIZERS.get(key)
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    llg = _llg()
    enc = getattr(tokenizer, "_enc", None)
    if enc is None:
        raise UserError("structured output needs a byte-level BPE tokenizer (this checkpoint's is char-level)")
    built = llg.tiktoken.lltokenizer_from_encoding(enc, n_vocab=n_vocab, eos_token=list(end_ids))
    if len(_LLTOKENIZERS) > 8:
        _LLTOKENIZERS.clear()
    _LLTOKENIZERS[key] = (tokenizer, built)
    return built


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, matcher, n_vocab: int):
        self.matcher, self.n_vocab = matcher, n_vocab

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Set every forbidden token's logit to -inf, in place, for one row (V,)."""
        bits = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.uint8)
        allowed = ((bits[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[: logits.shape[-1]].bool()
        if not bool(allowed.any()):  # an error state: let the end ids through rather than dead-end
            raise RuntimeError(f"the grammar allows no token: {self.matcher.get_error()}")
        return logits.masked_fill_(~allowed, float("-inf"))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} broke the grammar: {self.matcher.get_error()}")


class ConstraintFactory:
    """Makes a Constraint per sequence for one grammar (the tokenizer conversion is cached per tokenizer)."""

    def __init__(self, tokenizer, grammar: str, *, n_vocab: int, end_ids: list[int]):
        self.llg = _llg()
        self.lltok = _lltokenizer(tokenizer, n_vocab, tuple(end_ids))
        self.grammar, self.n_vocab = grammar, n_vocab
        probe = self.llg.LLMatcher(self.lltok, grammar, log_level=0)
        if probe.is_error():
            raise UserError(f"the grammar cannot be used: {probe.get_error()[:300]}")

    def __call__(self) -> Constraint:
        return Constraint(self.llg.LLMatcher(self.lltok, self.grammar, log_level=0), self.n_vocab)


def parse_response_format(fmt) -> str | None:
    """OpenAI's response_format -> a grammar (None for plain text); UserError naming what is wrong."""
    if fmt is None or fmt == {"type": "text"}:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise UserError('response_format must be {"type": "text" | "json_object" | "json_schema", ...}')
    if fmt["type"] == "json_object":
        return json_grammar(None)
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise UserError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
    try:
        json.dumps(spec.get("schema", {}))
    except (TypeError, ValueError):
        raise UserError("response_format json_schema.schema must be JSON") from None
    return json_grammar(spec.get("schema") or {"type": "object"})
