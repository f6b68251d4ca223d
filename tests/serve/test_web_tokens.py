"""The chat page's "Show token probabilities" view in headless Chromium: the spans, their colours and the popup
against the numbers the server sent (the `explain` extension; tests/serve/test_explain_api.py checks those numbers
against the model). Writes test-artifacts/chat-token-probabilities.png."""

from __future__ import annotations

import pytest
from web_helpers import ARTIFACT, KEY, MODEL, _send, _set, _settle, browser, web, web_ckpt  # noqa: F401  (fixtures)


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
        group_of = [g for g, members in enumerate(groups) for _ in members]  # answer token -> its span
        in_answer = {group_of[a["index"] - P] for a in t["attended"] if a["index"] >= P} - {k}
        expect(text.locator(".tok.attended")).to_have_count(len(in_answer))  # the spans of attended answer tokens
        box, span_box = popup.bounding_box(), spans.nth(k).bounding_box()
        assert box["y"] >= span_box["y"] + span_box["height"] or box["y"] + box["height"] <= span_box["y"]
        multi = next((k for k, g in enumerate(groups) if len(g) > 1), None)
        if multi is not None:  # a character over several tokens: the popup shows each of them
            # dispatched, not hover(): such a span can hold only a zero-width piece (a combining mark) that
            # Playwright will not point the mouse at
            spans.nth(multi).dispatch_event("mouseover")
            expect(popup.locator(".tp-head")).to_have_count(len(groups[multi]))
            spans.nth(multi).dispatch_event("mouseout")
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
