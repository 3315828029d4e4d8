// The chat page: conversations in localStorage, streaming replies from /v1/chat/completions.
"use strict";

const STORE_CONVERSATIONS = "llamapyz.conversations";
const STORE_SETTINGS = "llamapyz.settings";
const STORE_CURRENT = "llamapyz.current";
// "" = the server's default (its --temp, --top-p, -n): only what the user set is sent
const DEFAULT_SETTINGS = { version: 2, systemPrompt: "", temperature: "", topP: "", maxTokens: "", apiKey: "" };
// the number settings and their inputs, whose min and max say what is valid
const NUMBER_SETTINGS = { temperature: "temperature", topP: "top-p", maxTokens: "max-tokens" };
// what version 1 stored for every user (it saved its defaults too): read as the server's defaults
const V1_DEFAULTS = { temperature: 0.7, topP: 0.95, maxTokens: 512 };

const $ = (id) => document.getElementById(id);
const state = {
  conversations: load(STORE_CONVERSATIONS, []),
  currentId: localStorage.getItem(STORE_CURRENT),
  settings: loadSettings(),
  serverDefaults: {}, // /props' default_generation_settings, shown as the settings' placeholders
  controller: null, // AbortController of the reply being streamed
};

function load(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

// The stored settings with every invalid number dropped (back to the server's default).
function loadSettings() {
  const stored = load(STORE_SETTINGS, {});
  const settings = { ...DEFAULT_SETTINGS, ...stored, version: DEFAULT_SETTINGS.version };
  for (const [name, id] of Object.entries(NUMBER_SETTINGS)) {
    if (!stored.version && settings[name] === V1_DEFAULTS[name]) settings[name] = "";
    if (!validNumber(settings[name], $(id))) settings[name] = "";
  }
  return settings;
}

// "" (unset) or a finite number within the input's min and max
function validNumber(value, input) {
  if (value === "") return true;
  const v = typeof value === "number" ? value : NaN;
  return Number.isFinite(v) && !(input.min !== "" && v < Number(input.min)) &&
    !(input.max !== "" && v > Number(input.max));
}

function save() {
  localStorage.setItem(STORE_CONVERSATIONS, JSON.stringify(state.conversations));
  localStorage.setItem(STORE_SETTINGS, JSON.stringify(state.settings));
  if (state.currentId) localStorage.setItem(STORE_CURRENT, state.currentId);
  else localStorage.removeItem(STORE_CURRENT);
}

const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
const current = () => state.conversations.find((c) => c.id === state.currentId) || null;

// --- conversations ---------------------------------------------------------------------------------------

function newConversation() {
  const conversation = { id: newId(), title: "New chat", created: Date.now(), messages: [] };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  save();
  return conversation;
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  for (const c of state.conversations) {
    const item = document.createElement("li");
    item.className = "conv-item" + (c.id === state.currentId ? " active" : "");
    item.dataset.id = c.id;
    const title = document.createElement("span");
    title.className = "conv-title";
    title.textContent = c.title;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "conv-delete";
    remove.title = "Delete this conversation";
    remove.textContent = "\u00d7";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      if (!confirm(`Delete "${c.title}"?`)) return;
      state.conversations = state.conversations.filter((x) => x.id !== c.id);
      if (state.currentId === c.id) state.currentId = state.conversations[0]?.id || null;
      save();
      renderAll();
    });
    item.append(title, remove);
    item.addEventListener("click", () => {
      if (state.controller) return; // finish or stop the reply first
      state.currentId = c.id;
      save();
      renderAll();
      closeSidebar();
    });
    list.append(item);
  }
}

// --- messages ----------------------------------------------------------------------------------------------

// Each message's element, kept while its text is unchanged: re-rendering the conversation (a new reply, a
// deleted chat) moves these instead of rendering every message's Markdown again. Footers are rebuilt each time.
const messageViews = new WeakMap(); // message -> {el, body, content, error}

function messageView(message) {
  let view = messageViews.get(message);
  if (view && view.content === message.content && view.error === message.error) return view;
  const el = document.createElement("article");
  el.className = `msg ${message.role}` + (message.error ? " error" : "");
  const body = document.createElement("div");
  body.className = "msg-body";
  if (message.error) {
    body.textContent = message.error;
  } else if (message.role === "assistant") {
    body.innerHTML = Render.html(message.content);
  } else {
    body.textContent = message.content;
  }
  el.append(body);
  view = { el, body, content: message.content, error: message.error };
  messageViews.set(message, view);
  return view;
}

