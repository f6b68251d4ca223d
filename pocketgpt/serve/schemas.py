"""The API's request bodies and error object as JSON Schema, for the OpenAPI document at /openapi.json.

The routes read their bodies by hand (protocol.py, extras.py), so that every refusal is an OpenAI error object naming
the bad parameter; these schemas describe the same rules for clients and tools (tests/serve/test_schemathesis.py
fuzzes the server from them: no 5xx, every error an OpenAI error object). What the parsers check beyond a schema
(a prompt's length in tokens, ids below the vocabulary size, a combination of options) stays in the parsers.
"""

from __future__ import annotations

INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
TEXTS = {"type": "array", "items": STR, "minItems": 1}
STOP = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": 200},
        {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200}, "maxItems": 4},
        {"type": "null"},
    ]
}

SAMPLING = {
    "model": STR,
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1},
    "stop": STOP,
    "seed": INT,
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "logit_bias": {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "description": "token id (as a string) -> bias added to its logit",
    },
    "stream": BOOL,
    "stream_options": {"type": "object", "properties": {"include_usage": BOOL}, "additionalProperties": False},
    "user": STR,
    "top_k": {"type": "integer", "minimum": 0, "description": "extension (as vLLM): keep the k most likely tokens"},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1, "description": "extension: drop tokens below min_p x max"},
    "repetition_penalty": {"type": "number", "minimum": 0.01, "maximum": 100, "description": "extension"},
    # accepted and ignored, as OpenAI clients send them
    "store": BOOL,
    "metadata": {"type": "object"},
    "service_tier": STR,
    "parallel_tool_calls": BOOL,
}

COMPLETION = {
    "type": "object",
    "required": ["prompt"],
    "additionalProperties": False,
    "properties": {
        **SAMPLING,
        "prompt": {"oneOf": [STR, TEXTS, IDS, {"type": "array", "items": IDS, "minItems": 1}]},
        "max_tokens": {"type": "integer", "minimum": 0, "description": "0 with echo: score the prompt only"},
        "echo": BOOL,
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        "best_of": {"type": "integer", "minimum": 1, "description": "unset or equal to n"},
        "suffix": {"type": "null", "description": "not supported"},
    },
}

TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": STR},
}
MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"oneOf": [STR, {"type": "array", "items": TEXT_PART}]},
    },
}
CHAT = {
    "type": "object",
    "required": ["messages"],
    "additionalProperties": False,
    "properties": {
        **SAMPLING,
        "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "logprobs": BOOL,
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "response_format": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": ["text", "json_object", "json_schema"]},
                "json_schema": {"type": "object", "properties": {"name": STR, "schema": {"type": "object"}}},
            },
        },
        "tools": {"type": "array", "maxItems": 0, "description": "this model cannot call tools"},
        "tool_choice": {"const": "none"},
        "explain": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5},
                "attended": {"type": "integer", "minimum": 0, "maximum": 20, "default": 3},
            },
            "description": "extension (the chat page's token view): each choice gets `explain`, on its finishing "
            "chunk when streamed: {about, prompt_tokens, unexplained, tokens: [{index, id, text, label, special, "
            "prob, rank, top: [{id, text, label, special, prob}] (top_k most likely, most likely first), attended: "
            "[{index, text, label, weight}]}]}. prob is softmax of the model's logits where the token was chosen "
            "(temperature 1, before top-p, penalties or a grammar); attended lists the `attended` tokens (index into "
            "prompt + answer, always before the token) that the last layer, averaged over its heads, weighted most "
            "there; the texts joined are the answer",
        },
    },
}
EMBEDDINGS = {
    "type": "object",
    "required": ["input"],
    "additionalProperties": False,
    "properties": {
        "input": {"oneOf": [STR, TEXTS, IDS, {"type": "array", "items": IDS, "minItems": 1}]},
        "model": STR,
        "encoding_format": {"enum": ["float", "base64"]},
        "user": STR,
    },
}
TOKENIZE = {
    "type": "object",
    "required": ["content"],
    "properties": {"content": STR, "add_special": BOOL},
}
DETOKENIZE = {
    "type": "object",
    "required": ["tokens"],
    "properties": {"tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": STR,
                "type": STR,
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

OK_OR_STREAM = {
    "description": "the completion: one JSON object, or with stream=true server-sent events ending in data: [DONE]",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


def body(schema: dict) -> dict:
    """`openapi_extra` for a route that reads a JSON body by hand: the body's schema in the OpenAPI document."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(*codes: int) -> dict:
    """`responses` for a route: each status code's body is an OpenAI error object."""
    what = {
        400: "a bad parameter (named in error.param)",
        401: "a missing or wrong API key",
        404: "an unknown model or route",
        413: "a body over the server's limit",
        429: "the queue is full: retry later",
        503: "the server is starting or draining",
    }
    return {c: {"description": what[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}
