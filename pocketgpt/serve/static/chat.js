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

  // token probabilities (tokens.js): spans over an answer, the popup and its keys
  const { drawTokens, hidePopup } = window.pocketgptTokens(ui);

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