function messageElement(message, index, conversation) {
  const { el } = messageView(message);
  el.dataset.index = index;
  el.querySelector(":scope > .msg-foot")?.remove();
  const last = index === conversation.messages.length - 1;
  const lastUser = conversation.messages.map((m) => m.role).lastIndexOf("user");
  const footer = document.createElement("div");
  footer.className = "msg-foot";
  if (message.role === "assistant" && message.stats) {
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = message.stats;
    footer.append(stats);
  }
  if (!state.controller && last && (message.role === "assistant" || message.error)) {
    footer.append(button("Regenerate", "regenerate", regenerate));
  }
  if (!state.controller && message.role === "user" && index === lastUser) {
    footer.append(button("Edit", "edit", () => editLastUser(el, index)));
  }
  if (footer.childElementCount) el.append(footer);
  return el;
}

function button(label, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const conversation = current();
  if (!conversation || !conversation.messages.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Ask anything. Replies stream in as they are generated.";
    box.append(empty);
    return;
  }
  conversation.messages.forEach((m, i) => box.append(messageElement(m, i, conversation)));
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderConversations();
  renderMessages();
  const busy = Boolean(state.controller);
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

// --- talking to the server ---------------------------------------------------------------------------------

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.settings.apiKey) h.Authorization = `Bearer ${state.settings.apiKey}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Stream a reply to the conversation's messages into a new assistant message.
async function reply(conversation) {
  const s = state.settings;
  const messages = conversation.messages.filter((m) => !m.error).map(({ role, content }) => ({ role, content }));
  if (s.systemPrompt.trim()) messages.unshift({ role: "system", content: s.systemPrompt });
  const message = { role: "assistant", content: "" };
  conversation.messages.push(message);
  state.controller = new AbortController();
  renderAll();
  // only this message's element changes while the reply streams in, and only its last blocks (render.js)
  const box = $("messages");
  const entry = messageView(message);
  const view = new Render.StreamView(entry.body, () => { box.scrollTop = box.scrollHeight; });
  // until the first token (a long prompt takes seconds): dots, and words for screen readers
  const waiting = waitingIndicator();
  entry.body.after(waiting);
  entry.el.setAttribute("aria-busy", "true");
  box.scrollTop = box.scrollHeight;
  const started = performance.now();
  let firstTokenAt = 0;
  let nTokens = 0; // content deltas: one per token from this server
  let timings = null;
  let usage = null;
  const request = { messages, stream: true, stream_options: { include_usage: true } };
  if (s.temperature !== "") request.temperature = s.temperature;
  if (s.topP !== "") request.top_p = s.topP;
  if (s.maxTokens !== "") request.max_tokens = s.maxTokens;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: state.controller.signal,
      body: JSON.stringify(request),
    });
    if (!response.ok) throw new Error(await errorText(response));
    keyAccepted();
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.timings) timings = chunk.timings;
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            if (!firstTokenAt) {
              firstTokenAt = performance.now();
              waiting.remove();
            }
            nTokens += 1;
            message.content += delta;
            entry.content = message.content; // the element stays this message's: the view catches up
            view.update(message.content);
          }
        }
      }
    }
    message.stats = statsText(timings, usage, nTokens, firstTokenAt);
  } catch (error) {
    if (error.name === "AbortError") {
      message.stats = statsText(null, null, nTokens, firstTokenAt) + " \u00b7 stopped";
    } else {
      if (!message.content) conversation.messages.pop();
      conversation.messages.push({ role: "assistant", content: "", error: `Error: ${error.message}` });
    }
  } finally {
    waiting.remove();
    entry.el.removeAttribute("aria-busy");
    state.controller = null;
    const kept = conversation.messages.includes(message);
    if (kept && !message.content && !message.stats?.endsWith("stopped")) message.content = "(empty reply)";
    view.finish(message.content);
    entry.content = message.content;
    save();
    renderAll();
  }
}

function waitingIndicator() {
  const waiting = document.createElement("div");
  waiting.className = "waiting";
  waiting.setAttribute("role", "status");
  const label = document.createElement("span");
  label.className = "visually-hidden";
  label.textContent = "Waiting for the reply";
  waiting.append(label);
  for (let i = 0; i < 3; i++) waiting.append(Object.assign(document.createElement("span"), { className: "dot" }));
  return waiting;
}

// Tokens generated and their rate: the server's count (usage, timings) when the reply ended, else the content
// deltas (a stopped reply), which this server sends one per token.
function statsText(timings, usage, nTokens, firstTokenAt) {
  const n = usage?.completion_tokens ?? timings?.predicted_n ?? nTokens;
  if (timings && timings.predicted_n) {
    return `${n} tokens \u00b7 ${timings.predicted_per_second.toFixed(1)} tokens/s` +
      ` \u00b7 prompt ${timings.prompt_n} new + ${timings.cache_n} cached`;
  }
  const seconds = firstTokenAt ? (performance.now() - firstTokenAt) / 1000 : 0;
  const rate = seconds > 0 && nTokens > 1 ? ((nTokens - 1) / seconds).toFixed(1) : "-";
  return `${n} tokens \u00b7 ${rate} tokens/s`;
}

async function send(text) {
  const conversation = current() || newConversation();
  if (!conversation.messages.length) conversation.title = text.slice(0, 40) || "New chat";
  // an error reply is not part of the conversation: drop it before going on
  while (conversation.messages.length && conversation.messages.at(-1).error) conversation.messages.pop();
  conversation.messages.push({ role: "user", content: text });
  save();
  await reply(conversation);
}

async function regenerate() {
  const conversation = current();
  if (!conversation || state.controller) return;
  while (conversation.messages.length && conversation.messages.at(-1).role !== "user") conversation.messages.pop();
  if (!conversation.messages.length) return;
  await reply(conversation);
}

function editLastUser(el, index) {
  const conversation = current();
  messageViews.delete(conversation.messages[index]); // its element turns into an editor
  const body = el.querySelector(".msg-body");
  const editor = document.createElement("textarea");
  editor.className = "edit-box";
  editor.value = conversation.messages[index].content;
  const save_ = button("Send", "edit-send primary", async () => {
    const text = editor.value.trim();
    if (!text) return;
    conversation.messages.splice(index); // the edited message replaces it and everything after
    conversation.messages.push({ role: "user", content: text });
    save();
    await reply(conversation);
  });
  const cancel = button("Cancel", "edit-cancel", renderMessages);
  body.classList.add("editing");
  body.replaceChildren(editor);
  const footer = el.querySelector(".msg-foot");
  footer?.replaceChildren(save_, cancel);
  // as tall as its text up to the CSS max-height, from its first line: the caret at the start, its top and
  // (when they fit) the buttons in view
  const grow = () => {
    editor.style.height = "auto";
    editor.style.height = editor.scrollHeight + editor.offsetHeight - editor.clientHeight + "px";
  };
  editor.addEventListener("input", grow);
  grow();
  editor.setSelectionRange(0, 0);
  editor.focus({ preventScroll: true });
  editor.scrollTop = 0;
  footer?.scrollIntoView({ block: "nearest" });
  editor.scrollIntoView({ block: "nearest" });
}

// --- settings, import/export ---------------------------------------------------------------------------

// The dialog edits a copy: Done (only with valid values) saves it; Cancel and Escape discard it.
function openSettings() {
  fillSettings(state.settings);
  $("settings").returnValue = "";
  $("settings").showModal();
}

function fillSettings(s) {
  $("system-prompt").value = s.systemPrompt;
  $("temperature").value = s.temperature;
  $("top-p").value = s.topP;
  $("max-tokens").value = s.maxTokens;
  $("api-key").value = s.apiKey;
  showServerDefaults();
}

function showServerDefaults() {
  const d = state.serverDefaults;
  const shown = (value, otherwise) => `server default${value != null ? `: ${value}` : otherwise}`;
  $("temperature").placeholder = shown(d.temperature, "");
  $("top-p").placeholder = shown(d.top_p, "");
  $("max-tokens").placeholder = shown(d.max_tokens, " (no limit)");
}

function readSettings() {
  const settings = { ...state.settings, systemPrompt: $("system-prompt").value, apiKey: $("api-key").value.trim() };
  for (const [name, id] of Object.entries(NUMBER_SETTINGS)) {
    const input = $(id);
    const value = input.value === "" ? "" : Number(input.value);
    if (input.validity.valid && validNumber(value, input)) settings[name] = value; // else: kept as it was
  }
  const keyChanged = settings.apiKey !== state.settings.apiKey;
  state.settings = settings;
  save();
  if (keyChanged) loadModelName();
}

async function loadServerDefaults() {
  try {
    const response = await fetch("props", { headers: headers() });
    if (!response.ok) return;
    state.serverDefaults = (await response.json()).default_generation_settings || {};
    showServerDefaults();
  } catch {
    // the placeholders just say "server default"
  }
}

function exportConversations() {
  const blob = new Blob([JSON.stringify({ llamapyz: 1, conversations: state.conversations }, null, 2)],
    { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `llamapyz-conversations-${new Date().toISOString().slice(0, 10)}.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function importConversations(file) {
  try {
    const data = JSON.parse(await file.text());
    const list = Array.isArray(data) ? data : data.conversations;
    if (!Array.isArray(list)) throw new Error("no conversations in this file");
    const valid = list.filter((c) => c && Array.isArray(c.messages)).map((c) => ({
      id: typeof c.id === "string" ? c.id : newId(),
      title: String(c.title || "Imported chat").slice(0, 80),
      created: Number(c.created) || Date.now(),
      messages: c.messages.filter((m) => m && ["user", "assistant", "system"].includes(m.role))
        .map((m) => ({ role: m.role, content: String(m.content ?? ""), ...(m.stats ? { stats: String(m.stats) } : {}) })),
    }));
    const known = new Set(state.conversations.map((c) => c.id));
    for (const c of valid) if (known.has(c.id)) c.id = newId();
    state.conversations = [...valid, ...state.conversations];
    if (valid.length) state.currentId = valid[0].id;
    save();
    renderAll();
    setStatus(`imported ${valid.length} conversation${valid.length === 1 ? "" : "s"}`);
  } catch (error) {
    setStatus(`import failed: ${error.message}`);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

const NEEDS_KEY = "this server needs an API key: open Settings";
const LOADING = "loading the model\u2026";
const UNREACHABLE = "cannot reach the server";

// A request with the API key succeeded: the header stops asking for one.
function keyAccepted() {
  if ($("status").textContent === NEEDS_KEY) {
    setStatus("");
    loadModelName();
  }
}

async function loadModelName() {
  try {
    const response = await fetch("v1/models", { headers: headers() });
    if (response.ok) {
      const body = await response.json();
      $("model-name").textContent = body.data?.[0]?.id || "llamapyz";
      document.title = `${$("model-name").textContent} \u00b7 llamapyz`;
      if ([NEEDS_KEY, LOADING, UNREACHABLE].includes($("status").textContent)) setStatus("");
      loadServerDefaults();
    } else if (response.status === 401) {
      setStatus(NEEDS_KEY);
    } else if (response.status === 503) {
      setStatus(LOADING);
      setTimeout(loadModelName, 1000);
    }
  } catch {
    setStatus(UNREACHABLE);
  }
}

// --- wiring ---------------------------------------------------------------------------------------------

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, 200) + "px";
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  autosize();
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("input").addEventListener("input", autosize);
$("stop").addEventListener("click", () => state.controller?.abort());
$("new-chat").addEventListener("click", () => {
  if (state.controller) return;
  newConversation();
  renderAll();
  closeSidebar();
  $("input").focus();
});

// The sidebar on a narrow screen (style.css): ☰ opens and closes it; a tap beside it, Escape, choosing a
// chat and + New chat close it.
function closeSidebar() {
  document.body.classList.remove("sidebar-open");
}
$("toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
$("sidebar-backdrop").addEventListener("click", closeSidebar);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && document.body.classList.contains("sidebar-open") && !$("settings").open) {
    closeSidebar();
  }
});

