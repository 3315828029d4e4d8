// Light, dark, or the system's choice ("auto", the default): kept in localStorage and applied before the page
// is drawn (this script runs in <head>), so a dark page never flashes light. style.css picks its colours
// with light-dark() from the root's color-scheme; the code theme is switched through its stylesheets' media.
"use strict";

const Theme = (() => {
  const KEY = "llamapyz.theme";
  const CHOICES = ["auto", "light", "dark"];
  const MEDIA = { // the highlight.js themes' media for each choice
    auto: { light: "(prefers-color-scheme: light)", dark: "(prefers-color-scheme: dark)" },
    light: { light: "all", dark: "not all" },
    dark: { light: "not all", dark: "all" },
  };

  function get() {
    try {
      const stored = localStorage.getItem(KEY);
      return CHOICES.includes(stored) ? stored : "auto";
    } catch {
      return "auto";
    }
  }

  function apply(choice) {
    const root = document.documentElement;
    if (choice === "auto") delete root.dataset.theme;
    else root.dataset.theme = choice;
    for (const link of document.querySelectorAll("link[data-code-theme]")) {
      link.media = MEDIA[choice][link.dataset.codeTheme];
    }
  }

  // the next choice, applied and kept
  function cycle() {
    const next = CHOICES[(CHOICES.indexOf(get()) + 1) % CHOICES.length];
    try {
      localStorage.setItem(KEY, next);
    } catch { /* private mode: it lasts until the page is closed */ }
    apply(next);
    return next;
  }

  apply(get());
  return { get, cycle };
})();
