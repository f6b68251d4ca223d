"""Schemathesis fuzzes a real server from its own OpenAPI schema (/openapi.json): bodies that fit the schema and
bodies that break it, a bounded number per route. No request may get a 5xx, every error is an OpenAI error object
({"error": {"message", "type", ...}}), documented responses match the schema, and the server is alive after."""

from __future__ import annotations

import collections

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from serve_helpers import chat_ckpt, make_app, running  # noqa: F401  (fixtures)

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

EXAMPLES = 25  # per route and generation mode: about 450 requests


@pytest.fixture(scope="module")
def fuzzed(chat_ckpt):  # noqa: F811
    app = make_app(chat_ckpt, max_tokens=8, max_n=2, max_queue=16)
    with running(app) as url:
        yield url


ROUTES = [
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(fuzzed + "/openapi.json")


def test_the_schema_documents_every_api_route(fuzzed):
    doc = httpx.get(fuzzed + "/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert set(ROUTES) == routes  # the chat page's files are for browsers, not in the API
    body = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in body["required"] and "echo" in body["properties"]


CASES = [(m, p, "positive") for m, p in ROUTES] + [
    (m, p, "negative") for m, p in ROUTES if m == "POST"
]  # GETs: no body


@pytest.mark.parametrize("method,path,mode", CASES)
def test_fuzzed_requests_get_no_5xx_and_openai_errors(api_schema, fuzzed, method, path, mode):
    operation = api_schema[path][method]
    seen = []

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def fuzz(case):
        response = case.call(base_url=fuzzed, timeout=60)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        seen.append(response.status_code)
        if response.status_code >= 400:
            err = response.json().get("error")
            assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], response.text
            assert isinstance(err.get("type"), str)

    fuzz()
    print(method, path, mode, sorted(collections.Counter(seen).items()))
    assert seen  # it did send requests
    if mode == "negative" and method == "POST":
        assert any(400 <= c < 500 for c in seen)  # broken bodies were refused


def test_the_server_is_alive_after_the_fuzzing(fuzzed):
    assert httpx.get(fuzzed + "/health").json()["state"] == "ready"
    r = httpx.post(fuzzed + "/v1/completions", json={"prompt": "hello", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
