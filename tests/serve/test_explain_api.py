"""The chat extension `explain` ({"explain": {"top_k", "attended"}} in a /v1/chat/completions body): every answer
token's probability, top alternatives and most-attended earlier tokens, checked against the model computed here
on its own (its logits' softmax, and the last layer's attention worked out by hand from its q and k), JSON and
streamed; the token texts joined are the answer; bad values are 400 OpenAI error objects."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import torch
from serve_helpers import MODEL, chat_ckpt, make_app, running, server  # noqa: F401  (fixtures)

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.generate.scheduler import Token
from pocketgpt.serve.output import ChoiceText, token_pieces
from pocketgpt.tokenizer.chat import answer_stops, render_for_completion

MESSAGES = [{"role": "user", "content": "Tell me about tokens."}]  # the tiny model's greedy answer is 8+ tokens
TOP_K, ATTENDED = 4, 3


@pytest.fixture(scope="module")
def reference(chat_ckpt):  # noqa: F811
    """(probabilities, attention) of ids by the model alone: softmax of its logits (float64), and the last
    layer's attention weights, mean over heads, from its own q and k: softmax(q k^T / sqrt(d) + causal mask)."""
    ck = load_checkpoint(chat_ckpt)
    model = ck.model.eval()
    cfg = model.config
    assert cfg.pos_encoding == "learned" and not cfg.qk_norm  # what the hand-written attention below assumes

    @torch.no_grad()
    def run(ids: list[int]):
        seen = {}
        last = model.transformer.h[-1].attn

        def keep_input(module, args, out) -> None:  # returns None: the output stays as it is
            seen["x"] = args[0]

        hook = last.register_forward_hook(keep_input)
        try:
            logits, _ = model(torch.tensor([ids]))
        finally:
            hook.remove()
        q, k, _ = last.c_attn(seen["x"][0]).split(cfg.n_embd, dim=-1)  # (T, C) each
        T, hs = len(ids), cfg.n_embd // cfg.n_head
        q = q.view(T, cfg.n_head, hs).transpose(0, 1).double()  # (nh, T, hs)
        k = k.view(T, cfg.n_head, hs).transpose(0, 1).double()  # (nh, T, hs)
        scores = q @ k.transpose(1, 2) / math.sqrt(hs)  # (nh, T, T)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        attention = scores.softmax(dim=-1).mean(dim=0)  # (T, T)
        return logits[0].double().softmax(dim=-1), attention

    return run, ck.tokenizer


def _chat(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, **body}, timeout=60)


def _check_against_model(explain: dict, content: str, reference, prompt_len: int, greedy: bool) -> None:
    run, tok = reference
    tokens = explain["tokens"]
    assert explain["prompt_tokens"] == prompt_len
    assert tokens, "nothing was explained: the test needs an answer of a few tokens"
    assert "".join(t["text"] for t in tokens) == content  # the page can show the answer token by token
    ids = render_for_completion(MESSAGES, tok) + [t["id"] for t in tokens]
    assert len(ids) == prompt_len + len(tokens)
    probs, attention = run(ids)
    for k, t in enumerate(tokens):
        at = prompt_len + k
        assert t["index"] == at and not t["special"]  # role tokens never show in the answer
        row = probs[at - 1]  # the position that chose token `at`
        assert t["prob"] == pytest.approx(float(row[t["id"]]), rel=1e-4, abs=1e-9)
        assert t["rank"] == int((row > row[t["id"]] * (1 + 1e-6)).sum()) + 1
        if greedy:  # temperature 0 takes the most likely token
            assert t["rank"] == 1 and t["top"][0]["id"] == t["id"]
        want_p, want_i = row.topk(TOP_K)
        got = [c["prob"] for c in t["top"]]
        assert [c["id"] for c in t["top"]] == want_i.tolist()
        assert got == sorted(got, reverse=True) and got == pytest.approx(want_p.tolist(), rel=1e-4, abs=1e-9)
        att = t["attended"]
        assert len(att) == min(ATTENDED, at)
        assert all(0 <= a["index"] < at for a in att)  # earlier tokens only: prompt or answer
        weights = attention[at - 1, :at]
        assert [a["index"] for a in att] == weights.topk(len(att)).indices.tolist()
        assert [a["weight"] for a in att] == pytest.approx(weights.topk(len(att)).values.tolist(), rel=1e-4)
        for a in att:
            assert a["text"] == tok.decode_bytes([ids[a["index"]]]).decode("utf-8", "replace")
            assert a["label"]


def test_explain_json_numbers_equal_the_model(server, reference):  # noqa: F811
    url, _ = server
    _, tok = reference
    r = _chat(url, max_tokens=10, temperature=0, explain={"top_k": TOP_K, "attended": ATTENDED})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 5, r.text
    choice = r.json()["choices"][0]
    ex = choice["explain"]
    assert ex["unexplained"] == 0 and "last layer" in ex["about"]
    assert len(ex["tokens"]) == r.json()["usage"]["completion_tokens"]
    _check_against_model(ex, choice["message"]["content"], reference, r.json()["usage"]["prompt_tokens"], True)
    plain = _chat(url, max_tokens=10, temperature=0)
    assert "explain" not in plain.json()["choices"][0]  # off unless asked for; the answer is the same
    assert plain.json()["choices"][0]["message"] == choice["message"]


