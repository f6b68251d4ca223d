"""response_format json_object / json_schema: the reply always parses and validates (llguidance masks the tokens
the grammar forbids), for a random model sampling at temperature 1; bad schemas are a 400."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import MODEL, chat_ckpt, client, server  # noqa: F401  (fixtures)

pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


def valid(obj) -> bool:
    return (
        set(obj) == {"name", "age", "pet"}
        and isinstance(obj["name"], str)
        and len(obj["name"]) <= 6
        and isinstance(obj["age"], int)
        and 0 <= obj["age"] <= 120
        and obj["pet"] in ("cat", "dog", "none")
    )


def test_json_schema_replies_always_validate(server):
    url, _ = server
    c = client(url)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    r = c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, temperature=1.0, n=4, seed=1, response_format=fmt
    )
    for ch in r.choices:
        assert ch.finish_reason == "stop", ch.message.content
        assert valid(json.loads(ch.message.content)), ch.message.content
    streamed = c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=200, temperature=1.0, seed=1, response_format=fmt, stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
    assert text == r.choices[0].message.content  # streamed = not streamed, seed for seed


def test_json_object_replies_parse_when_they_end(server):
    """Any JSON object is unbounded (a random model may write one string forever): a reply that ends ("stop")
    parses as an object; one cut by max_tokens ("length") is still the start of one."""
    url, _ = server
    r = client(url).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=300,
        temperature=0.7,
        n=6,
        seed=2,
        response_format={"type": "json_object"},
    )
    ended = [ch for ch in r.choices if ch.finish_reason == "stop"]
    assert ended, [ch.message.content for ch in r.choices]
    for ch in r.choices:
        assert ch.message.content.startswith("{")
    for ch in ended:
        assert isinstance(json.loads(ch.message.content), dict), ch.message.content


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        "json",
    ],
)
def test_bad_response_formats_are_400(server, fmt):
    url, _ = server
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
