"""gpt-oss's "harmony" format: a reply read as reasoning, content and tool calls; the history prepared for its
template; the grammar of its tool calls.

The prompt ends with `<|start|>assistant`; the reply is one or more messages, each a header, `<|message|>`,
a body and an end:

    <|channel|>analysis<|message|>REASONING<|end|>
    <|start|>assistant<|channel|>final<|message|>ANSWER<|return|>

    <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>
    <|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>

A header names a channel and, for a tool call, a recipient (`to=functions.NAME`, before or after the
channel). `HarmonyStream` reads such a reply as it streams, with the events of `tools.ToolStream` plus
("reasoning", text):

- analysis bodies are reasoning; final and commentary bodies without a recipient (preambles) are content;
- a body sent to `functions.NAME` of a known tool is a call, its body the arguments (released as they come);
- a body sent anywhere else (an unknown function, the built-in `browser`/`python` tools, another role) is
  dropped, as llama.cpp's parser drops such "unsolicited" calls;
- a body ends at `<|end|>`, `<|call|>` or `<|return|>` (the last two end the generation, so they are not
  in the text our generation releases), at the next `<|start|>` or `<|channel|>`, or where the reply ends.

Guaranteed: no markup reaches content or reasoning (text that may be the start of a marker is held back
until it is not); a header is read only once its `<|message|>` has come, so a reply cut inside a header
releases nothing of it; a reply cut inside a call yields the call with the arguments written so far. A reply
that does not start like a header (the model ignored the format, or a response_format grammar shaped it) is
content until a marker ends it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from ..decode.generation import prefix_overlap

MESSAGE, START, CHANNEL, CONSTRAIN = "<|message|>", "<|start|>", "<|channel|>", "<|constrain|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>")  # end a body and are consumed
BREAKS = (START, CHANNEL)  # end a body and begin the next header
TERMINATORS = ENDS + BREAKS
HEADER_STARTS = (CHANNEL, START, CONSTRAIN, MESSAGE, "to=")  # how a header may begin (after blanks)
FUNCTIONS = "functions."

_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_ROLE = re.compile(r"<\|start\|>\s*(\w*)")


class HarmonyStream:
    """Reads a harmony reply as it streams (module docstring). `names`: the tools a call may go to (empty:
    every call is dropped); `new_id`: makes each call's id."""

    def __init__(self, names: set[str], new_id: Callable[[], str]) -> None:
        self.names, self.new_id = names, new_id
        self.text = ""
        self.at = 0  # everything before is read
        self.in_body = False  # else reading a header (or the blanks between messages)
        self.kind = ""  # the body's: "reasoning", "content", "call" or "drop"
        self.n_calls = 0
        self.call_started = False  # the current call's arguments have begun (leading blanks skipped)

    def feed(self, text: str) -> list[tuple]:
        self.text += text
        events: list[tuple] = []
        while self._advance(events, final=False):
            pass
        return events

    def finish(self) -> list[tuple]:
        """The rest: a body cut short is released as it is; a header cut short is dropped."""
        events: list[tuple] = []
        while self._advance(events, final=True):
            pass
        if self.in_body:
            self._end_body(events)
        self.at = len(self.text)
        return events

    def _advance(self, events: list[tuple], final: bool) -> bool:
        """One step of reading; True when it made progress and may make more."""
        return self._read_body(events, final) if self.in_body else self._read_header(events, final)

    def _read_header(self, events: list[tuple], final: bool) -> bool:
        rest = self.text[self.at:]
        head = rest.lstrip()
        if not head:
            return False
        if not head.startswith(HEADER_STARTS):
            if any(start.startswith(head) for start in HEADER_STARTS):  # may still become a header
                if final:  # it never did: a piece of markup, dropped
                    self.at = len(self.text)
                return False
            self.in_body, self.kind, self.at = True, "content", self.at + len(rest) - len(head)  # no header
            return True
        found = rest.find(MESSAGE)
        if found < 0:  # not complete yet (or, at the end, never: dropped)
            return False
        self.kind = self._kind(rest[:found], events)
        self.in_body, self.at = True, self.at + found + len(MESSAGE)
        return True

    def _kind(self, header: str, events: list[tuple]) -> str:
        """What a message's body is, from its header; a call's header event goes out here."""
        role = _ROLE.search(header)
        if role and role.group(1) not in ("", "assistant"):
            return "drop"  # the model wrote another role's turn
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        if recipient and recipient.group(1) != "assistant":
            target = recipient.group(1)
            name = target[len(FUNCTIONS):] if target.startswith(FUNCTIONS) else None
            if name in self.names:
                events.append(("call", self.n_calls, self.new_id(), name))
                self.call_started = False
                return "call"
            return "drop"
        return "reasoning" if channel and channel.group(1) == "analysis" else "content"

    def _read_body(self, events: list[tuple], final: bool) -> bool:
        rest = self.text[self.at:]
        ends = [(i, marker) for marker in TERMINATORS if (i := rest.find(marker)) >= 0]
        if ends:
            i, marker = min(ends)
            self._release(rest[:i], events)
            self._end_body(events)
            self.at += i + (len(marker) if marker in ENDS else 0)
            return True
        hold = max(prefix_overlap(rest, marker) for marker in TERMINATORS)
        self._release(rest[:len(rest) - hold], events)
        self.at += len(rest) if final else len(rest) - hold  # at the end, a piece of a marker is dropped
        return False

    def _release(self, piece: str, events: list[tuple]) -> None:
        if self.kind == "call" and not self.call_started:
            piece = piece.lstrip()
            self.call_started = bool(piece)
        if not piece:
            return
        if self.kind == "call":
            events.append(("arguments", self.n_calls, piece))
        elif self.kind in ("reasoning", "content"):
            events.append((self.kind, piece))

    def _end_body(self, events: list[tuple]) -> None:
        if self.kind == "call":
            if not self.call_started:  # a call with no arguments at all
                events.append(("arguments", self.n_calls, "{}"))
            self.n_calls += 1
        self.in_body, self.kind = False, ""


