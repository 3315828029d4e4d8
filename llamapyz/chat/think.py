"""Reasoning between `[THINK]` and `[/THINK]` (Mistral's reasoning models: Ministral 3, Magistral; style
"think") or `<think>` and `</think>` (Qwen 3, DeepSeek-R1's distills, SmolLM3; style "tags"): a reply that
starts with the opening marker has its reasoning up to the closing one, then its answer (text and tool calls).

`ThinkStream` reads such a reply as it streams: ("reasoning", text) events for what is inside, and for the
rest the events of the stream it wraps (a `tools.ToolStream`, or plain content when there is none). Text that
may still be the start of `[THINK]` or `[/THINK]` is held back until it is not; neither marker ever reaches
reasoning or content. A reply cut inside its reasoning is reasoning only; a reply that does not start with
`[THINK]` goes to the wrapped stream whole. In the history, an assistant's `reasoning_content` becomes the
thinking block Mistral's templates render as `[THINK]…[/THINK]` (`think_blocks`); the `<think>` templates read
`reasoning_content` themselves.
"""

from __future__ import annotations

from typing import Protocol

from ..decode.generation import prefix_overlap

OPEN, CLOSE = "[THINK]", "[/THINK]"
MARKERS = {"think": (OPEN, CLOSE), "tags": ("<think>", "</think>")}  # a reasoning style's markers


def reasoning_style(template_source: str) -> str | None:
    """How a template renders reasoning: "think" ([THINK]…[/THINK]), "tags" (<think>…</think>) or None."""
    return next((style for style, (open_, close) in MARKERS.items()
                 if open_ in template_source and close in template_source), None)


class EventStream(Protocol):
    n_calls: int

    def feed(self, text: str) -> list[tuple]: ...

    def finish(self) -> list[tuple]: ...


class ThinkStream:
    """A reply's leading reasoning ([THINK]…[/THINK], or other `markers`) as reasoning events; the rest through
    `inner` (None: content)."""

    def __init__(self, inner: EventStream | None, markers: tuple[str, str] = (OPEN, CLOSE), trim: bool = False
                 ) -> None:
        self.inner = inner
        self.open, self.close = markers
        self.trim = trim  # whitespace around the reasoning and before the answer is layout: <think>\n…\n</think>\n\n
        self.text = ""
        self.at = 0  # everything before is released
        self.state = "start"  # "start" (has it opened?), "think" (inside), "after" (the answer)
        self.started = False  # whether any of the current part (reasoning, answer) is out

    @property
    def n_calls(self) -> int:
        return self.inner.n_calls if self.inner is not None else 0

    def feed(self, text: str) -> list[tuple]:
        self.text += text
        return self._read(final=False)

    def finish(self) -> list[tuple]:
        events = self._read(final=True)
        if self.state == "think":  # cut short inside: drop what may be a piece of [/THINK]
            self.at = len(self.text)
        return events + (self.inner.finish() if self.inner is not None else [])

    def _read(self, final: bool) -> list[tuple]:
        events: list[tuple] = []
        if self.state == "start":
            head = self.text.lstrip()
            if head.startswith(self.open):
                self.state, self.at = "think", len(self.text) - len(head) + len(self.open)
            elif self.open.startswith(head) and not final:
                return events  # may still open
            else:
                self.state = "after"
        if self.state == "think":
            self._skip_leading_space()
            rest = self.text[self.at:]
            found = rest.find(self.close)
            if found >= 0:
                reasoning = rest[:found].rstrip() if self.trim else rest[:found]
                if reasoning:
                    events.append(("reasoning", reasoning))
                self.state, self.at, self.started = "after", self.at + found + len(self.close), False
            else:
                hold = prefix_overlap(rest, self.close)
                if self.trim:  # trailing whitespace waits too: it may be the layout before the closing marker
                    hold = len(rest) - len(rest[:len(rest) - hold].rstrip())
                if len(rest) > hold:
                    events.append(("reasoning", rest[:len(rest) - hold]))
                    self.at += len(rest) - hold
                    self.started = True
        if self.state == "after":
            self._skip_leading_space()
            if self.at < len(self.text):
                rest, self.at, self.started = self.text[self.at:], len(self.text), True
                events += self.inner.feed(rest) if self.inner is not None else [("content", rest)]
        return events

    def _skip_leading_space(self) -> None:
        """With `trim`, the whitespace a part starts with is not released."""
        if self.trim and not self.started:
            rest = self.text[self.at:]
            self.at += len(rest) - len(rest.lstrip())


def think_blocks(message: dict) -> dict:
    """An assistant (or system) message whose `reasoning_content` is set, as Mistral's templates read it:
    content as a list of a thinking block and a text block."""
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str) or not reasoning:
        return message
    content = message.get("content") or ""
    blocks = [{"type": "thinking", "thinking": reasoning}]
    if isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    return {**{k: v for k, v in message.items() if k != "reasoning_content"}, "content": blocks}
