// Small pieces the page's modules share: element lookup, buttons, the clipboard, and one "state changed:
// re-render" call that each part of the page subscribes to.
"use strict";

export const $ = (id) => document.getElementById(id);

const renderers = [];
export const onRefresh = (render) => renderers.push(render);
export const refresh = () => renderers.forEach((render) => render());

export function button(label, className, onClick, ariaLabel = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
  b.addEventListener("click", onClick);
  return b;
}

// Copies text; the Clipboard API exists only in secure contexts (https, localhost), so a page opened over
// plain http from another machine copies through a selected, off-screen textarea instead.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
  area.style.position = "fixed";
  area.style.left = "-9999px";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("copy refused");
}

// Copies text and says so on the button for a moment.
export async function copyWith(buttonElement, text) {
  const label = buttonElement.textContent;
  try {
    await copyText(text);
    buttonElement.textContent = "Copied";
  } catch {
    buttonElement.textContent = "Copy failed";
  }
  setTimeout(() => { buttonElement.textContent = label; }, 1500);
}

export const setStatus = (text) => { $("status").textContent = text; };
