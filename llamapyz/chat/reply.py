"""A chat reply read as the OpenAI message it becomes: its reasoning, its content and its tool calls.

How a reply is read follows from the template (`tools.ToolRequest`: `syntax`, `reasoning`):

    harmony (gpt-oss)       channels: analysis -> reasoning, final -> content, to=functions.f -> calls
    think (Mistral 3)       a leading [THINK]…[/THINK] -> reasoning; the rest as the tool syntax reads it
    tags (Qwen 3, R1)       a leading <think>…</think> -> reasoning; likewise
    otherwise               calls in the template's tool syntax (when tools are active), the rest content

`reply_stream` gives a reader for a streamed reply (None: the text is its content as it comes), whose events
are `tool_stream.ToolStream`'s plus ("reasoning", text); `read_reply` reads a whole one. The reasoning goes
in the message's `reasoning_content` (the field llama.cpp's server and DeepSeek's API use), only when there
is some. `reply_marker_tokens`: the control tokens whose text the reader must see (generation leaves a
control token's text out of the reply otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..tokenizer import TokenType
from . import harmony, think
from .think import EventStream, ThinkStream
from .tools import ToolCall, ToolRequest, call_stream, new_call_id

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


@dataclass
class Reply:
    content: str
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def message(self) -> dict:
        """The assistant message of a chat completion."""
        message: dict = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.calls:
            message["content"] = self.content or None
            message["tool_calls"] = [call.as_dict() for call in self.calls]
        return message


def reply_stream(request: ToolRequest) -> EventStream | None:
    """A reader for a reply to a request (None: all of the reply is content)."""
    names = {tool["function"]["name"] for tool in request.tools} if request.active else None
    if request.reasoning == "harmony":  # the markup must go, tools or not
        return harmony.HarmonyStream(names or set(), new_call_id)
    inner = call_stream(request.syntax, names) if names is not None else None
    if request.reasoning not in think.MARKERS:
        return inner
    return ThinkStream(inner, think.MARKERS[request.reasoning], trim=request.reasoning == "tags")


def read_reply(text: str, request: ToolRequest) -> Reply:
    """A whole reply, read as `reply_stream` reads it streamed. With calls, the content is stripped."""
    stream = reply_stream(request)
    return Reply(text) if stream is None else collect(stream.feed(text) + stream.finish())


def collect(events: list[tuple]) -> Reply:
    """A reader's events as one Reply."""
    content, reasoning, calls = [], [], []
    for event in events:
        if event[0] == "content":
            content.append(event[1])
        elif event[0] == "reasoning":
            reasoning.append(event[1])
        elif event[0] == "call":
            calls.append(ToolCall(event[3], "", event[2]))
        else:
            calls[event[1]].arguments += event[2]
    text = "".join(content)
    return Reply(text.strip() if calls else text, "".join(reasoning), calls)


def reply_marker_tokens(request: ToolRequest, tokenizer: Tokenizer) -> frozenset[int]:
    """Control tokens among the markers the reply's reader looks for (their text must reach it)."""
    markers = list(request.syntax.markers) if request.active else []
    if request.reasoning in think.MARKERS:
        markers += list(think.MARKERS[request.reasoning])
    elif request.reasoning == "harmony":
        markers += [harmony.MESSAGE, harmony.START, harmony.CHANNEL, harmony.CONSTRAIN, harmony.ENDS[0]]
    ids = (tokenizer.vocab.token_to_id.get(m) for m in markers)
    return frozenset(t for t in ids if t is not None and tokenizer.vocab.types[t] == TokenType.CONTROL)
