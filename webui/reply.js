// Asking for a reply: sending a message, resending an edited one, regenerating a reply. Each streams a new
// assistant message into the conversation (at the end of the branch it answers), with a waiting indicator
// until the first token and its tokens, rate and context use once it ends.
"use strict";

import { streamChat } from "./api.js";
import { chosenModel, keyAccepted } from "./header.js";
import { followEnd, messageView, setReplyActions } from "./messages.js";
import {
  addMessage, current, newConversation, pathOf, removeMessage, save, SAMPLERS, state,
} from "./store.js";
import { refresh } from "./ui.js";

export async function send(text) {
  const conversation = current() || newConversation();
  if (!conversation.messages.length) conversation.title = text.slice(0, 40) || "New chat";
  // an error is not part of the conversation: it goes before the conversation goes on, from its parent (not
  // from the branch of a sibling, which removeMessage shows)
  let path = pathOf(conversation);
  while (path.length && path.at(-1).error) {
    const { parent } = path.at(-1);
    removeMessage(conversation, path.at(-1));
    conversation.leaf = parent;
    path = pathOf(conversation);
  }
  const message = addMessage(conversation, path.at(-1), { role: "user", content: text });
  save();
  await reply(conversation, message);
}

// A new version of a user message (a sibling: the old one stays as a branch), and a reply to it.
export async function resend(conversation, message, text) {
  if (state.controller) return;
  const parent = conversation.messages.find((m) => m.id === message.parent);
  await reply(conversation, addMessage(conversation, parent, { role: "user", content: text }));
}

// Another version of a reply (or a second try after an error), beside the old one.
export async function regenerate(conversation, message) {
  if (state.controller) return;
  const parent = conversation.messages.find((m) => m.id === message.parent);
  if (parent) await reply(conversation, parent);
}

// The request's messages (the conversation's system prompt, then the branch up to `parent`) and the
// sampling settings the user set: the server's defaults apply to the rest.
function chatRequest(conversation, parent) {
  const path = pathOf(conversation);
  // neither errors nor replies stopped before their first token are part of what the model is told
  const messages = path.slice(0, path.indexOf(parent) + 1).filter((m) => !m.error && m.content !== "")
    .map(({ role, content }) => ({ role, content }));
  if (conversation.systemPrompt.trim()) messages.unshift({ role: "system", content: conversation.systemPrompt });
  const request = { messages };
  if (chosenModel()) request.model = chosenModel();
  for (const sampler of SAMPLERS) {
    if (state.settings[sampler.name] !== "") request[sampler.field] = state.settings[sampler.name];
  }
  return request;
}

// Streams a reply to `parent` (the user message it answers) into a new assistant message after it.
async function reply(conversation, parent) {
  const request = chatRequest(conversation, parent);
  const message = addMessage(conversation, parent, { role: "assistant", content: "" });
  if (request.model) message.model = request.model;
  state.controller = new AbortController();
  refresh();
  followEnd(true);
  // only this message's element changes while the reply streams in, and only its last blocks (render.js)
  const entry = messageView(message);
  const view = new Render.StreamView(entry.body, () => followEnd());
  // until the first token (a long prompt takes seconds): dots, and words for screen readers
  const waiting = waitingIndicator();
  entry.body.after(waiting);
  entry.el.setAttribute("aria-busy", "true");
  let firstTokenAt = 0;
  let nTokens = 0; // content deltas: one per token from this server
  try {
    const { usage, timings } = await streamChat(request, state.controller.signal, (delta) => {
      if (!firstTokenAt) {
        firstTokenAt = performance.now();
        waiting.remove();
        keyAccepted();
      }
      nTokens += 1;
      message.content += delta;
      entry.content = message.content; // the element stays this message's: the view catches up
      view.update(message.content);
    });
    keyAccepted();
    message.stats = statsText(timings, usage, nTokens, firstTokenAt);
    if (usage) message.contextTokens = usage.prompt_tokens + usage.completion_tokens;
  } catch (error) {
    if (error.name === "AbortError") {
      message.stats = statsText(null, null, nTokens, firstTokenAt) + " \u00b7 stopped";
    } else if (message.content) { // cut short: keep what came, and say why
      message.stats = `${statsText(null, null, nTokens, firstTokenAt)} \u00b7 Error: ${error.message}`;
    } else {
      message.error = `Error: ${error.message}`;
    }
  } finally {
    waiting.remove();
    entry.el.removeAttribute("aria-busy");
    state.controller = null;
    if (!message.content && !message.error && !message.stats?.endsWith("stopped")) message.content = "(empty reply)";
    view.finish(message.content);
    entry.content = message.content;
    conversation.updated = Date.now();
    save();
    refresh();
    announce(message.error ? "The reply failed" : "Reply finished");
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

// Screen readers hear that a reply ended (the streamed text itself is not a live region: read per token, it
// would be noise).
function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
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

setReplyActions({ regenerate, resend });
