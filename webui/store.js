// What the page keeps in localStorage: the settings, the conversations and which one is open. A conversation
// is a tree of messages (a flat list, each message naming its parent): editing a message or regenerating a
// reply adds a sibling, a new branch, and the conversation shows the path from the root to its `leaf`.
"use strict";

import { $, setStatus } from "./ui.js";

const KEYS = { conversations: "llamapyz.conversations", settings: "llamapyz.settings", current: "llamapyz.current" };

// The sampling settings, each as the page shows it and the request field it sets. "" = the server's default
// (its --temp, --top-p, -n, …): only what the user set is sent. `min`/`max` bound the valid values
// (`above`: strictly above it); `integer` ones take whole numbers only.
export const SAMPLERS = [
  { name: "temperature", field: "temperature", id: "temperature", label: "Temperature", min: 0, max: 5 },
  { name: "topP", field: "top_p", id: "top-p", label: "Top p", above: 0, max: 1 },
  { name: "topK", field: "top_k", id: "top-k", label: "Top k", min: 0, integer: true },
  { name: "minP", field: "min_p", id: "min-p", label: "Min p", min: 0, max: 1 },
  { name: "repeatPenalty", field: "repeat_penalty", id: "repeat-penalty", label: "Repeat penalty", above: 0,
    max: 10 },
  { name: "presencePenalty", field: "presence_penalty", id: "presence-penalty", label: "Presence penalty", min: -2,
    max: 2 },
  { name: "frequencyPenalty", field: "frequency_penalty", id: "frequency-penalty", label: "Frequency penalty",
    min: -2, max: 2 },
  { name: "seed", field: "seed", id: "seed", label: "Seed", integer: true },
  { name: "maxTokens", field: "max_tokens", id: "max-tokens", label: "Max tokens", min: 1, integer: true },
];

export const DEFAULT_SETTINGS = {
  version: 2, systemPrompt: "", apiKey: "", model: "", ...Object.fromEntries(SAMPLERS.map((s) => [s.name, ""])),
};
// what version 1 stored for every user (it saved its defaults too): read as the server's defaults
const V1_DEFAULTS = { temperature: 0.7, topP: 0.95, maxTokens: 512 };

// "" (unset) or a finite number that the sampler accepts
export function validSetting(sampler, value) {
  if (value === "") return true;
  if (typeof value !== "number" || !Number.isFinite(value)) return false;
  if (sampler.integer && !Number.isInteger(value)) return false;
  return !(sampler.min !== undefined && value < sampler.min) && !(sampler.max !== undefined && value > sampler.max) &&
    !(sampler.above !== undefined && value <= sampler.above);
}

