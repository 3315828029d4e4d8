// The chat page's start: the message box, the keyboard shortcuts, and the first render. The parts live in
// their own modules: store.js (what is kept), api.js (the server), messages.js and reply.js (the open
// conversation), sidebar.js (the list), settings.js (the dialog), header.js (model, context, theme).
"use strict";

import { loadModelName } from "./header.js";
import { send } from "./reply.js";
import { wireSettings } from "./settings.js";
import { closeSidebar, NARROW, openSidebar, sidebarOpen, startNewChat } from "./sidebar.js";
import { current, state } from "./store.js";
import { $, copyWith, onRefresh, refresh } from "./ui.js";

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
// Send, or Stop while a reply streams in
onRefresh(() => {
  $("send").hidden = Boolean(state.controller);
  $("stop").hidden = !state.controller;
});
$("stop").addEventListener("click", () => state.controller?.abort());
$("messages").addEventListener("click", (event) => {
  const copy = event.target.closest(".copy-code");
  if (copy) copyWith(copy, copy.closest(".code-block").querySelector("code").textContent);
});

// The keyboard hint only where there is a keyboard and room for it: a phone's placeholder would be cut off.
function placeholder() {
  $("input").placeholder = NARROW.matches ? "Message" : "Send a message (Enter to send, Shift+Enter for a new line)";
}
NARROW.addEventListener("change", placeholder);
placeholder();

// Keyboard shortcuts (listed in Settings): Ctrl+Shift+O a new chat, Shift+Escape the message box, Escape
// stops the reply (or closes the sidebar on a phone; in a search with text, it clears it), Ctrl+K searches the
// conversations. ⌘ for Ctrl on a Mac.
document.addEventListener("keydown", (event) => {
  if ($("settings").open) return; // the dialog has its own keys
  const mod = event.ctrlKey || event.metaKey;
  if (mod && event.shiftKey && event.key.toLowerCase() === "o") {
    event.preventDefault();
    startNewChat();
  } else if (event.key === "Escape" && event.shiftKey) {
    event.preventDefault();
    $("input").focus();
  } else if (event.key === "Escape" && sidebarOpen()) {
    closeSidebar();
  } else if (event.key === "Escape" && state.controller && !(event.target === $("search") && $("search").value)) {
    state.controller.abort();
  } else if (mod && !event.shiftKey && event.key.toLowerCase() === "k") {
    event.preventDefault();
    openSidebar();
    $("search").focus();
    $("search").select();
  }
});

wireSettings(loadModelName);
if (!current()) state.currentId = state.conversations[0]?.id || null;
refresh();
loadModelName();
$("input").focus();
