// Light, dark, or the system's choice ("auto", the default): kept in localStorage and applied before the page
// is drawn (this script runs in <head>), so a dark page never flashes light. The root's data-theme is always
// the theme in effect, "light" or "dark" (auto follows the system as it changes), and style.css and the
// code theme's stylesheets key on it alone.
"use strict";

const Theme = (() => {
  const KEY = "llamapyz.theme";
  const CHOICES = ["auto", "light", "dark"];
  const SYSTEM_DARK = window.matchMedia("(prefers-color-scheme: dark)");

  function get() {
    try {
      const stored = localStorage.getItem(KEY);
      return CHOICES.includes(stored) ? stored : "auto";
    } catch {
      return "auto";
    }
  }

  function apply() {
    const choice = get();
    const theme = choice === "auto" ? (SYSTEM_DARK.matches ? "dark" : "light") : choice;
    document.documentElement.dataset.theme = theme;
    for (const link of document.querySelectorAll("link[data-code-theme]")) {
      link.media = link.dataset.codeTheme === theme ? "all" : "not all";
    }
  }

  // the next choice, applied and kept
  function cycle() {
    const next = CHOICES[(CHOICES.indexOf(get()) + 1) % CHOICES.length];
    try {
      localStorage.setItem(KEY, next);
    } catch { /* private mode: it lasts until the page is closed */ }
    apply();
    return next;
  }

  SYSTEM_DARK.addEventListener("change", apply);
  apply();
  return { get, cycle };
})();
