"""The chat page of `pocketgpt serve` (GET /): its files and headers over HTTP, and a whole session in headless Chromium.

The browser test drives Debian's /usr/bin/chromium (or $POCKETGPT_CHROMIUM) with Playwright's Python package; it
never downloads a browser. Without them it skips, unless POCKETGPT_REQUIRE_BROWSER=1 (`make test` sets it): then it
fails. It writes a screenshot to test-artifacts/chat-page.png.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_text
from serve_helpers import MODEL, make_app, running

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


def test_page_and_its_files_need_no_key(web):
    url, _ = web
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert 'src="/static/chat.js"' in html and 'src="/static/tokens.js"' in html and 'href="/static/chat.css"' in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere
    for name, kind in (("chat.js", "javascript"), ("tokens.js", "javascript"), ("chat.css", "text/css")):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text and "@import" not in r.text
    assert all("innerHTML" not in httpx.get(f"{url}/static/{js}").text for js in ("chat.js", "tokens.js"))
    assert httpx.get(url + "/v1/models").status_code == 401  # the API itself still needs the key


def test_static_serves_only_its_fixed_files(web):
    url, _ = web
    for path in (
        "/static/app.py",
        "/static/index.html.bak",
        "/static/..%2fapp.py",
        "/static/%2e%2e/app.py",
        "/static/",
        "/static/chat.js/x",
    ):
        r = httpx.get(url + path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.post(url + "/").status_code == 405


# ---- in Chromium ----


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


def test_chat_session_in_chromium(web, browser):
    from playwright.sync_api import expect

    url, _ = web
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    requests, page_errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(url + "/")
        expect(page).to_have_title(re.compile("pocketgpt chat"))
        # No key yet: the page loads (GET / is open) but /v1/models is refused; the message is shown as text.
        error = page.locator("#error")
        expect(error).to_contain_text("You didn't provide an API key")
        expect(error).to_contain_text("HTTP 401")
        expect(page.locator("#model-name")).to_have_text("unavailable")
        expect(page.locator("#settings")).to_have_attribute("open", "")  # opened to show the key field
        _set(page, "#api-key", KEY)
        expect(page.locator("#model-name")).to_have_text(MODEL)
        expect(error).to_be_hidden()

        _set(page, "#system-prompt", "Be brief.")
        _set(page, "#temperature", "0.7")
        _set(page, "#top-p", "0.9")
        _set(page, "#max-tokens", "12")

        # Shift+Enter inserts a new line and sends nothing; Enter sends.
        prompt = page.locator("#prompt")
        prompt.click()
        page.keyboard.type("first line")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("second line")
        expect(prompt).to_have_value("first line\nsecond line")
        expect(page.locator(".msg")).to_have_count(0)
        with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
            page.keyboard.press("Enter")
        req = sent.value
        assert req.headers["authorization"] == f"Bearer {KEY}"
        body = req.post_data_json
        assert body["stream"] is True and body["model"] == MODEL
        assert (body["max_tokens"], body["temperature"], body["top_p"]) == (12, 0.7, 0.9)
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first line\nsecond line"},
        ]
        _settle(page, 1)
        expect(prompt).to_have_value("")
        expect(page.locator(".msg.user .text")).to_have_text("first line\nsecond line")
        first = page.locator(".msg.assistant .text").first.text_content()
        assert first, "the first answer is empty"
        expect(page.locator(".msg.assistant .note").first).to_have_text("Reached the max tokens limit.")

        # A second turn carries the whole conversation; a user's markup stays text.
        markup = '<img src=x onerror="window.pwned=1"> <b>bold?</b>'
        body = _send(page, markup).post_data_json
        assert body["messages"][1:] == [
            {"role": "user", "content": "first line\nsecond line"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": markup},
        ]
        _settle(page, 2)
        expect(page.locator(".msg.user .text").nth(1)).to_have_text(markup)
        assert page.locator("#conversation img, #conversation b").count() == 0
        assert page.evaluate("() => window.pwned === undefined")

        # A long answer streams in (it grows between observations) until Stop ends it.
        _set(page, "#max-tokens", str(LONG))
        _send(page, "Tell me everything.")
        expect(page.locator("#stop")).to_be_visible()
        page.wait_for_function(
            "() => { const a = document.querySelectorAll('.msg.assistant .text');"
            " return a.length === 3 && a[2].textContent.length > 0; }"
        )
        seen = [_last_answer_length(page)]
        for _ in range(2):
            page.wait_for_function(
                "n => { const a = document.querySelectorAll('.msg.assistant .text');"
                " return a[a.length - 1].textContent.length > n; }",
                arg=seen[-1],
            )
            seen.append(_last_answer_length(page))
        assert seen[0] < seen[1] < seen[2], seen
        assert _running(url)["running"] == 1
        page.locator("#stop").click()
        _settle(page, 3)
        stopped = _last_answer_length(page)
        assert stopped >= seen[-1]
        print(f"\nthe stopped answer: {stopped} characters")
        expect(page.locator(".msg.assistant .note").nth(2)).to_have_text("Stopped.")
        page.wait_for_timeout(400)
        assert _last_answer_length(page) == stopped  # no longer growing
        deadline = time.monotonic() + 10
        while (h := _running(url))["running"] or h["waiting"]:  # the server freed the row
            assert time.monotonic() < deadline, f"the stopped answer still runs on the server: {h}"
            time.sleep(0.05)
        partial = page.locator(".msg.assistant .text").nth(2).text_content()

        # The next request succeeds, and the stopped answer stays in the conversation as far as it got.
        _set(page, "#max-tokens", "6")
        body = _send(page, "Thanks, that is enough.").post_data_json
        assert body["messages"][-2:] == [
            {"role": "assistant", "content": partial},
            {"role": "user", "content": "Thanks, that is enough."},
        ]
        _settle(page, 4)
        expect(page.locator(".msg.assistant .note").nth(3)).to_have_text("Reached the max tokens limit.")
        expect(error).to_be_hidden()
        page.locator("#settings summary").click()  # closed, to show the conversation
        expect(page.locator("#settings")).not_to_have_attribute("open", "")
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACT), full_page=False)
        print(f"\nchat page screenshot: {ARTIFACT}")
        page.locator("#settings summary").click()

        # Refused requests: the server's message, one readable line; the turn is taken back to be fixed.
        _set(page, "#max-tokens", str(LONG + 1))
        _send(page, "One more?")
        expect(error).to_contain_text(f"HTTP 400): max_tokens is {LONG + 1}, more than this server's limit of {LONG}")
        expect(page.locator(".msg.user")).to_have_count(4)
        expect(page.locator(".msg.assistant")).to_have_count(4)
        expect(prompt).to_have_value("One more?")
        _set(page, "#max-tokens", "6")
        _set(page, "#api-key", "wrong-key")
        expect(error).to_contain_text("(HTTP 401): Incorrect API key provided.")  # from /v1/models
        _send(page, "One more?")
        expect(error).to_contain_text("(HTTP 401): Incorrect API key provided.")
        text = error.text_content()
        assert "{" not in text and "Traceback" not in text and "\n" not in text.strip()
        expect(page.locator(".msg.assistant")).to_have_count(4)
        _set(page, "#api-key", KEY)
        expect(page.locator("#model-name")).to_have_text(MODEL)

        # New chat, pressed while an answer streams, ends it and clears the conversation; the next request holds
        # only the new turn.
        _set(page, "#max-tokens", str(LONG))
        _send(page, "Another long one.")
        page.wait_for_function(
            "() => { const a = document.querySelectorAll('.msg.assistant .text');"
            " return a.length === 5 && a[4].textContent.length > 0; }"
        )
        page.locator("#new-chat").click()
        expect(page.locator(".msg")).to_have_count(0)
        expect(page.locator("#stop")).to_be_hidden()
        deadline = time.monotonic() + 10
        while _running(url)["running"]:
            assert time.monotonic() < deadline, "the answer left by New chat still runs on the server"
            time.sleep(0.05)
        _set(page, "#max-tokens", "6")
        expect(page.locator("#empty")).to_be_visible()
        expect(error).to_be_hidden()
        body = _send(page, "Hello again.").post_data_json
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello again."},
        ]
        _settle(page, 1)

        # Settings survive a reload (localStorage), the key included.
        page.reload()
        expect(page.locator("#model-name")).to_have_text(MODEL)
        expect(page.locator("#max-tokens")).to_have_value("6")
        expect(page.locator("#system-prompt")).to_have_value("Be brief.")
        expect(page.locator(".msg")).to_have_count(0)

        # A phone-sized window: nothing sticks out sideways, and the composer stays usable.
        page.set_viewport_size({"width": 360, "height": 640})
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        expect(page.locator("#prompt")).to_be_in_viewport()
        expect(page.locator("#send")).to_be_in_viewport()

        assert not page_errors, page_errors
        foreign = [r for r in requests if not (r.startswith(url + "/") or r.startswith("data:"))]
        assert not foreign, f"the page reached outside its server: {foreign}"
    finally:
        context.close()


def test_json_mode_toggle_in_chromium(web, browser):
    """The JSON mode switch sends response_format json_object, is kept in the browser, and the answer is JSON."""
    from playwright.sync_api import expect

    pytest.importorskip("llguidance")
    url, _ = web
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(url + "/")
        _set(page, "#api-key", KEY)
        expect(page.locator("#model-name")).to_have_text(MODEL)
        _set(page, "#max-tokens", "40")
        page.locator("#json-mode").check()
        body = _send(page, "Describe a cat.").post_data_json
        assert body["response_format"] == {"type": "json_object"}
        _settle(page, 1)
        assert page.locator(".msg.assistant .text").first.text_content().startswith("{")
        page.reload()  # kept in localStorage, like the other settings (the key too: the settings stay closed)
        expect(page.locator("#model-name")).to_have_text(MODEL)
        expect(page.locator("#json-mode")).to_be_checked()
        if page.locator("#settings").get_attribute("open") is None:
            page.locator("#settings summary").click()
        page.locator("#json-mode").uncheck()
        assert "response_format" not in _send(page, "Plain text now.").post_data_json
        _settle(page, 1)
    finally:
        context.close()


def _explanation(body: str) -> dict:
    """The `explain` object on the finishing chunk of a streamed chat response body."""
    import json

    for line in body.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                if "explain" in choice:
                    return choice["explain"]
    pytest.fail("the response carried no explain object", pytrace=False)


def _percent(p: float) -> str:
    """What the page shows for a probability (chat.js's percent)."""
    v = 100 * p
    if not v >= 0.005:
        return "<0.01%"
    return (f"{v:.0f}" if v >= 9.95 else f"{v:.1f}" if v >= 0.995 else f"{v:.2f}") + "%"


def test_token_probabilities_in_chromium(web, browser):
    """The "Show token probabilities" toggle: the page asks for `explain`, the answer's text is unchanged but made
    of spans coloured by probability (a legend says how), and hovering, focusing or tapping one shows the server's
    top alternatives and attended tokens; the toggle is kept in the browser, and off the answer is plain text."""
    from playwright.sync_api import expect

    url, _ = web
    context = browser.new_context(viewport={"width": 1000, "height": 760}, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(url + "/")
        _set(page, "#api-key", KEY)
        expect(page.locator("#model-name")).to_have_text(MODEL)
        _set(page, "#max-tokens", "12")
        toggle, legend, popup = page.locator("#explain"), page.locator("#legend"), page.locator("#token-popup")
        expect(toggle).to_be_visible()  # in the header, not hidden in the settings
        expect(toggle).not_to_be_checked()
        expect(legend).to_be_hidden()
        toggle.check()
        expect(legend).to_be_visible()
        expect(legend.locator(".swatch")).to_have_count(5)

        bodies = []  # what the server sent, read on its way to the page (Chromium keeps no streamed body)

        def keep(route):
            response = route.fetch()
            bodies.append(response.text())
            route.fulfill(response=response)

        page.route("**/v1/chat/completions", keep)
        body = _send(page, "Colour me.").post_data_json
        assert body["explain"] == {"top_k": 5, "attended": 3} and body["stream"] is True
        _settle(page, 1)
        page.unroute("**/v1/chat/completions")
        ex = _explanation(bodies[0])
        text = page.locator(".msg.assistant .text").first
        spans = text.locator(".tok")
        answer = "".join(t["text"] for t in ex["tokens"])
        assert answer and text.text_content() == answer  # the same text, token by token
        groups, waiting = [], []  # a token that only starts a character shares the span of the one completing it
        for t in ex["tokens"]:
            waiting.append(t)
            if t["text"]:
                groups.append(waiting)
                waiting = []
        shown = [g[-1] for g in groups]
        expect(spans).to_have_count(len(shown))
        assert spans.all_text_contents() == [t["text"] for t in shown]
        # (this fixture's answers may hold special tokens written out, as plain text shows them: a real server's
        # stop ids and stop strings end an answer there, test_explain_api.py checks)
        for span, t in zip(spans.all(), shown):
            bucket = next(b for b, lo in enumerate((0.01, 0.05, 0.2, 0.5, 2)) if t["prob"] < lo)
            assert f"p{bucket}" in span.get_attribute("class").split()
        colours = spans.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert all(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in colours), colours
        swatch = legend.locator(".swatch.p0").evaluate("e => getComputedStyle(e).backgroundColor")
        assert swatch in colours or all(t["prob"] >= 0.01 for t in shown)  # the legend's colours are the spans'

        # Hover: the popup lists the server's alternatives (most likely first) and attended tokens.
        k = next(k for k, g in enumerate(groups) if len(g) == 1 and k >= len(groups) // 2)
        t = shown[k]
        expect(popup).to_be_hidden()
        spans.nth(k).hover()
        expect(popup).to_be_visible()
        expect(popup.locator(".tp-head")).to_have_text(f"{t['label']} {_percent(t['prob'])} · rank {t['rank']}")
        top = popup.locator(".tp-top li")
        expect(top).to_have_count(5)
        assert top.locator(".tp-label").all_text_contents() == [c["label"] for c in t["top"]]
        assert top.locator(".tp-num").all_text_contents() == [_percent(c["prob"]) for c in t["top"]]
        att = popup.locator(".tp-attended li")
        expect(att).to_have_count(3)
        assert att.locator(".tp-label").all_text_contents() == [a["label"] for a in t["attended"]]
        assert att.locator(".tp-num").all_text_contents() == [_percent(a["weight"]) for a in t["attended"]]
        P = ex["prompt_tokens"]
        where = [
            f"answer token {a['index'] - P + 1}" if a["index"] >= P else f"prompt token {a['index'] + 1}"
            for a in t["attended"]
        ]
        assert att.locator(".tp-where").all_text_contents() == where
        in_answer = {a["index"] for a in t["attended"] if a["index"] >= P}
        expect(text.locator(".tok.attended")).to_have_count(len(in_answer))  # attended answer tokens are marked
        box, span_box = popup.bounding_box(), spans.nth(k).bounding_box()
        assert box["y"] >= span_box["y"] + span_box["height"] or box["y"] + box["height"] <= span_box["y"]
        multi = next((k for k, g in enumerate(groups) if len(g) > 1), None)
        if multi is not None:  # a character over several tokens: the popup shows each of them
            spans.nth(multi).hover()
            expect(popup.locator(".tp-head")).to_have_count(len(groups[multi]))
        page.mouse.move(5, 5)
        expect(popup).to_be_hidden()

        # Keyboard focus shows it too, Esc hides it; a tap opens it and keeps it open.
        spans.first.focus()
        expect(popup).to_be_visible()
        expect(popup.locator(".tp-head").last).to_contain_text(shown[0]["label"])
        page.keyboard.press("Escape")
        expect(popup).to_be_hidden()
        assert spans.evaluate_all("els => els.map(e => e.tabIndex)") == [0] + [-1] * (len(shown) - 1)  # one tab stop
        page.keyboard.press("ArrowRight")  # arrow keys move from token to token
        expect(spans.nth(1)).to_be_focused()
        expect(popup.locator(".tp-head").last).to_contain_text(shown[1]["label"])
        page.keyboard.press("End")
        expect(spans.last).to_be_focused()
        assert spans.last.get_attribute("tabindex") == "0" and spans.first.get_attribute("tabindex") == "-1"
        page.keyboard.press("Escape")
        expect(popup).to_be_hidden()
        spans.last.tap()
        expect(popup).to_be_visible()
        expect(popup.locator(".tp-head").last).to_contain_text(shown[-1]["label"])
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACT.with_name("chat-token-probabilities.png")))
        page.locator("#prompt").click()
        expect(popup).to_be_hidden()

        # Kept in the browser; off, an answer is one plain text node, as before the feature.
        page.reload()
        expect(page.locator("#model-name")).to_have_text(MODEL)
        expect(toggle).to_be_checked()
        toggle.uncheck()
        expect(legend).to_be_hidden()
        body = _send(page, "Plain, please.").post_data_json
        assert "explain" not in body
        _settle(page, 1)
        plain = page.locator(".msg.assistant .text").first
        assert plain.evaluate("e => e.childNodes.length === 1 && e.firstChild.nodeType === Node.TEXT_NODE")
        assert plain.text_content()
        expect(plain.locator(".tok")).to_have_count(0)
        page.reload()
        expect(toggle).not_to_be_checked()
        assert not page_errors, page_errors
    finally:
        context.close()
