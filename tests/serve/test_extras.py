"""/tokenize, /detokenize, /v1/embeddings and /metrics; chat answers end at role strings spelled as text."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import MODEL, chat_ckpt, client, server  # noqa: F401  (fixtures)

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.config import ServeConfig
from pocketgpt.serve.protocol import parse_job
from pocketgpt.tokenizer.chat import ROLE_STRINGS


def test_tokenize_and_detokenize_round_trip(server, chat_ckpt):
    url, _ = server
    tok = load_checkpoint(chat_ckpt).tokenizer
    text = "The model reads <|endoftext|> tokens, 中文 🙂"
    r = httpx.post(url + "/tokenize", json={"content": text})
    assert r.status_code == 200 and r.json()["tokens"] == tok.encode(text)  # special strings stay text
    special = httpx.post(url + "/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
    assert tok.eot_id in special and tok.eot_id not in r.json()["tokens"]
    back = httpx.post(url + "/detokenize", json={"tokens": r.json()["tokens"]})
    assert back.status_code == 200 and back.json() == {"content": text}
    for path, body, field in [
        ("/tokenize", {"text": "x"}, "content"),
        ("/tokenize", {"content": "x", "add_special": "yes"}, "add_special"),
        ("/detokenize", {"tokens": [1, "2"]}, "tokens"),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),
    ]:
        bad = httpx.post(url + path, json=body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field


def test_embeddings_are_mean_pooled_hidden_states(server, chat_ckpt):
    url, _ = server
    ck = load_checkpoint(chat_ckpt)
    c = client(url)
    texts = ["The model reads", "A residual stream carries information"]
    r = c.embeddings.create(model=MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1] and r.usage.prompt_tokens == sum(
        len(ck.tokenizer.encode(t)) for t in texts
    )
    with torch.no_grad():
        want = ck.model.eval().hidden(torch.tensor([ck.tokenizer.encode(texts[1])]))[0].mean(0).numpy()
    np.testing.assert_allclose(np.array(r.data[1].embedding), want, atol=1e-5)
    b64 = c.embeddings.create(model=MODEL, input=texts[1], encoding_format="base64")  # asked for: left encoded
    got = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(got, want, atol=1e-5)
    ids = c.embeddings.create(model=MODEL, input=[ck.tokenizer.encode(texts[1])])
    np.testing.assert_allclose(np.array(ids.data[0].embedding), want, atol=1e-5)
    for body, field in [
        ({"input": []}, "input"),
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": [[1, 2], "x", 3]}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ]:
        bad = httpx.post(url + "/v1/embeddings", json=body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field
    assert httpx.post(url + "/v1/embeddings", json={"input": "x", "model": "other"}).status_code == 404


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_count_requests_tokens_and_latencies(server):
    url, _ = server
    before = httpx.get(url + "/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    c = client(url)
    r = c.completions.create(model=MODEL, prompt="The model reads", max_tokens=7, temperature=0)
    httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": -1})  # a 400
    after = httpx.get(url + "/metrics").text
    b = before.text
    assert metric(after, "pocketgpt_completion_tokens_total") - metric(b, "pocketgpt_completion_tokens_total") == 7
    assert metric(after, "pocketgpt_prompt_tokens_total") - metric(b, "pocketgpt_prompt_tokens_total") == (
        r.usage.prompt_tokens
    )
    assert 'pocketgpt_requests_total{route="/v1/completions",status="400"}' in after
    assert 'pocketgpt_requests_total{route="/v1/completions",status="200"}' in after
    assert metric(after, "pocketgpt_time_to_first_token_seconds_count") >= 1
    assert (
        metric(after, "pocketgpt_inter_token_latency_seconds_count")
        - metric(b, "pocketgpt_inter_token_latency_seconds_count")
        == 6
    )
    assert "pocketgpt_prefix_cache_misses_total" in after and "pocketgpt_prefix_cache_hits_total" in after
    for name in ("pocketgpt_queue_depth", "pocketgpt_running_rows", "pocketgpt_kv_cache_bytes"):
        assert f"\n{name} " in after


def test_chat_answers_stop_at_role_strings_spelled_as_text(chat_ckpt):
    """A model can spell "<|system|>" from ordinary pieces; the answer must end there (never show it)."""
    tok = load_checkpoint(chat_ckpt).tokenizer
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["bye"]}
    job = parse_job(body, tok, 64, ServeConfig(), chat=True, template=None)
    assert job.sample.stop == ("bye", *ROLE_STRINGS)
    plain = parse_job({"model": MODEL, "prompt": "hi"}, tok, 64, ServeConfig(), chat=False)
    assert plain.sample.stop == ()  # completions are raw text: the caller decides


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize", "/v1/embeddings"])
def test_the_new_routes_need_the_key_when_there_is_one(chat_ckpt, path):
    from serve_helpers import make_app, running

    with running(make_app(chat_ckpt, api_key="k")) as url:
        assert httpx.post(url + path, json={}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 200  # open, like /health


def test_echo_with_logprobs_scores_the_prompt_as_eval_does(server, chat_ckpt, tmp_path, run_cli):
    """lm-evaluation-harness scores likelihoods with echo=true, logprobs, max_tokens=0: the echoed prompt's
    log-probabilities must add up to `pocketgpt eval`'s loss on the same text."""
    import json

    url, _ = server
    tok = load_checkpoint(chat_ckpt).tokenizer
    text = "The model reads tokens and the residual stream carries information."
    r = httpx.post(
        url + "/v1/completions",
        json={"model": MODEL, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == text and "".join(lp["tokens"]) == text
    assert len(lp["token_logprobs"]) == len(tok.encode(text)) and None not in lp["token_logprobs"]
    assert all(len(t) == 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    (tmp_path / "t.txt").write_text(text)
    code, out, err = run_cli("eval", chat_ckpt, "--data", tmp_path / "t.txt", "--json")
    assert code == 0, err
    ev = json.loads(out.strip().splitlines()[-1])
    assert ev["tokens"] == len(lp["token_logprobs"])
    assert sum(lp["token_logprobs"]) == pytest.approx(-ev["loss"] * ev["tokens"], rel=1e-4)

    ids = tok.encode(text)  # token ids, as lm-eval sends them: nothing added, so the first has no log-probability
    r = httpx.post(
        url + "/v1/completions",
        json={"model": MODEL, "prompt": ids, "max_tokens": 3, "echo": True, "logprobs": 1, "temperature": 0},
    ).json()
    lp = r["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and len(lp["tokens"]) == len(ids) + 3
    assert r["choices"][0]["text"].startswith(text)
    bad = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "echo": True, "stream": True})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "echo"
    zero = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert zero.status_code == 400 and zero.json()["error"]["param"] == "max_tokens"


def test_health_says_starting_ready_and_draining(chat_ckpt):
    import asyncio

    from serve_helpers import make_app, running

    app = make_app(chat_ckpt)

    async def get() -> httpx.Response:  # no lifespan: the scheduler never started
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
            return await h.get("/health")

    r = asyncio.run(get())
    assert r.status_code == 503 and r.json()["state"] == "starting"
    with running(app) as url:
        r = httpx.get(url + "/health")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["state"] == "ready"
        app.state.served.state = "draining"  # what SIGTERM sets (serve/server.py) while requests finish
        r = httpx.get(url + "/health")
        assert r.status_code == 503 and r.json()["state"] == "draining"
