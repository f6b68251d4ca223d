"""The OpenAI API through the official `openai` client: chat and completions, JSON and streaming, n, stop, seeds."""

from __future__ import annotations

import threading

import httpx
import pytest
from serve_helpers import MODEL, chat_ckpt, client, server  # noqa: F401  (fixtures)

from pocketgpt.checkpoint import load_checkpoint
from pocketgpt.config import SampleConfig
from pocketgpt.generate.text import TextGenerator
from pocketgpt.tokenizer.chat import render_for_completion, stop_token_ids

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about tokens."}]


@pytest.fixture(scope="module")
def reference(chat_ckpt):
    """What the model says without the server: greedy chat answers and completions, via TextGenerator."""
    ck = load_checkpoint(chat_ckpt)
    gen = TextGenerator(ck.model, ck.tokenizer)

    def chat(messages, n=12, temperature=0, **kw):
        ids = render_for_completion(messages, ck.tokenizer)
        return gen.complete_ids(
            ids, SampleConfig(max_new_tokens=n, temperature=temperature, **kw), stop_token_ids(ck.tokenizer)
        )

    def complete(prompt, n=12, temperature=0, **kw):
        return gen.complete([prompt], SampleConfig(max_new_tokens=n, temperature=temperature, **kw))[0][0]

    return chat, complete, ck.tokenizer


def test_health_and_models(server):
    url, _ = server
    import httpx

    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    c = client(url)
    assert [m.id for m in c.models.list().data] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL


def test_chat_json_and_stream_equal_the_model_alone(server, reference):
    url, _ = server
    chat, _, tok = reference
    want = chat(MESSAGES)
    r = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    prompt = len(render_for_completion(MESSAGES, tok))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, len(want.tokens))
    assert r.usage.total_tokens == prompt + len(want.tokens)

    chunks = list(
        client(url).chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_completion_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        want.finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.tokens)


def test_completions_json_stream_and_lists_of_prompts(server, reference):
    url, _ = server
    _, complete, _ = reference
    c = client(url)
    r = c.completions.create(model=MODEL, prompt="The model reads", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == complete("The model reads", 10).text
    assert r.choices[0].finish_reason in ("stop", "length")
    pieces = [
        ch.choices[0].text
        for ch in c.completions.create(model=MODEL, prompt="The model reads", max_tokens=10, temperature=0, stream=True)
    ]
    assert "".join(pieces) == r.choices[0].text
    many = c.completions.create(
        model=MODEL, prompt=["The model", "A residual stream"], max_tokens=6, n=2, temperature=0
    )
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == complete("The model", 6).text
    assert many.choices[2].text == complete("A residual stream", 6).text
    ids = c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3


def test_n_choices_and_seeds_repeat(server):
    url, _ = server
    c = client(url)

    def ask(seed, stream=False):
        r = c.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.0, n=3, seed=seed, stream=stream
        )
        if not stream:
            return [ch.message.content for ch in r.choices]
        texts = ["", "", ""]
        for chunk in r:
            for ch in chunk.choices:
                texts[ch.index] += ch.delta.content or ""
        return texts

    first = ask(42)
    assert len(first) == 3 and len(set(first)) > 1  # independent samples
    assert ask(42) == first  # the same seed repeats, whatever else runs
    assert ask(42, stream=True) == first
    assert ask(7) != first


def _ascii_stop(text: str) -> str:
    """A two-character ASCII piece that first occurs a few characters into `text`."""
    for i in range(3, len(text) - 2):
        s = text[i : i + 2]
        if s.isascii() and s.strip() and text.find(s) == i:
            return s
    pytest.skip(f"the random model wrote no ASCII to stop on: {text!r}")


@pytest.mark.parametrize("seed", [1, 2])
def test_stop_strings_cut_the_text_and_are_never_sent(server, reference, seed):
    url, _ = server
    _, complete, _ = reference
    full = complete("The model reads", 32, temperature=1.0, seed=seed).text  # seeded: the server repeats it
    stop = _ascii_stop(full)
    want = full[: full.index(stop)]
    c = client(url)
    kw = dict(model=MODEL, prompt="The model reads", max_tokens=32, temperature=1.0, seed=seed)
    r = c.completions.create(**kw, stop=[stop, "zzzz"])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    chunks = list(c.completions.create(**kw, stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_and_logit_bias(server, reference):
    (
        url,
        _,
    ) = server
    _, _, tok = reference
    c = client(url)
    r = c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in content)
    assert all(e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in content)
    r = c.completions.create(model=MODEL, prompt="The", max_tokens=4, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4 and lp.text_offset[0] == 0
    the = tok.encode(" the")[0]
    r = c.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0, logit_bias={str(the): 100})
    assert r.choices[0].text == tok.decode([the]) * 4


def test_concurrent_streams_share_decode_forwards_and_each_equals_its_alone_result(server, reference):
    url, app = server
    _, _, tok = reference
    sched = app.state.served.scheduler
    bodies = [
        {
            "model": MODEL,
            "prompt": p,
            "max_tokens": 400,
            "temperature": 1.0,
            "seed": s,
            "stream": True,
            "logit_bias": {str(tok.eot_id): -100},
        }
        for p, s in (("The model", 1), ("A residual stream carries", 2))
    ]
    texts, started = ["", ""], threading.Event()

    def read(i: int) -> None:
        with httpx.stream("POST", url + "/v1/completions", json=bodies[i], timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    started.set()
                    texts[i] += httpx.Response(200, content=line[6:]).json()["choices"][0]["text"]

    before = len(sched.decode_batch_sizes)
    first = threading.Thread(target=read, args=(0,))
    first.start()
    assert started.wait(30)  # the first stream is decoding ...
    read(1)  # ... when the second joins it
    first.join(60)
    assert 2 in list(sched.decode_batch_sizes)[before:]  # one forward served both streams
    c = client(url)
    for i, body in enumerate(bodies):  # each alone, same seed: the same text
        alone = c.completions.create(**{k: v for k, v in body.items() if k != "stream"})
        assert alone.choices[0].text == texts[i] and alone.usage.completion_tokens == 400


def test_speculative_server_gives_the_same_greedy_text(chat_ckpt, reference, tmp_path):
    """`serve --speculative ngram` (and draft, with the model drafting for itself): greedy completions and chat
    answers equal the model's plain greedy output, streamed or not; a bad pairing of the options is refused."""
    from serve_helpers import make_app, running

    from pocketgpt.errors import UserError

    chat, complete, _ = reference
    for kw in (dict(speculative="ngram"), dict(speculative="draft", draft=str(chat_ckpt), draft_tokens=3)):
        app = make_app(chat_ckpt, **kw)
        with running(app) as url:
            c = client(url)
            r = c.completions.create(model=MODEL, prompt="The model reads", max_tokens=16, temperature=0)
            assert r.choices[0].text == complete("The model reads", 16).text
            streamed = c.completions.create(
                model=MODEL, prompt="The model reads", max_tokens=16, temperature=0, stream=True
            )
            assert "".join(ch.choices[0].text for ch in streamed) == r.choices[0].text
            a = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
            assert a.choices[0].message.content == chat(MESSAGES, 12).text
        assert app.state.served.scheduler.spec_stats.drafted > 0
    with pytest.raises(UserError, match="go together"):
        make_app(chat_ckpt, speculative="draft")
