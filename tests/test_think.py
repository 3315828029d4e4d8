"""Reasoning in <think>…</think> (Qwen 3, DeepSeek-R1's distills; llamapyz/chat/think.py's "tags" style): split
into reasoning_content, the layout whitespace trimmed, streamed or whole alike; reasoning_format none and
chat_template_kwargs (llamapyz/server/jobs.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llamapyz.chat.reply import read_reply, reply_stream
from llamapyz.chat.tools import ToolRequest
from llamapyz.server.jobs import tool_request

QWEN3 = (Path(__file__).resolve().parent / "data" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def streamed(request: ToolRequest, text: str, piece: int) -> tuple[str, str, list]:
    stream = reply_stream(request)
    events = [e for i in range(0, len(text), piece) for e in stream.feed(text[i:i + piece])] + stream.finish()
    return ("".join(e[1] for e in events if e[0] == "reasoning"), "".join(e[1] for e in events if e[0] == "content"),
            [e[3] for e in events if e[0] == "call"])


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
def test_think_tags_are_reasoning_streamed_or_whole(piece: int) -> None:
    request = ToolRequest.from_fields(None, None, None, QWEN3)
    assert request.reasoning == "tags"
    text = "<think>\nThe user asks for a capital.\n</think>\n\nThe capital is Paris."
    whole = read_reply(text, request)
    assert (whole.reasoning, whole.content) == ("The user asks for a capital.", "The capital is Paris.")
    assert whole.message()["reasoning_content"] == whole.reasoning
    assert streamed(request, text, piece) == (whole.reasoning, whole.content, [])


def test_reasoning_then_a_call() -> None:
    request = ToolRequest.from_fields([WEATHER], "auto", True, QWEN3)
    text = ('<think>\nWeather needs the tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call>')
    reply = read_reply(text, request)
    assert reply.reasoning == "Weather needs the tool." and [c.name for c in reply.calls] == ["get_weather"]
    assert streamed(request, text, 4)[0] == reply.reasoning


def test_a_reply_cut_inside_its_reasoning_is_reasoning_only() -> None:
    request = ToolRequest.from_fields(None, None, None, QWEN3)
    reply = read_reply("<think>\nStill thinking about it </th", request)
    assert (reply.reasoning, reply.content) == ("Still thinking about it", "")


def test_reasoning_format_none_leaves_it_in_the_content() -> None:
    model = SimpleNamespace(chat_template=SimpleNamespace(source=QWEN3))
    fields = {"tools": None, "tool_choice": None, "parallel_tool_calls": True}
    assert tool_request(fields, model).reasoning == "tags"
    request = tool_request({**fields, "reasoning_format": "none"}, model)
    text = "<think>\nHm.\n</think>\n\nParis."
    assert read_reply(text, request).content == text


def test_chat_template_kwargs_reach_the_template() -> None:
    from llamapyz import Model
    from llamapyz.server.jobs import chat_prompt
    from tests.dress import derived_path

    model = Model.load(derived_path("qwen3", "Q8_0"), n_ctx=256)
    question = [{"role": "user", "content": "Capital of France?"}]
    thinking = model.detokenize(chat_prompt(question, model))
    quiet = model.detokenize(chat_prompt(question, model, template_vars={"enable_thinking": False}))
    assert quiet == thinking + "<think>\n\n</think>\n\n"  # Qwen 3's way of turning thinking off
    assert chat_prompt(question, model, template_vars={"unused_name": 1}) == chat_prompt(question, model)
