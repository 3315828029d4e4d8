"""What the three chat APIs share (chat completions, OpenAI's Responses, Anthropic's Messages): a request,
once translated into chat completions' fields, becomes one chat job (`start_chat_job`: the model, its tools,
the prompt, the job submitted), and its reply is read as chat completions read it (`chat.reply`'s reader:
reasoning, text and tool calls) into ordered blocks (`ReplyBlocks`), the shape Responses' output items and
Messages' content blocks have in common.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..chat.reply import reply_stream
from ..chat.tools import ToolRequest
from ..model.model import Model
from .engine import Job
from .http import run_job, server_state
from .jobs import chat_prompt, make_job, tool_request
from .pool import ServedModel


@dataclass
class ChatJob:
    served: ServedModel
    job: Job
    tools: ToolRequest
    logprobs: int | None  # top logprobs per token, when asked for

    @property
    def model(self) -> Model:
        return self.served.model


async def chat_prompt_of(served: ServedModel, fields: dict, template_vars: dict | None = None
                         ) -> tuple[ToolRequest, list[int]]:
    """The request's tools and its prompt's tokens (rendered in the thread pool: CPU work, off the event loop)."""
    tools = tool_request(fields, served.model)
    prompt = await run_in_threadpool(chat_prompt, fields["messages"], served.model, tools, template_vars)
    return tools, prompt


async def start_chat_job(request: Request, fields: dict, template_vars: dict | None = None) -> ChatJob:
    """The chat job for `fields` (chat completions' fields, validated), submitted to the model's engine.
    `template_vars`: template variables the request asks for (passed to templates that read them)."""
    state = server_state(request)
    async with state.pool.use(fields["model"], request.is_disconnected) as served:  # loaded, if need be
        tools, prompt = await chat_prompt_of(served, fields, template_vars)
        logprobs = fields["top_logprobs"] if fields["logprobs"] else None
        job = await run_in_threadpool(make_job, served, fields, prompt, logprobs, "messages",
                                      asyncio.get_running_loop(), served.model.chat_template.end_of_turn, tools)
        await run_job(served, job)
    return ChatJob(served, job, tools, logprobs)


# --- a reply as blocks ------------------------------------------------------------------------------------

@dataclass
class Block:
    kind: str  # "reasoning", "text" or "call"
    text: str = ""  # the reasoning, the text, or the call's arguments (JSON text)
    call_id: str = ""
    name: str = ""


class ReplyBlocks:
    """A reply read into blocks, in the order the model wrote them, as it streams: `feed` and `finish` return
    the changes, ("start", index, block), ("delta", index, text) and ("stop", index, block); `blocks` holds
    them all. Blank text between blocks (the newline after a tool call) makes no block; a reply with no block
    at all is one empty text block (an answer of nothing is still an answer)."""

    def __init__(self, tools: ToolRequest) -> None:
        self.reader = reply_stream(tools)  # None: the reply is all text
        self.blocks: list[Block] = []
        self.open = False  # the last block is still being written
        self.held = ""  # blank text, not yet in a block
        self.calls: dict[int, int] = {}  # the reader's call index -> its block's

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    @property
    def reasoning(self) -> str:
        return "".join(block.text for block in self.blocks if block.kind == "reasoning")

    def feed(self, text: str) -> list[tuple]:
        return self._take(self.reader.feed(text) if self.reader is not None else [("content", text)])

    def finish(self) -> list[tuple]:
        changes = self._take(self.reader.finish() if self.reader is not None else [])
        if not self.blocks:
            changes += self._start(Block("text"))
            if self.held:
                changes += self._delta(self.held)
        return changes + self._stop()

    def _take(self, events: list[tuple]) -> list[tuple]:
        changes: list[tuple] = []
        for event in events:
            current = self.blocks[-1] if self.open else None
            if event[0] == "reasoning":
                if current is None or current.kind != "reasoning":
                    changes += self._stop() + self._start(Block("reasoning"))
                changes += self._delta(event[1])
            elif event[0] == "content":
                if current is not None and current.kind == "text":
                    changes += self._delta(event[1])
                elif not (self.held + event[1]).strip():
                    self.held += event[1]
                else:  # blanks lead the reply's first block only
                    text = event[1].lstrip() if self.blocks else self.held + event[1]
                    self.held = ""
                    changes += self._stop() + self._start(Block("text")) + self._delta(text)
            elif event[0] == "call":
                changes += self._stop() + self._start(Block("call", call_id=event[2], name=event[3]))
                self.calls[event[1]] = len(self.blocks) - 1
            else:  # ("arguments", call index, text)
                index = self.calls[event[1]]
                if self.open and index == len(self.blocks) - 1:
                    changes += self._delta(event[2])
                else:  # not the block being written (no reader does this): kept, not streamed
                    self.blocks[index].text += event[2]
        return changes

    def _start(self, block: Block) -> list[tuple]:
        self.blocks.append(block)
        self.open = True
        return [("start", len(self.blocks) - 1, block)]

    def _delta(self, text: str) -> list[tuple]:
        if not text:
            return []
        self.blocks[-1].text += text
        return [("delta", len(self.blocks) - 1, text)]

    def _stop(self) -> list[tuple]:
        if not self.open:
            return []
        self.open = False
        return [("stop", len(self.blocks) - 1, self.blocks[-1])]