def test_explain_streamed_rides_on_each_finishing_chunk(server, reference):  # noqa: F811
    url, _ = server
    _, tok = reference
    body = dict(max_tokens=8, temperature=1.0, seed=7, n=2, explain={"top_k": TOP_K}, stream=True)
    r = _chat(url, **body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    texts, explained = {0: "", 1: ""}, {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] += ch["delta"].get("content") or ""
            if "explain" in ch:
                assert ch["finish_reason"] and ch["index"] not in explained
                explained[ch["index"]] = ch["explain"]
    assert sorted(explained) == [0, 1]
    prompt_len = len(render_for_completion(MESSAGES, tok))
    for i in (0, 1):
        _check_against_model(explained[i], texts[i], reference, prompt_len, False)
    # the same request as one JSON body: the same answers, the same explanations
    full = _chat(url, **{**body, "stream": False}).json()["choices"]
    assert [c["message"]["content"] for c in full] == [texts[0], texts[1]]
    assert [c["explain"] for c in full] == [explained[0], explained[1]]


def test_a_stop_string_ends_the_explained_tokens_too(server, reference):  # noqa: F811
    url, _ = server
    body = dict(max_tokens=12, temperature=1.0, seed=3, explain={})
    whole = _chat(url, **body).json()["choices"][0]["message"]["content"]
    stop = next((c for c in whole if c.isascii() and c.isprintable() and whole.index(c) > 0), None)
    assert stop, f"the test needs an answer with a printable ASCII character after its first one: {whole!r}"
    r = _chat(url, **body, stop=stop).json()["choices"][0]
    content = r["message"]["content"]
    assert content == whole[: whole.index(stop)]
    assert "".join(t["text"] for t in r["explain"]["tokens"]) == content
    first = r["explain"]["tokens"][0]
    assert len(first["top"]) == 5 and len(first["attended"]) == 3  # the defaults


def test_answer_tokens_past_the_context_are_left_unexplained(chat_ckpt, reference):  # noqa: F811
    """A model that never ends its answer: 60 tokens after a 22-odd token prompt pass its 64-token context."""
    app = make_app(chat_ckpt, max_tokens=100)
    scheduler = app.state.served.scheduler
    submit = scheduler.submit_all
    scheduler.submit_all = lambda ids, sample, stop_ids, **kw: submit(ids, sample, [], **kw)
    block = scheduler.cfg.block_size
    with running(app) as url:
        r = _chat(url, max_tokens=60, temperature=0, explain={"top_k": TOP_K, "attended": ATTENDED}).json()
    used, choice = r["usage"], r["choices"][0]
    assert used["prompt_tokens"] + used["completion_tokens"] > block, used  # the case this test is about
    ex = choice["explain"]
    assert len(ex["tokens"]) == block - used["prompt_tokens"]
    assert ex["unexplained"] == used["completion_tokens"] - len(ex["tokens"])
    assert max(t["index"] for t in ex["tokens"]) == block - 1
    shown = "".join(t["text"] for t in ex["tokens"])
    assert choice["message"]["content"].startswith(shown) and len(shown) < len(choice["message"]["content"])
    _check_against_model(ex, shown, reference, used["prompt_tokens"], True)


def test_token_pieces_split_characters_and_stop_strings(reference):
    """Each token's share of the text: a character split over two byte tokens goes to the one completing it;
    a stop string cuts the last kept token; joined, the pieces are the text."""
    _, tok = reference
    the = tok.encode(" the")
    assert len(the) == 1, "the test needs ' the' to be one token"
    ids = [ord("h"), 0xC3, 0xA9, 0xFF, *the, ord("!")]
    text = ChoiceText(tok, ("he",))  # "he" starts inside " the": the text ends with " t"
    for i in ids:
        text.feed(Token(i))
    text.flush()
    pieces = token_pieces(text)
    assert text.text == "h\u00e9\ufffd t" and "".join(pieces) == text.text
    assert pieces == ["h", "", "\u00e9", "\ufffd", " t"]
    assert [t.id for t in text.tokens] == ids[:5]  # "!" came after the stop string: not part of the answer


def test_role_tokens_written_out_never_reach_the_explained_answer(reference):
    """A model that spells "<|user|>" in ordinary pieces ends its answer there (answer_stops), and no explained
    token holds any of it (the stop ids themselves never reach the answer: the scheduler does not emit them)."""
    _, tok = reference
    ids = [*tok.encode("hi"), *(ord(c) for c in "<|user|>"), *tok.encode("more")]
    text = ChoiceText(tok, answer_stops())
    for i in ids:
        text.feed(Token(i))
    text.flush()
    assert text.text == "hi" and token_pieces(text) == [tok.decode([i]) for i in tok.encode("hi")]
    assert [t.id for t in text.tokens] == tok.encode("hi")


BAD = [
    5,
    "yes",
    True,
    [],
    {"top_k": 0},
    {"top_k": 21},
    {"top_k": 2.5},
    {"top_k": "3"},
    {"top_k": True},
    {"attended": -1},
    {"attended": 21},
    {"layers": [0]},
]


@pytest.mark.parametrize("value", BAD, ids=[json.dumps(v) for v in BAD])
def test_bad_explain_values_are_400_openai_errors(server, value):  # noqa: F811
    url, _ = server
    r = _chat(url, max_tokens=2, explain=value)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == "explain" and "explain" in err["message"]


def test_explain_is_a_chat_extension_documented_in_the_schema(server):  # noqa: F811
    url, _ = server
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "explain": {}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "explain"
    assert "explain" not in _chat(url, max_tokens=2, explain=None).json()["choices"][0]  # null: off
    doc = httpx.get(url + "/openapi.json").json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    prop = chat["properties"]["explain"]
    assert prop["properties"]["top_k"]["maximum"] == 20 and prop["additionalProperties"] is False
