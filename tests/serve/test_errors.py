"""Every refusal is an OpenAI error object with the right status, and a malformed request never yields a 5xx."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_helpers import MODEL, chat_ckpt, client, make_app, openai, running, server  # noqa: F401  (fixtures)

from pocketgpt.checkpoint import Checkpoint, load_checkpoint
from pocketgpt.serve import ServeConfig, create_app
from pocketgpt.tokenizer import Tokenizer

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def assert_error(r: httpx.Response, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_bad_parameters_are_400_naming_the_parameter(server):
    url, _ = server
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model=MODEL, messages=CHAT["messages"], temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client(url).completions.create(model=MODEL, prompt="word " * 500, max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client(url).chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    assert e.value.body["param"] == "model"


MALFORMED = [
    b"{not json",
    b"",
    b"null",
    b"[]",
    b'"text"',
    b"7",
    b"[" * 100_000,
    b'{"temperature": NaN}',
    b"\xff\xfe\x00",
]
BAD_FIELDS = [
    {"messages": "hello"},
    {"messages": []},
    {"messages": [5]},
    {"messages": [{"role": "bot", "content": "x"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
    {"max_tokens": -1},
    {"max_tokens": 10**9},
    {"max_tokens": "many"},
    {"max_tokens": 2.5},
    {"temperature": "hot"},
    {"temperature": True},
    {"top_p": 2},
    {"n": 0},
    {"n": 10**6},
    {"seed": "x"},
    {"stop": ["a"] * 9},
    {"stop": [""]},
    {"stop": 5},
    {"logit_bias": {"abc": 1}},
    {"logit_bias": {"1": 1000}},
    {"logit_bias": []},
    {"presence_penalty": 3},
    {"frequency_penalty": float("inf")},
    {"stream": "yes"},
    {"top_logprobs": 3},
    {"logprobs": True, "top_logprobs": 50},
    {"stream_options": {"include_usage": True}},
    {"tools": [{"x": 1}]},
    {"response_format": {"type": "yaml"}},
    {"unknown_field": 1},
    {"model": 5},
    {"user": []},
    {"top_k": -1},
    {"min_p": 9},
]


def test_malformed_requests_never_yield_a_5xx(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as h:
        for raw in MALFORMED:
            r = h.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            assert_error(r, 400)
        for patch in BAD_FIELDS:
            body = json.loads(json.dumps({**CHAT, **patch}, allow_nan=True))
            r = h.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
            err = assert_error(r, 400)
            assert "pydantic" not in r.text and "loc" not in err, r.text
        for prompt in ([], [[]], [-1], [True], [1, "a"], {"a": 1}, None, 10**9):
            r = h.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
            assert_error(r, 400, "prompt")
        echo_stream = {"model": MODEL, "prompt": "x", "echo": True, "stream": True}  # echo works without stream
        assert_error(h.post("/v1/completions", json=echo_stream), 400, "echo")
        assert_error(h.get("/v1/chat/completions"), 405)
        assert_error(h.get("/v2/nothing"), 404)
        assert_error(h.get("/v1/models/other"), 404, "model")
        assert_error(h.post("/v1/chat/completions", content=b"x" * (2 << 20)), 413)
        assert h.get("/health").json()["status"] == "ok"  # still serving


def test_a_checkpoint_without_chat_tokens_refuses_chat(chat_ckpt):
    ck = load_checkpoint(chat_ckpt)
    char = Tokenizer.train(["abc"], vocab_size=None, kind="char")
    plain = Tokenizer("char", char._tokens[:257], {"<|endoftext|>": 256})  # bytes + <|endoftext|> only
    app = create_app(Checkpoint(ck.path, ck.model, plain, {}), model_name=MODEL)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        err = assert_error(h.post("/v1/chat/completions", json=CHAT), 400, "messages")
        assert err["code"] == "chat_not_supported"
        r = h.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_key_is_required_on_v1_routes(chat_ckpt):
    with running(make_app(chat_ckpt, api_key="s3cret")) as url, httpx.Client(base_url=url, timeout=30) as h:
        assert h.get("/health").status_code == 200
        assert_error(h.get("/v1/models"), 401)
        assert_error(h.post("/v1/chat/completions", json=CHAT), 401)
        assert_error(h.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(h.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "s3cret"}), 401)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert client(url, "s3cret").chat.completions.create(**CHAT).choices[0].message.role == "assistant"


LONG = {"model": MODEL, "prompt": "x", "max_tokens": 50_000, "logit_bias": {"101": 100}}  # never stops early


def _first_chunk(url: str, holder: list, ready: threading.Event) -> None:
    """Open a long stream (a forced ordinary token never stops it), read its first event, then hold the connection
    until told to drop it."""
    body = {**LONG, "stream": True}
    with httpx.Client(base_url=url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        holder.append(r.status_code)
        lines = r.iter_lines()  # kept referenced: closing it would close the connection
        for line in lines:
            if line.startswith("data:"):
                break
        ready.set()
        while not holder[-1] == "drop":
            time.sleep(0.02)


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(chat_ckpt):
    limits = ServeConfig(max_batch=1, max_queue=1, max_tokens=100_000)
    app = make_app(chat_ckpt, limits=limits)
    sched = app.state.served.scheduler
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        a, a_ready = [], threading.Event()
        ta = threading.Thread(target=_first_chunk, args=(url, a, a_ready))
        ta.start()
        assert a_ready.wait(30) and a[0] == 200  # a holds the only row
        b, b_ready = [], threading.Event()
        tb = threading.Thread(target=_first_chunk, args=(url, b, b_ready))
        tb.start()
        deadline = time.monotonic() + 30
        while sched.stats()["waiting"] < 1:  # b waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = h.post("/v1/chat/completions", json=CHAT)
        assert assert_error(r, 429)["code"] == "queue_full"
        assert r.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):
            client(url).chat.completions.create(**CHAT)
        a.append("drop")  # a's client goes away ...
        ta.join(30)
        assert b_ready.wait(30) and b[0] == 200  # ... which frees the row for b
        b.append("drop")
        tb.join(30)
        deadline = time.monotonic() + 30
        while sched.stats()["running"] or sched.stats()["waiting"]:  # b's disconnect frees its row too
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert sched.finished >= 2
        assert h.post("/v1/chat/completions", json=CHAT).status_code == 200
        calls = sched.decode_calls  # a JSON request whose client leaves ...
        with pytest.raises(httpx.ReadTimeout):
            h.post("/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 30
        while sched.stats()["running"]:  # ... is cancelled within a poll interval
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert sched.decode_calls - calls < LONG["max_tokens"] - 1
        sched.close()  # shutting down: 503
        assert_error(h.post("/v1/chat/completions", json=CHAT), 503)
