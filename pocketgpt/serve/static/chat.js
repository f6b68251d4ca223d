// pocketgpt chat page: talks to this server's OpenAI-compatible API (GET /v1/models, POST /v1/chat/completions
// with stream: true). Plain script, no build step, no network beyond this origin. Model output is only ever put in
// the page as text (textContent / text nodes), never as HTML.
// "Show token probabilities" asks the server for its `explain` extension: the answer streams in as plain text,
// then, from the choice's finishing chunk, each token becomes a span coloured by its probability, with a popup
// (hover, tap or focus) of the top alternatives and the earlier tokens it attended to most.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    modelName: $("model-name"), newChat: $("new-chat"), settings: $("settings"), settingsForm: $("settings-form"),
    conversation: $("conversation"), empty: $("empty"), error: $("error"), scroller: document.querySelector("main"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"), apiKey: $("api-key"),
    explain: $("explain"), legend: $("legend"), popup: $("token-popup"),
  };
  const STORE = "pocketgpt.chat.settings";
  const FIELDS = { system: "system-prompt", temperature: "temperature", top_p: "top-p", max_tokens: "max-tokens",
                   api_key: "api-key" };
  const EXPLAIN = { top_k: 5, attended: 3 };  // what the page asks for with "Show token probabilities"
  const BUCKETS = [0.01, 0.05, 0.2, 0.5];      // probability bounds of the colours p0 .. p4 (the legend's)

  let history = [];          // the conversation sent to the server: {role: "user" | "assistant", content}
  let controller = null;     // the AbortController of the answer being streamed, null when idle
  let model = null;          // the id GET /v1/models gave
  let chat = 0;              // counts New chat presses: an answer that outlives its conversation is dropped

  class ServerError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  // ---- settings, kept in localStorage ----

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (e) { saved = {}; }
    for (const [key, id] of Object.entries(FIELDS)) {
      if (typeof saved[key] === "string") $(id).value = saved[key];
    }
    $("json-mode").checked = saved.json_mode === true;
    ui.explain.checked = saved.explain === true;
    ui.legend.hidden = !ui.explain.checked;
  }

  function saveSettings() {
    const values = {};
    for (const [key, id] of Object.entries(FIELDS)) values[key] = $(id).value;
    values.json_mode = $("json-mode").checked;
    values.explain = ui.explain.checked;
    try { localStorage.setItem(STORE, JSON.stringify(values)); } catch (e) { /* private mode: keep them in the page */ }
  }

  function number(id, label, integer) {
    const raw = $(id).value.trim();
    if (raw === "") return undefined;                       // blank: the server's default
    const v = Number(raw);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v))) {
      throw new Error(`Settings: ${label} must be ${integer ? "a whole number" : "a number"}, got "${raw}".`);
    }
    return v;
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = ui.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // ---- errors: one readable line in the page ----

  async function refusal(response) {
    let message = "";
    try {
      const body = await response.json();
      message = body && body.error && body.error.message;
    } catch (e) { /* not JSON */ }
    if (typeof message !== "string" || !message) message = (response.statusText || "no reason given");
    return new ServerError(message, response.status);
  }

  function describe(err) {
    if (err instanceof ServerError) {
      return err.status ? `The server refused the request (HTTP ${err.status}): ${err.message}`
                        : `The server failed while answering: ${err.message}`;
    }
    if (err instanceof TypeError) return `Could not reach the server (is pocketgpt serve still running?): ${err.message}`;
    return err && err.message ? err.message : String(err);
  }

  function showError(text) {
    const label = document.createElement("strong");
    label.textContent = "Error: ";
    ui.error.replaceChildren(label, document.createTextNode(text));
    ui.error.hidden = false;
    ui.error.scrollIntoView({ block: "nearest" });
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.replaceChildren();
  }

  // ---- the model's name ----

  async function loadModel() {
    ui.modelName.textContent = "loading…";
    try {
      const response = await fetch("/v1/models", { headers: headers(false), cache: "no-store" });
      if (!response.ok) throw await refusal(response);
      const body = await response.json();
      model = body && Array.isArray(body.data) && body.data.length ? String(body.data[0].id) : null;
      ui.modelName.textContent = model || "unknown";
      document.title = model ? `${model} · pocketgpt chat` : "pocketgpt chat";
      clearError();
    } catch (err) {
      model = null;
      ui.modelName.textContent = "unavailable";
      showError(describe(err));
      if (err instanceof ServerError && err.status === 401) ui.settings.open = true;
    }
  }

  // ---- the conversation ----

  function addMessage(role, text) {
    const item = document.createElement("li");
    item.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    ui.conversation.append(item);
    ui.empty.hidden = true;
    return item;
  }

  function addNote(item, text) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = text;
    item.append(note);
  }

  function nearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollDown() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.hidden = !busy;
  }

  // ---- token probabilities: the server's `explain` object drawn over an answer ----

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

  // The data of each server-sent event of a response body, as it arrives ("[DONE]" included).
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const dataOf = (block) => {
      const lines = block.split("\n").filter((line) => line.startsWith("data:"));
      if (!lines.length) return null;                       // a comment or another field
      return lines.map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const data = dataOf(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (data !== null) yield data;
        }
      }
      const data = dataOf(buffer + decoder.decode());
      if (data !== null) yield data;
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function send() {
    if (controller) return;                                  // one answer at a time
    const text = ui.prompt.value;
    if (!text.trim()) { ui.prompt.focus(); return; }
    let params;
    try {
      params = { temperature: number("temperature", "temperature", false), top_p: number("top-p", "top-p", false),
                 max_tokens: number("max-tokens", "max tokens", true) };
    } catch (err) {
      ui.settings.open = true;
      showError(err.message);
      return;
    }
    clearError();
    const system = $("system-prompt").value.trim();
    history.push({ role: "user", content: text });
    const userItem = addMessage("user", text);
    ui.prompt.value = "";
    const answer = addMessage("assistant", "");
    const out = answer.querySelector(".text").appendChild(document.createTextNode(""));
    answer.classList.add("streaming");
    answer.setAttribute("aria-busy", "true");              // screen readers read the answer once it is complete
    scrollDown();
    const body = { messages: (system ? [{ role: "system", content: system }] : []).concat(history), stream: true,
                   ...params };
    if (model) body.model = model;
    if ($("json-mode").checked) body.response_format = { type: "json_object" };  // the server's grammar: JSON only
    if (ui.explain.checked) body.explain = { ...EXPLAIN };    // this server's extension: see /openapi.json
    controller = new AbortController();
    const mine = chat;
    setBusy(true);

    let content = "", finish = null, stopped = false, failure = null, explanation = null;
    try {
      const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(true),
                                                              body: JSON.stringify(body), signal: controller.signal });
      if (!response.ok) throw await refusal(response);
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch (e) { continue; }
        if (chunk.error) throw new ServerError(chunk.error.message || "unknown error", 0);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;                              // e.g. a usage chunk
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          const follow = nearBottom();
          content += piece;
          out.appendData(piece);
          if (follow) scrollDown();
        }
        if (choice.finish_reason) finish = choice.finish_reason;
        if (choice.explain) explanation = choice.explain;   // on the finishing chunk
      }
    } catch (err) {
      if (err && err.name === "AbortError") stopped = true;
      else failure = err;
    } finally {
      controller = null;
      setBusy(false);
      answer.classList.remove("streaming");
      answer.removeAttribute("aria-busy");
    }

    if (mine !== chat) return;                              // New chat was pressed meanwhile
    if (failure && !content) {
      // Refused (or failed) before any text: take the turn back so it can be fixed and sent again.
      history.pop();
      userItem.remove();
      answer.remove();
      ui.empty.hidden = ui.conversation.children.length > 0;
      if (!ui.prompt.value) ui.prompt.value = text;
      showError(describe(failure));
    } else {
      history.push({ role: "assistant", content });          // a stopped answer stays, as far as it got
      if (stopped) addNote(answer, content ? "Stopped." : "Stopped before any text arrived.");
      else if (failure) { addNote(answer, "The answer was cut short."); showError(describe(failure)); }
      else if (finish === "length") addNote(answer, "Reached the max tokens limit.");
      if (explanation && !stopped && !failure) {
        if (explanation.error) addNote(answer, `No token probabilities: ${explanation.error}`);
        else if (drawTokens(out.parentNode, content, explanation) && explanation.unexplained > 0) {
          addNote(answer, `The last ${explanation.unexplained} tokens passed the model's context: not coloured.`);
        }
      }
      if (nearBottom()) scrollDown();
    }
    ui.prompt.focus();
  }

  function stop() {
    if (controller) controller.abort();                    // the server cancels the generation on disconnect
  }

  function newChat() {
    stop();
    hidePopup();
    chat += 1;
    history = [];
    ui.conversation.replaceChildren();
    ui.empty.hidden = false;
    clearError();
    ui.prompt.focus();
  }

  // ---- wiring ----

  ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {   // Shift+Enter: a new line (the default)
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && controller) {
      e.preventDefault();
      stop();
    }
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.settingsForm.addEventListener("submit", (e) => { e.preventDefault(); saveSettings(); loadModel(); });
  ui.settingsForm.addEventListener("input", saveSettings);
  ui.explain.addEventListener("change", () => { ui.legend.hidden = !ui.explain.checked; saveSettings(); });
  let keyTimer = null;
  ui.apiKey.addEventListener("input", () => {               // a new key: ask for the model again
    clearTimeout(keyTimer);
    keyTimer = setTimeout(loadModel, 400);
  });

  loadSettings();
  loadModel();
  ui.prompt.focus();
})();
