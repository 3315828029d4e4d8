"""llamapyz/server/chat_job.py's `ReplyBlocks`: a reply read (as chat completions read it) into the ordered
blocks Responses' output items and Messages' content blocks are made of, fed in pieces as it streams."""

from __future__ import annotations

from llamapyz.chat.template import BUILTIN
from llamapyz.chat.tools import ToolRequest
from llamapyz.server.chat_job import Block, ReplyBlocks

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def read(text: str, tools: ToolRequest, piece: int = 3) -> tuple[list[Block], list[tuple]]:
    blocks = ReplyBlocks(tools)
    changes = []
    for i in range(0, len(text), piece):
        changes += blocks.feed(text[i:i + piece])
    return blocks.blocks, changes + blocks.finish()


def chatml(tools: list | None = None) -> ToolRequest:
    return ToolRequest.from_fields(tools, None, None, BUILTIN["chatml"])  # no tool syntax: the generic hermes one


def test_text_is_one_block_as_it_came():
    blocks, changes = read("  Hello there.", chatml())
    assert blocks == [Block("text", "  Hello there.")]
    assert changes[0] == ("start", 0, blocks[0]) and changes[-1] == ("stop", 0, blocks[0])
    assert "".join(c[2] for c in changes if c[0] == "delta") == "  Hello there."


def test_calls_are_blocks_and_blanks_between_them_are_not():
    reply = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n')
    blocks, changes = read(reply, chatml([TOOL]))
    assert [(b.kind, b.name, b.text) for b in blocks] == [("call", "get_weather", '{"city": "Paris"}'),
                                                          ("call", "get_weather", '{"city": "Rome"}')]
    assert blocks[0].call_id != blocks[1].call_id
    assert [c[0] for c in changes if c[0] != "delta"] == ["start", "stop", "start", "stop"]


def test_text_after_a_call_loses_its_leading_blanks():
    blocks, _ = read('<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n\nDone.', chatml([TOOL]))
    assert [(b.kind, b.text) for b in blocks] == [("call", "{}"), ("text", "Done.")]


def test_an_empty_reply_is_one_empty_text_block():
    assert read("", chatml())[0] == [Block("text", "")]
    assert read("\n", chatml([TOOL]))[0] == [Block("text", "\n")]