// A stored string, or null: also where the browser blocks storage (cookies off: a SecurityError), so that the
// page still starts, with nothing remembered.
function stored(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function load(key, fallback) {
  try {
    return JSON.parse(stored(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// The stored settings with every invalid number dropped (back to the server's default).
function loadSettings() {
  const stored = load(KEYS.settings, {});
  const settings = { ...DEFAULT_SETTINGS, ...stored, version: DEFAULT_SETTINGS.version };
  settings.systemPrompt = String(settings.systemPrompt ?? "");
  settings.apiKey = String(settings.apiKey ?? "");
  settings.model = String(settings.model ?? "");
  for (const sampler of SAMPLERS) {
    if (!stored.version && settings[sampler.name] === V1_DEFAULTS[sampler.name]) settings[sampler.name] = "";
    if (!validSetting(sampler, settings[sampler.name])) settings[sampler.name] = "";
  }
  return settings;
}

// --- conversations --------------------------------------------------------------------------------------

export const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);

const ROLES = ["user", "assistant", "system"];

// A message's text: a string (or number), or the text of an OpenAI-style list of parts; nothing else
// ("[object Object]" is no one's message).
function textOf(content) {
  if (typeof content === "string" || typeof content === "number") return String(content);
  if (Array.isArray(content)) return content.map((part) => textOf(part?.text ?? part)).join("");
  return "";
}

// A conversation as stored, exported or imported, checked and completed: every message with an id and a
// parent among the messages before it (what version 1 stored, a plain list, becomes one chain), a leaf.
// Anything unusable is dropped, not trusted.
export function cleanConversation(raw) {
  if (!raw || typeof raw !== "object" || !Array.isArray(raw.messages)) return null;
  const messages = [];
  const ids = new Set();
  const linear = raw.messages.every((m) => !m || m.id === undefined);
  for (const m of raw.messages) {
    if (!m || !ROLES.includes(m.role)) continue;
    const id = typeof m.id === "string" && !ids.has(m.id) ? m.id : newId();
    let parent = linear ? (messages.at(-1)?.id ?? null) : m.parent ?? null;
    if (!ids.has(parent)) parent = null;
    const message = { id, parent, role: m.role, content: textOf(m.content) };
    if (m.stats) message.stats = String(m.stats);
    if (m.error) message.error = String(m.error);
    if (Number.isFinite(m.contextTokens)) message.contextTokens = m.contextTokens;
    if (typeof m.model === "string" && m.model) message.model = m.model;
    messages.push(message);
    ids.add(id);
  }
  const created = Number(raw.created) || Date.now();
  return {
    id: typeof raw.id === "string" && raw.id ? raw.id : newId(),
    title: (typeof raw.title === "string" && raw.title.trim() ? raw.title : "Imported chat").slice(0, 80),
    created,
    updated: Number(raw.updated) || created,
    systemPrompt: String(raw.systemPrompt ?? ""),
    messages,
    leaf: ids.has(raw.leaf) ? raw.leaf : (messages.at(-1)?.id ?? null),
  };
}

export const state = {
  conversations: load(KEYS.conversations, []).map(cleanConversation).filter(Boolean),
  currentId: stored(KEYS.current),
  settings: loadSettings(),
  serverProps: {}, // /props: n_ctx and default_generation_settings (the samplers' placeholders)
  models: [], // the server's models (/v1/models): with several, the header offers a choice
  baseModels: [], // those /v1/models calls base models (no chat template: they continue text, not a chat)
  controller: null, // AbortController of the reply being streamed
};

const NOT_SAVED = "not saved: the browser's storage is full (export, then delete some conversations)";

// Returns whether it was kept. A full storage (QuotaExceededError) must not break the page: the change lasts
// until it is closed, and the header says so until a save works again.
export function save() {
  try {
    localStorage.setItem(KEYS.conversations, JSON.stringify(state.conversations));
    localStorage.setItem(KEYS.settings, JSON.stringify(state.settings));
    if (state.currentId) localStorage.setItem(KEYS.current, state.currentId);
    else localStorage.removeItem(KEYS.current);
  } catch (error) {
    setStatus(error.name === "QuotaExceededError" ? NOT_SAVED : `not saved: ${error.message}`);
    return false;
  }
  if ($("status").textContent.startsWith("not saved")) setStatus("");
  return true;
}

export const current = () => state.conversations.find((c) => c.id === state.currentId) || null;

export function newConversation() {
  const now = Date.now();
  const conversation = {
    id: newId(), title: "New chat", created: now, updated: now, systemPrompt: state.settings.systemPrompt,
    messages: [], leaf: null,
  };
  state.conversations.unshift(conversation);
  state.currentId = conversation.id;
  save();
  return conversation;
}

export function deleteConversation(conversation) {
  state.conversations = state.conversations.filter((c) => c !== conversation);
  if (state.currentId === conversation.id) state.currentId = state.conversations[0]?.id || null;
  save();
}

// The conversations, the most recently used first; with a query, only those whose title or messages hold it.
export function listConversations(query = "") {
  const needle = query.trim().toLowerCase();
  const found = needle ? state.conversations.filter((c) => c.title.toLowerCase().includes(needle) ||
    c.messages.some((m) => m.content.toLowerCase().includes(needle))) : state.conversations;
  return [...found].sort((a, b) => b.updated - a.updated);
}

// --- the message tree -------------------------------------------------------------------------------------

const byId = (conversation, id) => conversation.messages.find((m) => m.id === id);

// The messages shown: from the root to the leaf.
export function pathOf(conversation) {
  const path = [];
  for (let m = byId(conversation, conversation.leaf); m; m = byId(conversation, m.parent)) path.push(m);
  return path.reverse();
}

// A message and its siblings (the other branches at its place), oldest first.
export const siblingsOf = (conversation, message) => conversation.messages.filter((m) => m.parent === message.parent);

// Adds a message under `parent` (null: at the root) and shows its branch.
export function addMessage(conversation, parent, fields) {
  const message = { id: newId(), parent: parent?.id ?? null, ...fields };
  conversation.messages.push(message);
  conversation.leaf = message.id;
  conversation.updated = Date.now();
  return message;
}

// Shows the branch through `message`: down to the newest message under it.
export function showBranch(conversation, message) {
  let leaf = message;
  for (;;) {
    const children = conversation.messages.filter((m) => m.parent === leaf.id);
    if (!children.length) break;
    leaf = children.at(-1);
  }
  conversation.leaf = leaf.id;
}

// How many messages removing `message` removes: it and every message after it, on every branch.
export function descendantsOf(conversation, message) {
  const gone = new Set([message.id]);
  for (const m of conversation.messages) if (gone.has(m.parent)) gone.add(m.id); // parents come first
  return gone;
}

// Removes a message and everything after it; the conversation then shows a sibling's branch, else the path
// up to the removed message's parent.
export function removeMessage(conversation, message) {
  const gone = descendantsOf(conversation, message);
  const siblings = siblingsOf(conversation, message);
  const next = siblings[siblings.indexOf(message) + 1] || siblings[siblings.indexOf(message) - 1];
  conversation.messages = conversation.messages.filter((m) => !gone.has(m.id));
  if (gone.has(conversation.leaf)) {
    if (next) showBranch(conversation, next);
    else conversation.leaf = message.parent;
  }
  conversation.updated = Date.now();
}

// --- export and import ------------------------------------------------------------------------------------

export function exportBlob() {
  return new Blob([JSON.stringify({ llamapyz: 2, conversations: state.conversations }, null, 2)],
    { type: "application/json" });
}

// The conversations in an export (this page's, either version, or a bare list), added to the stored ones;
// returns how many.
export function importConversations(data) {
  const list = Array.isArray(data) ? data : data?.conversations;
  if (!Array.isArray(list)) throw new Error("no conversations in this file");
  const valid = list.map(cleanConversation).filter(Boolean);
  const known = new Set(state.conversations.map((c) => c.id));
  for (const c of valid) {
    if (known.has(c.id)) c.id = newId();
    known.add(c.id);
  }
  const before = { conversations: state.conversations, currentId: state.currentId };
  state.conversations = [...valid, ...state.conversations];
  // the first one opens, unless a reply is streaming into the open one
  if (valid.length && !state.controller) state.currentId = valid[0].id;
  if (!save()) {
    Object.assign(state, before);
    throw new Error("the browser's storage is full");
  }
  return valid.length;
}
