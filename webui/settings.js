// The Settings dialog: the default system prompt for new chats, the sampling settings (each empty = the
// server's default, shown as its placeholder), the API key, the keyboard shortcuts. It edits a copy: Done
// (only with valid values) saves it; Cancel and Escape discard it.
"use strict";

import { DEFAULT_SETTINGS, SAMPLERS, save, state, validSetting } from "./store.js";
import { $ } from "./ui.js";

// One labelled number input per sampler, bounded as the sampler is.
function samplerInputs() {
  return SAMPLERS.map((sampler) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { id: sampler.id, type: "number" });
    if (sampler.min !== undefined) input.min = sampler.min;
    if (sampler.max !== undefined) input.max = sampler.max;
    input.step = sampler.integer ? "1" : "0.01";
    // what min/max/step cannot say (above 0, a whole number): Done refuses it, as it refuses the rest
    input.addEventListener("input", () => {
      const value = input.value === "" ? "" : Number(input.value);
      input.setCustomValidity(validSetting(sampler, value) ? "" : "not a valid value");
    });
    label.append(sampler.label, input);
    return label;
  });
}
$("samplers").replaceChildren(...samplerInputs());

export function openSettings() {
  fillSettings(state.settings);
  $("settings").returnValue = "";
  $("settings").showModal();
}

function fillSettings(s) {
  $("system-prompt").value = s.systemPrompt;
  for (const sampler of SAMPLERS) {
    $(sampler.id).value = s[sampler.name];
    $(sampler.id).setCustomValidity("");
  }
  $("api-key").value = s.apiKey;
  showServerDefaults();
}

// Each sampler's placeholder: the value the server uses when the page sends none (its /props).
export function showServerDefaults() {
  const defaults = state.serverProps.default_generation_settings || {};
  for (const sampler of SAMPLERS) {
    const value = defaults[sampler.field];
    const otherwise = { max_tokens: "no limit", seed: "random" }[sampler.field] ?? "server default";
    $(sampler.id).placeholder = value != null ? `default ${value}` : otherwise;
  }
}

// The dialog's values, each invalid one kept as it was; returns whether the API key changed.
function readSettings() {
  const settings = { ...state.settings, systemPrompt: $("system-prompt").value, apiKey: $("api-key").value.trim() };
  for (const sampler of SAMPLERS) {
    const input = $(sampler.id);
    const value = input.value === "" ? "" : Number(input.value);
    if (input.validity.valid && validSetting(sampler, value)) settings[sampler.name] = value;
  }
  const keyChanged = settings.apiKey !== state.settings.apiKey;
  state.settings = settings;
  save();
  return keyChanged;
}

// `onKeyChanged` runs after Done saved a new API key.
export function wireSettings(onKeyChanged) {
  $("open-settings").addEventListener("click", openSettings);
  $("settings").addEventListener("close", () => {
    // Done; Cancel and Escape discard the edits
    if ($("settings").returnValue === "ok" && readSettings()) onKeyChanged();
  });
  $("reset-settings").addEventListener("click", () => fillSettings({ ...DEFAULT_SETTINGS, apiKey: $("api-key").value }));
}
