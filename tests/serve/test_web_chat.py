"""The chat page of `pocketgpt serve` (GET /): its files and headers over HTTP, and a whole session in headless Chromium.

The browser test drives Debian's /usr/bin/chromium (or $POCKETGPT_CHROMIUM) with Playwright's Python package; it
never downloads a browser. Without them it skips, unless POCKETGPT_REQUIRE_BROWSER=1 (`make test` sets it): then it
fails. It writes a screenshot to test-artifacts/chat-page.png.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from web_helpers import (  # noqa: F401  (fixtures)
    ARTIFACT,
    KEY,
    LONG,
    MODEL,
    _last_answer_length,
    _running,
    _send,
    _set,
    _settle,
    browser,
    web,
    web_ckpt,
)


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
