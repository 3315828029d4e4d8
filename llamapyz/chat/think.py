"""Reasoning between `[THINK]` and `[/THINK]` (Mistral's reasoning models: Ministral 3, Magistral): a reply
that starts with `[THINK]` has its reasoning up to `[/THINK]`, then its answer (text and tool calls).

`ThinkStream` reads such a reply as it streams: ("reasoning", text) events for what is inside, and for the
rest the events of the stream it wraps (a `tools.ToolStream`, or plain content when there is none). Text that
may still be the start of `[THINK]` or `[/THINK]` is held back until it is not; neither marker ever reaches
reasoning or content. A reply cut inside its reasoning is reasoning only; a reply that does not start with
`[THINK]` goes to the wrapped stream whole. In the history, an assistant's `reasoning_content` becomes the
thinking block the template renders as `[THINK]…[/THINK]` (`think_blocks`).
"""

from __future__ import annotations

from typing import Protocol

from ..decode.generation import prefix_overlap

OPEN, CLOSE = "[THINK]", "[/THINK]"


def uses_think(template_source: str) -> bool:
    """Whether a template renders reasoning as [THINK]…[/THINK]."""
    return OPEN in template_source and CLOSE in template_source


class EventStream(Protocol):
    n_calls: int

    def feed(self, text: str) -> list[tuple]: ...

    def finish(self) -> list[tuple]: ...


class ThinkStream:
    """A reply's leading [THINK]…[/THINK] as reasoning events; the rest through `inner` (None: content)."""

    def __init__(self, inner: EventStream | None) -> None:
        self.inner = inner
        self.text = ""
        self.at = 0  # everything before is released
        self.state = "start"  # "start" (has it opened?), "think" (inside), "after" (the answer)

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
            if head.startswith(OPEN):
                self.state, self.at = "think", len(self.text) - len(head) + len(OPEN)
            elif OPEN.startswith(head) and not final:
                return events  # may still open
            else:
                self.state = "after"
        if self.state == "think":
            rest = self.text[self.at:]
            found = rest.find(CLOSE)
            if found >= 0:
                if found:
                    events.append(("reasoning", rest[:found]))
                self.state, self.at = "after", self.at + found + len(CLOSE)
            else:
                hold = prefix_overlap(rest, CLOSE)
                if len(rest) > hold:
                    events.append(("reasoning", rest[:len(rest) - hold]))
                    self.at += len(rest) - hold
        if self.state == "after" and self.at < len(self.text):
            rest, self.at = self.text[self.at:], len(self.text)
            events += self.inner.feed(rest) if self.inner is not None else [("content", rest)]
        return events


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
