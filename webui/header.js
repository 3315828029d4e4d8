// The page's header: the model's name (also the tab's title), what the server says (loading, needs an API
// key, unreachable), how much of the context the open conversation uses, and the light/dark switch.
"use strict";

import { getJson } from "./api.js";
import { showServerDefaults } from "./settings.js";
import { current, pathOf, state } from "./store.js";
import { $, onRefresh, setStatus } from "./ui.js";

const NEEDS_KEY = "this server needs an API key: open Settings";
const LOADING = "loading the model\u2026";
const UNREACHABLE = "cannot reach the server";
const FULL_SOON = 0.9; // of n_ctx: past this the context counter turns to a warning

export async function loadModelName() {
  try {
    const { status, body } = await getJson("v1/models");
    if (body) {
      $("model-name").textContent = body.data?.[0]?.id || "llamapyz";
      document.title = `${$("model-name").textContent} \u00b7 llamapyz`;
      if ([NEEDS_KEY, LOADING, UNREACHABLE].includes($("status").textContent)) setStatus("");
      loadProps();
    } else if (status === 401) {
      setStatus(NEEDS_KEY);
    } else if (status === 503) {
      setStatus(LOADING);
      setTimeout(loadModelName, 1000);
    }
  } catch {
    setStatus(UNREACHABLE);
  }
}

// A request with the API key succeeded: the header stops asking for one.
export function keyAccepted() {
  if ($("status").textContent === NEEDS_KEY) {
    setStatus("");
    loadModelName();
  }
}

// The server's context size and sampling defaults (the Settings' placeholders).
async function loadProps() {
  try {
    const { body } = await getJson("props");
    if (!body) return;
    state.serverProps = body;
    showServerDefaults();
    renderContextUse();
  } catch {
    // the placeholders just say "server default"
  }
}

// "used / n_ctx": the tokens the open conversation's branch filled at its last reply (prompt and reply, as
// the server counted them), against the model's context.
function renderContextUse() {
  const el = $("context-use");
  const nCtx = state.serverProps.n_ctx;
  const conversation = current();
  const counted = conversation ? pathOf(conversation).findLast((m) => m.contextTokens !== undefined) : null;
  el.hidden = !nCtx;
  if (!nCtx) return;
  const used = counted?.contextTokens ?? 0;
  el.textContent = `${used.toLocaleString("en")} / ${nCtx.toLocaleString("en")}`;
  el.title = `${used} of the model's ${nCtx}-token context used by this conversation (at its last reply)`;
  el.setAttribute("aria-label", `Context: ${used} of ${nCtx} tokens used`);
  el.classList.toggle("warning", used >= FULL_SOON * nCtx);
}

const THEME_LABELS = { auto: ["\u25d0", "Theme: as the system's"], light: ["\u2600", "Theme: light"],
  dark: ["\u263e", "Theme: dark"] };

function showTheme(choice) {
  const [icon, label] = THEME_LABELS[choice];
  $("theme").textContent = icon;
  $("theme").setAttribute("aria-label", `${label} (click to change)`);
  $("theme").title = label;
}

$("theme").addEventListener("click", () => showTheme(Theme.cycle()));
showTheme(Theme.get());
onRefresh(renderContextUse);
