// Model output to HTML, with the libraries in vendor/: markdown-it (CommonMark, tables, strikethrough,
// autolinks; raw HTML stays text), highlight.js for fenced code, KaTeX for $…$, $$…$$, \(…\) and \[…\] math
// (delimited by markdown-it-texmath), and DOMPurify over everything before it reaches the page. Links open in
// a new tab without access to this one. `StreamView` shows a reply while it streams in, re-rendering only
// the part that can still change.
"use strict";

const Render = (() => {
  const md = markdownit({ html: false, linkify: true, breaks: true });
  // a model's images would be fetched from wherever it says (a tracking pixel, a leak through the URL)
  md.disable("image");
  md.use(texmath, { engine: katex, delimiters: ["dollars", "brackets"] });

  const escapeHtml = md.utils.escapeHtml;

  // KaTeX never throws here (a TeX error is shown in red) and trusts nothing (no \href, \htmlClass, …);
  // maxSize keeps \rule and friends from drawing boxes larger than the page
  const KATEX = { throwOnError: false, strict: "ignore", maxSize: 20, maxExpand: 500 };
  function math(tex, displayMode) {
    try {
      return katex.renderToString(tex, { ...KATEX, displayMode });
    } catch { // not a TeX error (those are shown in place): whatever it is, the reply still renders
      return `<code>${escapeHtml(tex)}</code>`;
    }
  }
  // texmath's own markup (<eq>, <eqn>, <section>) replaced by plain elements
  md.renderer.rules.math_inline = (tokens, i) => math(tokens[i].content, false);
  md.renderer.rules.math_inline_double = (tokens, i) => math(tokens[i].content, true);
  md.renderer.rules.math_block = (tokens, i) => `<div class="math">${math(tokens[i].content, true)}</div>\n`;
  md.renderer.rules.math_block_eqno = (tokens, i) =>
    `<div class="math">${math(tokens[i].content, true)}<span class="eqno">(${escapeHtml(tokens[i].info)})</span></div>\n`;

  // a code block: its language, a copy button, and the code highlighted when highlight.js knows the language
  // (no guessing: auto-detection tries every language on every update of a streaming block)
  function codeBlock(code, lang) {
    const known = Boolean(lang && hljs.getLanguage(lang));
    const body = known ? hljs.highlight(code, { language: lang, ignoreIllegals: true }).value : escapeHtml(code);
    const label = lang ? `<span class="code-lang">${escapeHtml(lang)}</span>` : "";
    return `<div class="code-block"><div class="code-head">${label}` +
      `<button type="button" class="copy-code">Copy</button></div>` +
      `<pre><code class="hljs${known ? " language-" + escapeHtml(lang) : ""}">${body}</code></pre></div>\n`;
  }
  md.renderer.rules.fence = (tokens, i) =>
    codeBlock(tokens[i].content.replace(/\n$/, ""), md.utils.unescapeAll(tokens[i].info).trim().split(/\s+/)[0]);
  md.renderer.rules.code_block = (tokens, i) => codeBlock(tokens[i].content.replace(/\n$/, ""), "");

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.nodeName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  // KaTeX's MathML keeps the TeX source in <annotation>, an element DOMPurify removes: drop its text with it
  // (DOMPurify keeps the text of the elements it removes), so that screen readers read the MathML only
  const PURIFY = { ADD_FORBID_CONTENTS: ["annotation"] };
  const PURIFY_FRAGMENT = { ...PURIFY, RETURN_DOM_FRAGMENT: true };

  // The whole text as sanitised HTML.
  const html = (markdown) => DOMPurify.sanitize(md.render(markdown), PURIFY);

  // Where line `line` (0-based) of `text` starts; line ends as markdown-it reads them (\n, \r\n or \r).
  function lineStart(text, line) {
    const ends = /\r\n?|\n/g;
    for (let i = 0; i < line; i++) ends.exec(text);
    return line ? ends.lastIndex : 0;
  }

  const countLines = (text) => (text.match(/\r\n?|\n/g) || []).length;

  // A reply while it streams in. The text is a sequence of top-level blocks (paragraphs, lists, code,
  // tables, …). A block is final once a later one has begun on a complete line: CommonMark never reopens a
  // closed block, and only the last line, which may still grow, can change what it starts. Final blocks are
  // rendered once and kept; each update parses and renders only the text after them, so an update costs
  // the size of the last block, not of the reply. What reaches back across blocks (a reference definition
  // for an earlier link, $$…$$ around a blank line) shows when the reply ends: `finish` renders the whole
  // text, so the final DOM is exactly that of `html(text)`.
  class StreamView {
    constructor(el, onRender = () => {}) {
      this.el = el;
      this.onRender = onRender; // after each render (the page scrolls to the bottom)
      this.settled = 0; // chars of the text whose blocks are final and rendered for good
      this.tail = []; // the nodes rendered from the rest of the text, replaced by each render
      this.tailHtml = "";
      this.text = "";
      this.frame = 0;
      el.replaceChildren();
    }

    // The text so far (the previous text plus a delta): rendered at the next frame, at most once a frame.
    update(text) {
      this.text = text;
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(this.text); });
    }

    // Renders `text` now.
    render(text) {
      const rest = text.slice(this.settled);
      const env = {};
      let tokens = md.parse(rest, env);
      // the last top-level block after the first that begins on a complete line: the ones before it are final
      const lastLine = countLines(rest);
      let cut = 0;
      for (let i = tokens.length - 1; i > 0 && !cut; i--) {
        const t = tokens[i];
        if (t.level === 0 && t.nesting >= 0 && t.map && t.map[0] < lastLine) cut = i;
      }
      if (cut) {
        const final = DOMPurify.sanitize(md.renderer.render(tokens.slice(0, cut), md.options, env), PURIFY_FRAGMENT);
        this.el.insertBefore(final, this.tail[0] || null);
        this.settled += lineStart(rest, tokens[cut].map[0]);
        tokens = tokens.slice(cut);
      }
      const tailHtml = md.renderer.render(tokens, md.options, env);
      if (cut || tailHtml !== this.tailHtml) {
        for (const node of this.tail) node.remove();
        const fragment = DOMPurify.sanitize(tailHtml, PURIFY_FRAGMENT);
        this.tail = [...fragment.childNodes];
        this.tailHtml = tailHtml;
        this.el.append(fragment);
      }
      this.onRender();
    }

    // The whole text, rendered in full: the end of the stream.
    finish(text) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.el.innerHTML = html(text);
      this.onRender();
    }
  }

  return { html, StreamView, escapeHtml };
})();
