// The open conversation: its messages (the branch shown), each with its actions (copy, edit and resend, regenerate,
// delete, and ‹ n/m › between the branches at its place), its system prompt, and the scroll position (kept
// at the bottom while a reply streams in unless the user scrolls up; a button brings it back).
"use strict";

import {
  current, descendantsOf, newConversation, pathOf, removeMessage, save, showBranch, siblingsOf, state,
} from "./store.js";
import { $, button, copyWith, onRefresh, refresh } from "./ui.js";

// Each message's element, kept while its text is unchanged: re-rendering the conversation (a new reply, a
// deleted chat) moves these instead of rendering every message's Markdown again. Footers are rebuilt each time.
const messageViews = new WeakMap(); // message -> {el, body, content, error}

// What a message's Regenerate and an edit's Send do: reply.js's, registered by it (it imports this module, so
// this one does not import it back).
const replyActions = { regenerate: () => {}, resend: () => {} };
export function setReplyActions(actions) {
  Object.assign(replyActions, actions);
}

export function messageView(message) {
  let view = messageViews.get(message);
  if (view && view.content === message.content && view.error === message.error) return view;
  const el = document.createElement("article");
  el.className = `msg ${message.role}` + (message.error ? " error" : "");
  el.setAttribute("aria-label", message.role === "user" ? "You said" : "The model said");
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

function messageElement(message, conversation) {
  const { el } = messageView(message);
  el.querySelector(":scope > .msg-foot")?.remove();
  const footer = document.createElement("div");
  footer.className = "msg-foot";
  if (message.stats) {
    const stats = message.model ? `${message.model} \u00b7 ${message.stats}` : message.stats;
    footer.append(Object.assign(document.createElement("span"), { className: "stats", textContent: stats }));
  }
  if (!state.controller) {
    const siblings = siblingsOf(conversation, message);
    if (siblings.length > 1) footer.append(branchSwitch(conversation, message, siblings));
    if (!message.error) {
      footer.append(button("Copy", "copy", (event) => copyWith(event.currentTarget, message.content),
        "Copy this message"));
    }
    if (message.role === "user") {
      footer.append(button("Edit", "edit", () => edit(el, conversation, message), "Edit and resend this message"));
    } else if (message.parent) { // a reply at the root (an import's) answers nothing to ask again
      footer.append(button("Regenerate", "regenerate", () => replyActions.regenerate(conversation, message),
        "Regenerate this reply"));
    }
    footer.append(button("Delete", "delete", () => deleteMessage(conversation, message), "Delete this message"));
  }
  el.append(footer);
  return el;
}

// ‹ 2/3 ›: the other versions of a message (its edits or regenerations), each with the messages after it.
function branchSwitch(conversation, message, siblings) {
  const at = siblings.indexOf(message);
  const show = (other) => () => {
    showBranch(conversation, other);
    save();
    refresh();
  };
  const nav = document.createElement("span");
  nav.className = "branches";
  nav.setAttribute("role", "group");
  nav.setAttribute("aria-label", "Versions of this message");
  const previous = button("\u2039", "branch-previous", show(siblings[at - 1]), "Previous version");
  const next = button("\u203a", "branch-next", show(siblings[at + 1]), "Next version");
  previous.disabled = at === 0;
  next.disabled = at === siblings.length - 1;
  const position = Object.assign(document.createElement("span"), { className: "branch-position" });
  position.textContent = `${at + 1}/${siblings.length}`;
  nav.append(previous, position, next);
  return nav;
}

function deleteMessage(conversation, message) {
  const after = descendantsOf(conversation, message).size - 1;
  const question = after ? `Delete this message and the ${after} after it?` : "Delete this message?";
  if (!confirm(question)) return;
  removeMessage(conversation, message);
  save();
  refresh();
  $("input").focus(); // its button is gone
}

// Editing a user message: an editor across the row; Send adds the edited text as a new version (a branch:
// the old one and its replies stay, ‹ › switches between them) and asks for a reply to it.
function edit(el, conversation, message) {
  messageViews.delete(message); // its element turns into an editor
  const body = el.querySelector(".msg-body");
  const editor = document.createElement("textarea");
  editor.className = "edit-box";
  editor.setAttribute("aria-label", "Edit the message");
  editor.value = message.content;
  const send = button("Send", "edit-send primary", () => {
    const text = editor.value.trim();
    if (text) replyActions.resend(conversation, message, text);
  });
  const cancel = button("Cancel", "edit-cancel", renderMessages);
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.shiftKey) { // Shift+Escape: to the message box, the edit kept
      event.stopPropagation();
      renderMessages();
    } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      send.click();
    }
  });
  body.classList.add("editing");
  body.replaceChildren(editor);
  const footer = el.querySelector(".msg-foot");
  footer.replaceChildren(send, cancel);
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
  footer.scrollIntoView({ block: "nearest" });
  editor.scrollIntoView({ block: "nearest" });
}

// --- the scroll position ----------------------------------------------------------------------------------

// Whether the view follows the end of the conversation: true until the user scrolls up, again once they
// scroll back down (or press ↓).
let following = true;
const NEAR_BOTTOM_PX = 40;

export function followEnd(force = false) {
  const box = $("messages");
  if (force) following = true;
  if (following) box.scrollTop = box.scrollHeight;
  showScrollButton();
}

function showScrollButton() {
  const box = $("messages");
  $("scroll-down").hidden = box.scrollHeight - box.scrollTop - box.clientHeight <= NEAR_BOTTOM_PX;
}

$("messages").addEventListener("scroll", () => {
  const box = $("messages");
  following = box.scrollHeight - box.scrollTop - box.clientHeight <= NEAR_BOTTOM_PX;
  showScrollButton();
}, { passive: true });
$("scroll-down").addEventListener("click", () => {
  $("messages").scrollTo({ top: $("messages").scrollHeight, behavior: "smooth" });
  following = true;
});

// --- rendering --------------------------------------------------------------------------------------------

let shownId = null; // the conversation rendered last

export function renderMessages() {
  const box = $("messages");
  const conversation = current();
  const opened = (conversation?.id ?? null) !== shownId; // another conversation: shown from its end
  shownId = conversation?.id ?? null;
  const path = conversation ? pathOf(conversation) : [];
  if (!path.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Ask anything. Replies stream in as they are generated.";
    box.replaceChildren(empty);
  } else {
    box.replaceChildren(...path.map((m) => messageElement(m, conversation)));
  }
  renderSystemPrompt(conversation, opened);
  followEnd(opened);
}

// The conversation's own system prompt (a new chat starts with the default from Settings). While it is being
// typed the field is left alone, unless another conversation opened (Ctrl+Shift+O from within it).
function renderSystemPrompt(conversation, opened = false) {
  const prompt = conversation?.systemPrompt ?? state.settings.systemPrompt;
  const field = $("conversation-system");
  if ((opened || document.activeElement !== field) && field.value !== prompt) field.value = prompt;
  $("system-summary").textContent = prompt.trim() ? prompt.trim().split("\n")[0] : "none";
  field.disabled = Boolean(state.controller);
}

$("conversation-system").addEventListener("input", () => {
  const fresh = !current();
  const conversation = current() || newConversation(); // a prompt typed before the first message starts a chat
  conversation.systemPrompt = $("conversation-system").value;
  save();
  if (fresh) refresh();
  else renderSystemPrompt(conversation);
});

onRefresh(renderMessages);
