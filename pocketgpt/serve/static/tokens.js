// pocketgpt chat page, token probabilities: the server's `explain` object (see /openapi.json) drawn over an answer.
// Each token becomes a span coloured by the probability the model gave it; hover, tap or keyboard focus opens a popup
// with the top alternatives and the earlier tokens it attended to most. Loaded before chat.js, which calls
// `window.pocketgptTokens(ui)` once and gets `drawTokens` and `hidePopup`. Model output is only ever put in the page as text.
"use strict";

window.pocketgptTokens = (ui) => {
  const BUCKETS = [0.01, 0.05, 0.2, 0.5];  // probability bounds of the colours p0 .. p4 (the legend's)

  const explained = new WeakMap();  // a .tok span -> {ex, ks: the indexes in ex.tokens it shows, spans: by index}
  let shownFor = null;              // the span whose popup is open
  let pinned = false;               // opened by a click or tap: stays until another click, Esc or leaving focus

  function percent(p) {
    const v = 100 * p;
    if (!(v >= 0.005)) return "<0.01%";
    return (v >= 9.95 ? v.toFixed(0) : v >= 0.995 ? v.toFixed(1) : v.toFixed(2)) + "%";
  }

  function bucket(p) {
    let b = 0;
    while (b < BUCKETS.length && p >= BUCKETS[b]) b += 1;
    return "p" + b;
  }

  // Replace the answer's text with one span per token (a token that only starts a character shares the span of the
  // token completing it); the text stays the same. False (the text left as it is) when the object does not fit.
  function drawTokens(el, content, ex) {
    if (!ex || !Array.isArray(ex.tokens) || !ex.tokens.length) return false;
    const joined = ex.tokens.map((t) => (typeof t.text === "string" ? t.text : "\u0000")).join("");
    if (!content.startsWith(joined)) return false;
    const parts = [], spans = new Map();
    let waiting = [];
    ex.tokens.forEach((t, k) => {
      waiting.push(k);
      if (!t.text) return;                                  // part of a character: drawn with the next token
      const span = document.createElement("span");
      span.className = `tok ${bucket(t.prob)}`;
      if (/^\p{C}+$/u.test(t.text)) {                       // nothing to see: a mark (CSS) to point at
        span.classList.add(t.text.includes("\n") ? "newline" : "blank");
      }
      span.textContent = t.text;
      span.tabIndex = parts.length ? -1 : 0;                // one tab stop per answer; arrow keys move within
      explained.set(span, { ex, ks: waiting, spans });
      for (const j of waiting) spans.set(ex.prompt_tokens + j, span);
      waiting = [];
      parts.push(span);
    });
    const rest = content.slice(joined.length);              // tokens past the model's context: plain text
    if (rest) parts.push(document.createTextNode(rest));
    el.replaceChildren(...parts);
    el.classList.add("explained");
    return true;
  }

  function row(list, label, value, extra, cls) {
    const item = document.createElement("li");
    if (cls) item.className = cls;
    const name = document.createElement("span");
    name.className = "tp-label";
    name.textContent = label;
    const num = document.createElement("span");
    num.className = "tp-num";
    num.textContent = value;
    item.append(name, num);
    if (extra) {
      const more = document.createElement("span");
      more.className = "tp-where";
      more.textContent = extra;
      item.append(more);
    }
    list.append(item);
  }

  function section(title, cls) {
    const head = document.createElement("p");
    head.className = "tp-title";
    head.textContent = title;
    const list = document.createElement("ol");
    list.className = `tp-list ${cls}`;
    ui.popup.append(head, list);
    return list;
  }

  function showPopup(span) {
    const info = explained.get(span);
    if (!info) return;
    hidePopup();
    const { ex, ks, spans } = info;
    ui.popup.replaceChildren();
    for (const k of ks) {
      const t = ex.tokens[k];
      const head = document.createElement("p");
      head.className = "tp-head";
      const name = document.createElement("span");
      name.className = "tp-label";
      name.textContent = t.label;
      head.append(name, document.createTextNode(` ${percent(t.prob)} · rank ${t.rank}`));
      ui.popup.append(head);
      const top = section("Top alternatives", "tp-top");
      for (const c of t.top) {
        const chosen = c.id === t.id ? "chosen" : "";
        row(top, c.label, percent(c.prob), chosen, chosen);
      }
      if (t.attended.length) {
        const att = section("Attended to most", "tp-attended");
        for (const a of t.attended) {
          const inAnswer = a.index >= ex.prompt_tokens;
          const where = inAnswer ? `answer token ${a.index - ex.prompt_tokens + 1}` : `prompt token ${a.index + 1}`;
          row(att, a.label, percent(a.weight), where);
          const target = inAnswer && spans.get(a.index);
          if (target && target !== span) target.classList.add("attended");
        }
      }
    }
    ui.popup.hidden = false;
    span.classList.add("active");
    span.setAttribute("aria-describedby", "token-popup");
    shownFor = span;
    place(span);
  }

  function place(span) {
    const r = span.getBoundingClientRect(), p = ui.popup.getBoundingClientRect(), gap = 6;
    const left = Math.max(gap, Math.min(r.left, window.innerWidth - p.width - gap));
    const below = r.bottom + gap + p.height <= window.innerHeight || r.top - gap - p.height < 0;
    ui.popup.style.left = `${left}px`;
    ui.popup.style.top = `${below ? r.bottom + gap : r.top - gap - p.height}px`;
  }

  function hidePopup() {
    if (shownFor) {
      shownFor.classList.remove("active");
      shownFor.removeAttribute("aria-describedby");
    }
    for (const el of ui.conversation.querySelectorAll(".tok.attended")) el.classList.remove("attended");
    ui.popup.hidden = true;
    shownFor = null;
    pinned = false;
  }

  const tokenOf = (e) => (e.target instanceof Element ? e.target.closest(".tok") : null);
  ui.conversation.addEventListener("mouseover", (e) => {
    const span = tokenOf(e);
    if (span && span !== shownFor && !pinned) showPopup(span);
  });
  ui.conversation.addEventListener("mouseout", (e) => {
    const span = tokenOf(e);
    if (span && span === shownFor && !pinned && document.activeElement !== span &&
        !(e.relatedTarget instanceof Node && span.contains(e.relatedTarget))) hidePopup();
  });
  ui.conversation.addEventListener("focusin", (e) => { const span = tokenOf(e); if (span) showPopup(span); });
  ui.conversation.addEventListener("focusout", (e) => { if (tokenOf(e) === shownFor) hidePopup(); });
  ui.conversation.addEventListener("click", (e) => {       // a tap on a phone: open it, and keep it open
    const span = tokenOf(e);
    if (!span) return;
    if (span === shownFor && pinned) { hidePopup(); return; }
    showPopup(span);
    pinned = true;
  });
  document.addEventListener("click", (e) => { if (shownFor && !tokenOf(e)) hidePopup(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && shownFor) hidePopup(); });
  ui.conversation.addEventListener("keydown", (e) => {     // ←/→ (Home/End): the previous / next token's popup
    const span = tokenOf(e);
    const moves = { ArrowLeft: -1, ArrowRight: 1, Home: -Infinity, End: Infinity };
    if (!span || !(e.key in moves)) return;
    const all = [...span.parentNode.querySelectorAll(".tok")];
    const to = all.indexOf(span) + moves[e.key];
    const next = all[Math.max(0, Math.min(all.length - 1, to))];   // ±Infinity: the first / last
    e.preventDefault();
    if (next === span) return;
    span.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  ui.scroller.addEventListener("scroll", () => { if (shownFor) place(shownFor); });
  window.addEventListener("resize", () => { if (shownFor) place(shownFor); });

  return { drawTokens, hidePopup };
};