# --- the history ------------------------------------------------------------------------------------------

def prepare_history(messages: list[dict]) -> list[dict]:
    """Messages as gpt-oss's template reads them: an assistant's `reasoning_content` as its `thinking`
    (without its content when it also calls tools: the template renders one or the other, as llama.cpp
    does); an assistant message with several calls (the template renders only the first) as one message per
    call, each followed by its result (the template names a result after the call before it)."""
    out: list[dict] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        i += 1
        if message.get("role") != "assistant":
            out.append(message)
            continue
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            message = {**message, "thinking": reasoning}
            if message.get("tool_calls"):
                message["content"] = ""
        calls = message.get("tool_calls") or []
        if len(calls) < 2:
            out.append(message)
            continue
        results = []
        while i < len(messages) and messages[i].get("role") == "tool":
            results.append(messages[i])
            i += 1
        by_id = {call.get("id"): n for n, call in enumerate(calls)}
        placed: list[list[dict]] = [[] for _ in calls]
        for n, result in enumerate(results):  # by tool_call_id, else in order
            placed[by_id.get(result.get("tool_call_id"), min(n, len(calls) - 1))].append(result)
        for n, call in enumerate(calls):
            part = {**message, "tool_calls": [call]} if n == 0 else {"role": "assistant", "content": "",
                                                                     "tool_calls": [call]}
            out += [part, *placed[n]]
    return out


# --- the grammar of a call --------------------------------------------------------------------------------

TRIGGER = "to=functions."  # what a lazy grammar waits for (both header orders contain it)
# after the function's name, up to its arguments: "<|constrain|>json", " json" or nothing, then in a lazy
# grammar (either header order) the channel if the recipient came first
_TYPE = '(" " "<|constrain|>"? "json")?'
_HEAD = f'head: {_TYPE} ("<|channel|>" ("commentary" | "analysis") {_TYPE})? "<|message|>"\n'
# a forced reply: one analysis message at most, then the call in the commentary channel
_FORCED = ('start: analysis? "<|channel|>commentary to=functions." call\n'
           'analysis: "<|channel|>analysis<|message|>" reasoning "<|start|>assistant"\n'
           'reasoning[lazy]: /(?s:.*)/ "<|end|>"\n'
           f'head: {_TYPE} "<|message|>"\n')


def call_lark(tools: list[dict], after_trigger: bool, json_format: dict) -> str:
    """Lark (llguidance's dialect) for one call of one of `tools` (each `{"name", "schema"}`), its arguments
    following the schema: from just after `TRIGGER` (a lazy grammar), or from the reply's start."""
    lines = ["start: call\n" + _HEAD if after_trigger else _FORCED,
             "call: " + " | ".join(f"tool_{i}" for i in range(len(tools))) + "\n"]
    for i, tool in enumerate(tools):
        lines.append(f"tool_{i}: {json.dumps(tool['name'])} head args_{i}\n"
                     f"args_{i}: %json {json.dumps({**tool['schema'], 'x-guidance': json_format})}\n")
    return "".join(lines)
