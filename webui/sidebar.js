// The conversations: listed newest first, searched (titles and messages), opened, renamed, deleted, exported
// and imported. On a narrow screen the list slides over the page (style.css): ☰ opens and closes it; a tap
// beside it, Escape, choosing a chat and + New chat close it.
"use strict";

import {
  deleteConversation, exportBlob, importConversations, listConversations, newConversation, save, state,
} from "./store.js";
import { $, button, onRefresh, refresh, setStatus } from "./ui.js";

export function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}
// Only a narrow screen folds the sidebar away (style.css): a wide one always shows it.
export const NARROW = window.matchMedia("(max-width: 720px)");
export const sidebarOpen = () => NARROW.matches && document.body.classList.contains("sidebar-open");

export function openSidebar() {
  if (!NARROW.matches) return;
  document.body.classList.add("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", "true");
}

let renaming = null; // the id of the conversation whose title is being edited

function renderConversations() {
  const list = $("conversations");
  const query = $("search").value;
  const shown = listConversations(query);
  list.replaceChildren(...shown.map(conversationItem));
  const none = !shown.length && state.conversations.length;
  $("no-match").hidden = !none;
}

function conversationItem(c) {
  const item = document.createElement("li");
  item.className = "conv-item" + (c.id === state.currentId ? " active" : "");
  item.dataset.id = c.id;
  if (c.id === renaming) {
    item.append(renameBox(c));
    return item;
  }
  const open = button(c.title, "conv-title", () => {
    if (state.controller) return; // finish or stop the reply first
    state.currentId = c.id;
    save();
    refresh();
    closeSidebar();
  });
  if (c.id === state.currentId) open.setAttribute("aria-current", "true");
  open.title = c.title;
  open.addEventListener("dblclick", () => startRename(c));
  const rename = button("\u270e", "conv-rename", () => startRename(c), `Rename "${c.title}"`);
  rename.title = "Rename";
  const remove = button("\u00d7", "conv-delete", () => {
    if (!confirm(`Delete "${c.title}"?`)) return;
    deleteConversation(c);
    refresh();
  }, `Delete "${c.title}"`);
  remove.title = "Delete";
  remove.disabled = rename.disabled = Boolean(state.controller) && c.id === state.currentId;
  item.append(open, rename, remove);
  return item;
}

function startRename(c) {
  renaming = c.id;
  renderConversations();
  const box = $("conversations").querySelector(".conv-rename-box");
  box.focus();
  box.select();
}

// The title in an input: Enter or leaving it saves (an empty title keeps the old one), Escape cancels.
function renameBox(c) {
  const box = Object.assign(document.createElement("input"), { className: "conv-rename-box", value: c.title });
  box.setAttribute("aria-label", "New title");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    renaming = null;
    const title = box.value.trim().slice(0, 80);
    if (keep && title) {
      c.title = title;
      save();
    }
    renderConversations();
  };
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  box.addEventListener("blur", () => finish(true));
  return box;
}

export function startNewChat() {
  if (state.controller) return;
  newConversation();
  $("search").value = "";
  refresh();
  closeSidebar();
  $("input").focus();
}

function exportConversations() {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(exportBlob());
  a.download = `llamapyz-conversations-${new Date().toISOString().slice(0, 10)}.json`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function importFile(file) {
  try {
    const n = importConversations(JSON.parse(await file.text()));
    refresh();
    setStatus(`imported ${n} conversation${n === 1 ? "" : "s"}`);
  } catch (error) {
    setStatus(`import failed: ${error.message}`);
  }
}

$("new-chat").addEventListener("click", startNewChat);
$("search").addEventListener("input", renderConversations);
$("export").addEventListener("click", exportConversations);
$("import-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) importFile(file);
  event.target.value = "";
});
$("toggle-sidebar").addEventListener("click", () => {
  document.body.classList.toggle("sidebar-open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(sidebarOpen()));
});
$("sidebar-backdrop").addEventListener("click", closeSidebar);

onRefresh(renderConversations);