// The keyboard hint only where there is a keyboard and room for it: a phone's placeholder would be cut off.
const WIDE = window.matchMedia("(min-width: 721px)");
function placeholder() {
  $("input").placeholder = WIDE.matches ? "Send a message (Enter to send, Shift+Enter for a new line)" : "Message";
}
WIDE.addEventListener("change", placeholder);
placeholder();
$("open-settings").addEventListener("click", openSettings);
$("settings").addEventListener("close", () => {
  if ($("settings").returnValue === "ok") readSettings(); // Done; Cancel and Escape discard the edits
});
$("reset-settings").addEventListener("click", () => fillSettings({ ...DEFAULT_SETTINGS, apiKey: $("api-key").value }));
$("export").addEventListener("click", exportConversations);
$("import-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) importConversations(file);
  event.target.value = "";
});
$("messages").addEventListener("click", async (event) => {
  const copy = event.target.closest(".copy-code");
  if (!copy) return;
  const code = copy.closest(".code-block").querySelector("code").textContent;
  try {
    await navigator.clipboard.writeText(code);
    copy.textContent = "Copied";
  } catch {
    copy.textContent = "Copy failed";
  }
  setTimeout(() => { copy.textContent = "Copy"; }, 1500);
});

if (!current()) state.currentId = state.conversations[0]?.id || null;
renderAll();
loadModelName();
$("input").focus();
