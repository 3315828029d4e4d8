"""Reading a reply's tool calls as it streams (`ToolStream`), in one of `tools.SYNTAXES` but harmony's
(`harmony.HarmonyStream`): which text is content and which are calls, each call's name as soon as it is known
and its arguments' JSON piece by piece."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..decode.generation import prefix_overlap

if TYPE_CHECKING:
    from .tools import ToolSyntax


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# a call's start up to its arguments' first character: '{"name": "f", "arguments": ' (then "{" follows)
_HEADER = re.compile(r'\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')


class ToolStream:
    """Reads a reply as it streams and says, as early as it can, what is text and what are calls.

    `feed` returns events: ("content", text), ("call", index, id, name) when a call's name is known, and
    ("arguments", index, text) for each new piece of its arguments' JSON (the pieces join to the JSON text
    the model wrote). Text that may be the start of an opening marker is held back until it is not; a
    call's arguments are released as they arrive, since everything before the arguments' value completes
    belongs to it. `finish` releases what is left: an unfinished or unparsable first block as text; after a
    call, an opening cut off before the next call's name is dropped (markup, never the reply's text).
    """

    def __init__(self, syntax: ToolSyntax, names: set[str]) -> None:
        self.syntax, self.names = syntax, names
        self.text = ""
        self.at = 0  # everything before is released
        self.in_calls = False  # past an opening marker (or, for llama3, at the reply's first "{")
        self.block_start = 0  # where the current opening marker starts (to give it back as text)
        self.n_calls = 0
        self.header_end: int | None = None  # the current call's arguments start here once its name is out
        self.sent = 0  # how far the current call's arguments are released
        self.closing = False  # past a block's last call, before its closing marker
        self.decoder = json.JSONDecoder()

    def feed(self, text: str) -> list[tuple]:
        self.text += text
        events: list[tuple] = []
        while self._advance(events):
            pass
        return events

    def finish(self) -> list[tuple]:
        events: list[tuple] = []
        if self.in_calls and self.header_end is None and self.n_calls:  # another call cut short before its
            self.text = self.text[:self.block_start]  # name (a length limit, a repeating model): not content
        elif self.in_calls and self.header_end is None:  # an unfinished first block: it was text after all
            self.at = self.block_start
        if self.at < len(self.text) and self.header_end is None:
            events.append(("content", self.text[self.at:]))
        elif self.header_end is not None and self.sent < len(self.text):  # a call cut short (length)
            events.append(("arguments", self.n_calls, self.text[self.sent:]))
            self.n_calls += 1
        self.at = len(self.text)
        return events

    def _advance(self, events: list[tuple]) -> bool:
        """One step of reading; True when it made progress and may make more."""
        if self.closing:
            return self._read_closing()
        if not self.in_calls:
            return self._read_text(events)
        if self.header_end is not None:
            return self._read_arguments(events)
        return self._read_call_start(events)

    def _read_text(self, events: list[tuple]) -> bool:
        syntax, text = self.syntax, self.text
        if not syntax.opening:  # llama3: only a reply that starts with "{" is a call
            if self.n_calls == 0 and self.at == 0:
                head = text.lstrip()
                if not head:
                    return False
                if head.startswith("{"):
                    self.in_calls, self.block_start, self.at = True, 0, len(text) - len(head)
                    return True
            if self.at < len(text):
                events.append(("content", text[self.at:]))
                self.at = len(text)
            return False
        found = text.find(syntax.opening, self.at)
        if found >= 0:
            if found > self.at:
                events.append(("content", text[self.at:found]))
            self.block_start, self.at, self.in_calls = found, found + len(syntax.opening), True
            return True
        hold = prefix_overlap(text[self.at:], syntax.opening)
        if len(text) - hold > self.at:
            events.append(("content", text[self.at:len(text) - hold]))
            self.at = len(text) - hold
        return False

    def _read_call_start(self, events: list[tuple]) -> bool:
        if self.syntax.args_marker:
            return self._read_name(events)
        text, position = self.text, self.at
        while position < len(text) and (text[position].isspace() or text[position] in "[,"):
            position += 1  # calls may come as an array in any syntax (Ollama writes Phi-4's that way)
        if position == len(text):
            return False
        if text[position] == "]":  # the end of the calls' array
            self._end_block(position + 1)
            return True
        match = _HEADER.match(text, position)
        if match and match.group(1) in self.names:
            events.append(("call", self.n_calls, new_call_id(), match.group(1)))
            self.at, self.header_end, self.sent = position, match.end(), match.end()
            return True
        try:  # a call written another way ("arguments" first): whole, once it is complete
            value, end = self.decoder.raw_decode(text, position)
        except ValueError:
            return False
        call = _call(value, self.syntax, self.names)
        if call is None:  # not a call after all: the block is text (given back at finish)
            self.header_end = None
            return False
        events += [("call", self.n_calls, call.id, call.name), ("arguments", self.n_calls, call.arguments)]
        self.n_calls += 1
        self._after_call(end)
        return True

    def _read_name(self, events: list[tuple]) -> bool:
        """A name-first call's `NAME args_marker`; a name that is not a tool's leaves the block as text."""
        text, marker = self.text, self.syntax.args_marker
        found = text.find(marker, self.at)
        if found < 0:
            return False
        name = text[self.at:found].strip()
        if name not in self.names:
            return False  # not a call after all: the block is text (given back at finish)
        events.append(("call", self.n_calls, new_call_id(), name))
        self.header_end = self.sent = found + len(marker)
        return True

    def _read_arguments(self, events: list[tuple]) -> bool:
        text = self.text
        start = self.header_end
        while start < len(text) and text[start].isspace():
            start += 1
        self.sent = max(self.sent, start)  # blanks before the arguments are not theirs
        try:
            _, end = self.decoder.raw_decode(text, start)
        except ValueError:  # not complete yet: all of it so far is the arguments'
            if len(text) > self.sent:
                events.append(("arguments", self.n_calls, text[self.sent:]))
                self.sent = len(text)
            return False
        if end > self.sent:
            events.append(("arguments", self.n_calls, text[self.sent:end]))
        if self.syntax.args_marker:  # the arguments are the whole call
            self.header_end = None
            self.n_calls += 1
            self._after_call(end)
            return True
        close = end
        while close < len(text) and text[close].isspace():
            close += 1
        if close == len(text):
            self.sent = end
            return False  # the call's "}" has not come yet
        self.header_end = None
        self.n_calls += 1
        self._after_call(close + 1 if text[close] == "}" else close)
        return True

    def _after_call(self, end: int) -> None:
        self.at = end
        if not self.syntax.array:
            self._end_block(end)

    def _end_block(self, end: int) -> None:
        """Past a block's last call: its closing marker (if the syntax has one) comes next."""
        self.at, self.in_calls, self.closing = end, False, bool(self.syntax.closing)

    def _read_closing(self) -> bool:
        """Skip the closing marker once it is whole; wait while what came may still be its start."""
        rest = self.text[self.at:]
        head = rest.lstrip()
        closing = self.syntax.closing
        if head.startswith(closing):
            self.at += len(rest) - len(head) + len(closing)
        elif not head or closing.startswith(head):
            return False
        self.closing = False
        return True


def _call(value: Any, syntax: ToolSyntax, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get(syntax.args_key, value.get("arguments", value.get("parameters", {})))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False), new_call_id())
