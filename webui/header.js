// The page's header: the model's name (also the tab's title; with several models, a choice between them; a
// base model said to be one), what the server says (loading, needs an API key, unreachable), how much of the
// context the open conversation uses, and the light/dark switch.
"use strict";

import { getJson } from "./api.js";
import { showServerDefaults } from "./settings.js";
import { current, pathOf, save, state } from "./store.js";
import { $, onRefresh, setStatus } from "./ui.js";

const NEEDS_KEY = "this server needs an API key: open Settings";
const LOADING = "loading the model\u2026";
const UNREACHABLE = "cannot reach the server";
const FULL_SOON = 0.9; // of n_ctx: past this the context counter turns to a warning
// what /v1/models' base_model means for a chat page (a model without a chat template, like gemma3-270m)
const BASE_MODEL = "base model: completes text, not a chat";

export async function loadModelName() {
  try {
    const { status, body } = await getJson("v1/models");
    if (body) {
      const models = body.data || [];
      state.models = models.map((m) => m.id);
      state.baseModels = models.filter((m) => m.base_model).map((m) => m.id);
      renderModelPicker(models);
      const name = showModelName();
      const model = models.find((m) => m.id === name);
      if (model?.status === "loading") { // the server is starting: it says so, and the page asks again
        setStatus(LOADING);
        setTimeout(loadModelName, 1000);
        return;
      }
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

// The model requests name: with several on the server, the one chosen (or the first); "" with one, whose
// name need not be sent.
export function chosenModel() {
  if (state.models.length < 2) return "";
  return state.models.includes(state.settings.model) ? state.settings.model : state.models[0];
}

function showModelName() {
  const name = chosenModel() || state.models[0] || "llamapyz";
  $("model-name").textContent = state.baseModels.includes(name) ? `${name} (${BASE_MODEL})` : name;
  document.title = `${name} \u00b7 llamapyz`;
  return name;
}

// With several models, a choice in the header (each named with its state when not loaded: choosing it loads
// it; and whether it is a base model); the heading stays for screen readers.
function renderModelPicker(models) {
  const picker = $("model-picker");
  const several = models.length > 1;
  picker.hidden = !several;
  $("model-name").classList.toggle("visually-hidden", several);
  picker.replaceChildren(...models.map((m) => {
    const notes = [m.status && m.status !== "loaded" ? m.status : "", m.base_model ? BASE_MODEL : ""].filter(Boolean);
    return Object.assign(document.createElement("option"), {
      value: m.id, textContent: notes.length ? `${m.id} (${notes.join("; ")})` : m.id,
    });
  }));
  if (several) picker.value = chosenModel();
}

$("model-picker").addEventListener("change", async () => {
  state.settings.model = $("model-picker").value;
  save();
  showModelName();
  await loadProps(); // what the server knows of it: a model not loaded yet loads with its first request
  loadModelName(); // its state in the list
});

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
    const model = chosenModel();
    const { body } = await getJson(model ? `props?model=${encodeURIComponent(model)}` : "props");
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
