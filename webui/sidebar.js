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
  // a title being typed keeps its box, text and focus (a reply ending re-renders): the list catches up after
  if (renaming && document.activeElement === list.querySelector(".conv-rename-box")) return;
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
    const folding = sidebarOpen(); // a phone's sidebar goes, and the focus to the message box
    state.currentId = c.id;
    save();
    refresh();
    closeSidebar();
    if (folding) $("input").focus();
    else focusTitle(c.id);
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
    if (state.currentId) focusTitle(state.currentId); // its button is gone
    else $("new-chat").focus();
  }, `Delete "${c.title}"`);
  remove.title = "Delete";
  remove.disabled = rename.disabled = Boolean(state.controller) && c.id === state.currentId;
  item.append(open, rename, remove);
  return item;
}

// (re-rendering the list replaces its buttons, and with them the focus)
function focusTitle(id) {
  [...$("conversations").children].find((li) => li.dataset.id === id)?.querySelector(".conv-title").focus();
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
  // from the keyboard, the focus goes back to the title (the box is gone)
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) {
      event.preventDefault(); // or its key press would click the focused title: open it and lose the focus
      finish(true);
      focusTitle(c.id);
    } else if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
      focusTitle(c.id);
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
