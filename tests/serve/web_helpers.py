"""The chat page's test fixtures: a paced tiny server with an API key, and headless Chromium (Debian's
/usr/bin/chromium or $POCKETGPT_CHROMIUM through Playwright; never a downloaded browser). Without them the browser
tests skip, unless POCKETGPT_REQUIRE_BROWSER=1 (`make test` sets it): then they fail."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_text
from serve_helpers import MODEL, make_app, running  # noqa: F401  (MODEL: re-exported for the tests)

from pocketgpt.checkpoint import save_checkpoint
from pocketgpt.config import ModelConfig
from pocketgpt.model import GPT
from pocketgpt.serve import ServeConfig
from pocketgpt.tokenizer import Tokenizer
from pocketgpt.tokenizer.chat import TEMPLATE

REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "test-artifacts" / "chat-page.png"
CHROMIUM = os.environ.get("POCKETGPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "web-test-key"
LONG = 100_000  # max tokens of the answer the Stop button ends (minutes at the paced speed)


@pytest.fixture(scope="module")
def web_ckpt(tmp_path_factory):
    """Like serve_helpers' chat_ckpt, with a context long enough for a few turns and a stopped answer."""
    tok = Tokenizer.train([make_text(200)], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=4096, vocab_size=tok.n_vocab))
    return save_checkpoint(
        tmp_path_factory.mktemp("web") / "run", "ckpt-0000001", model, tok, step=1, extra={"chat_template": TEMPLATE}
    )


@pytest.fixture(scope="module")
def web(web_ckpt):
    """A server with an API key whose model never ends an answer early: every answer is max_tokens long (the tiny
    random model would emit its end-of-turn token at random). Its decoding is paced to a few hundred tokens a second,
    so that an answer stopped after a second or two stays well inside the context. Yields (base URL, scheduler)."""
    app = make_app(web_ckpt, api_key=KEY, limits=ServeConfig(max_batch=2, max_tokens=LONG))
    scheduler = app.state.served.scheduler
    submit, decode = scheduler.submit_all, scheduler.engine.decode
    scheduler.submit_all = lambda ids, sample, stop_ids, **kw: submit(ids, sample, [], **kw)
    import pocketgpt.serve.protocol as protocol  # nor do special tokens written out end an answer (as they would)

    answer_stops, protocol.answer_stops = protocol.answer_stops, lambda stop=(): tuple(stop)

    def paced_decode(*args, **kwargs):
        time.sleep(0.003)
        return decode(*args, **kwargs)

    scheduler.engine.decode = paced_decode
    try:
        with running(app) as url:
            yield url, scheduler
    finally:
        protocol.answer_stops = answer_stops


def _unavailable(reason: str):
    if os.environ.get("POCKETGPT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; POCKETGPT_REQUIRE_BROWSER=1 forbids skipping the browser test", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[browser]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y --no-install-recommends chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000)
        except Exception as e:  # noqa: BLE001  (any launch failure: say why)
            _unavailable(f"Chromium at {CHROMIUM} did not start: {str(e).strip().splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


# ---- over HTTP, no browser ----


def _last_answer_length(page) -> int:
    return page.evaluate(
        "() => { const a = document.querySelectorAll('.msg.assistant .text');"
        " return a.length ? a[a.length - 1].textContent.length : -1; }"
    )


def _settle(page, answers: int) -> None:
    """Wait until the page holds `answers` assistant messages and none is streaming."""
    from playwright.sync_api import expect

    expect(page.locator("#send")).to_be_enabled(timeout=20_000)
    if page.locator("#error").is_visible():
        pytest.fail(f"the page shows an error: {page.locator('#error').text_content()}", pytrace=False)
    expect(page.locator(".msg.assistant")).to_have_count(answers)
    expect(page.locator(".msg.streaming")).to_have_count(0)
    expect(page.locator("#stop")).to_be_hidden()


def _send(page, text: str):
    """Type `text` and press Enter; returns the POST /v1/chat/completions request the page made."""
    page.locator("#prompt").fill(text)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions") and r.method == "POST") as req:
        page.locator("#prompt").press("Enter")
    return req.value


def _set(page, field: str, value: str) -> None:
    page.locator(field).fill(value)


def _running(url: str) -> dict:
    return httpx.get(url + "/health").json()
