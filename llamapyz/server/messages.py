"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, as a translation onto a chat job.

The request becomes chat completions' fields (`chat_fields`): `system` a system message first; a message's
text blocks its content, an assistant's tool_use blocks its tool_calls (input as JSON arguments) and thinking
blocks its reasoning_content, a user's tool_result blocks tool messages (before the user's text, as Anthropic
puts them first; `is_error` results prefixed "Error: "); tools' input_schema chat's parameters; tool_choice
auto / any / tool / none chat's auto / required / a named function / none; stop_sequences chat's stop;
`thinking` the template's `enable_thinking` (budget_tokens is not enforced). The reply, read into blocks
(`chat_job.ReplyBlocks`), becomes content blocks: thinking, text and tool_use (input as an object), with
stop_reason end_turn, max_tokens, stop_sequence (with the one met) or tool_use; streamed, as Anthropic's
events. Errors on these paths have Anthropic's shape (`http.error_body`); `x-api-key` is the API key.
"""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..decode.generation import Step
from . import schema
from .chat_job import Block, ChatJob, ReplyBlocks, chat_prompt_of, start_chat_job
from .engine import Timings
from .http import collect_steps, event_stream, read_json, server_state, sse
from .jobs import MAX_STOP_STRINGS
from .schema import ApiError


async def messages(request: Request) -> Response:
    """Anthropic Messages: text, tools and thinking blocks, streaming or not."""
    defaults = server_state(request).sampling_defaults
    fields = schema.validate(await read_json(request), schema.MESSAGES_API, defaults)
    stops = fields["stop_sequences"] or []
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop_sequences", param="stop_sequences")
    chat = {**chat_fields(fields, defaults), "max_tokens": fields["max_tokens"], "stop": stops}
    run = await start_chat_job(request, chat, template_vars(fields))
    answer = MessageEvents(run, stops)
    if fields["stream"]:
        return event_stream(run.job, request, run.served, answer.opening(), answer.step, answer.done,
                            lambda error: sse(error.anthropic_body(), event="error"))
    for step in await collect_steps(run.job, request, run.served):
        answer.step(step)
    answer.done(run.job.timings)
    return JSONResponse(answer.message)


async def count_tokens(request: Request) -> Response:
    """Anthropic's token count: the prompt's tokens for these messages, system and tools."""
    state = server_state(request)
    fields = schema.validate(await read_json(request), schema.COUNT_TOKENS, state.sampling_defaults)
    chat = chat_fields(fields, state.sampling_defaults)
    async with state.pool.use(chat["model"], request.is_disconnected) as served:
        _, prompt = await chat_prompt_of(served, chat, template_vars(fields))
    return JSONResponse({"input_tokens": len(prompt)})


# --- the request ------------------------------------------------------------------------------------------

def chat_fields(fields: dict, defaults: dict) -> dict:
    """A Messages request (or a count_tokens one) as chat completions' fields."""
    chat = schema.defaults_of(schema.CHAT, defaults)
    chat.update({name: fields[name] for name in schema.SHARED_SAMPLING if name in fields})
    chat["messages"] = chat_messages(fields["messages"], fields["system"])
    chat["tools"] = [function_tool(i, tool) for i, tool in enumerate(fields["tools"] or [])] or None
    chat["tool_choice"], chat["parallel_tool_calls"] = tool_choice(fields["tool_choice"])
    chat["response_format"] = response_format(fields["output_config"])
    return chat


def chat_messages(given: list[dict], system: str | list | None) -> list[dict]:
    out: list[dict] = []
    if system:
        out.append({"role": "system", "content": system if isinstance(system, str) else block_text("system", system)})
    for i, message in enumerate(given):
        role, content = message.get("role"), message.get("content")
        where = f"messages[{i}]"
        if role not in ("user", "assistant"):
            raise ApiError(400, f"{where}.role must be user or assistant", param="messages")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"{where}.content must be a string or a list of blocks", param="messages")
        texts, calls, reasoning = [], [], []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            at = f"{where}.content[{j}]"
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise ApiError(400, f"{at}: a tool_use block needs an id and a name", param="messages")
                calls.append({"id": block["id"], "type": "function", "function": {
                    "name": block["name"], "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise ApiError(400, f"{at}: a tool_result block needs a tool_use_id", param="messages")
                result = block.get("content") or ""
                text = result if isinstance(result, str) else block_text(at, result)
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": f"Error: {text}" if block.get("is_error") else text})
            elif kind == "thinking" and role == "assistant" and isinstance(block.get("thinking"), str):
                reasoning.append(block["thinking"])
            elif kind == "redacted_thinking" and role == "assistant":
                continue  # nothing a template could read
            elif kind in ("image", "document", "search_result"):
                raise ApiError(400, f"{at}: {kind} blocks are not supported: this model reads text only",
                               param="messages")
            else:
                raise ApiError(400, f"{at}: {role} messages take text, "
                               + ("tool_use and thinking" if role == "assistant" else "and tool_result")
                               + " blocks", param="messages")
        if role == "user" and not texts and out and out[-1]["role"] == "tool":
            continue  # tool results only
        chat: dict = {"role": role, "content": "\n".join(texts) if texts or not calls else None}
        if calls:
            chat["tool_calls"] = calls
        if reasoning:
            chat["reasoning_content"] = "\n".join(reasoning)
        out.append(chat)
    return out


def block_text(where: str, blocks: list) -> str:
    """Text blocks' text, joined."""
    texts = []
    for block in blocks:
        if not (isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)):
            raise ApiError(400, f"{where}: blocks must be {{\"type\": \"text\", \"text\": ...}}",
                           param="system" if where == "system" else "messages")
        texts.append(block["text"])
    return "\n".join(texts)


def function_tool(i: int, tool: dict) -> dict:
    """An Anthropic tool ({name, description, input_schema}) as chat's function tool."""
    if tool.get("type", "custom") != "custom" or "input_schema" not in tool:
        raise ApiError(400, f"tools[{i}]: only client tools with an input_schema are supported (not Anthropic's "
                       "server tools)", param="tools")
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def tool_choice(choice: dict | None) -> tuple[str | dict | None, bool]:
    """Anthropic's tool_choice as chat's tool_choice and parallel_tool_calls."""
    if choice is None:
        return None, True
    parallel = not choice.get("disable_parallel_tool_use", False)
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    if isinstance(kind, str) and kind in CHOICES:
        return CHOICES[kind], parallel
    raise ApiError(400, 'tool_choice must be {"type": "auto"}, {"type": "any"}, {"type": "none"} or {"type": "tool", '
                   '"name": ...}', param="tool_choice")


def template_vars(fields: dict) -> dict:
    """`thinking` and `output_config.effort` as the template variables of templates that read them: Qwen 3's
    enable_thinking, gpt-oss's reasoning_effort (low, medium or high)."""
    thinking, effort = fields["thinking"], (fields["output_config"] or {}).get("effort")
    wanted = {}
    if thinking is not None:
        if thinking.get("type") not in ("enabled", "adaptive", "disabled"):
            raise ApiError(400, 'thinking must be {"type": "enabled", "budget_tokens": N}, {"type": "adaptive"} or '
                           '{"type": "disabled"}', param="thinking")
        wanted["enable_thinking"] = thinking["type"] != "disabled"
    if effort is not None:
        if not isinstance(effort, str) or effort not in EFFORTS:
            raise ApiError(400, f"output_config.effort must be one of {', '.join(EFFORTS)}", param="output_config")
        wanted["reasoning_effort"] = EFFORTS[effort]
    return wanted


EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def response_format(output_config: dict | None) -> dict | None:
    """`output_config.format` as chat's response_format."""
    form = (output_config or {}).get("format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") != "json_schema" or not isinstance(form.get("schema"), dict):
        raise ApiError(400, 'output_config.format must be {"type": "json_schema", "schema": {...}}',
                       param="output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": form["schema"]}}


# --- the response -----------------------------------------------------------------------------------------

class MessageEvents:
    """The message answering one request, built from its job's steps: `message` (complete after `done`), and
    as it goes, the server-sent events of its stream (`opening`, `step`, `done`)."""

    def __init__(self, run: ChatJob, stops: list[str]) -> None:
        self.run = run
        self.stops = stops
        self.blocks = ReplyBlocks(run.tools)
        self.finish: str | None = None
        self.message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                        "model": run.served.alias, "content": [], "stop_reason": None, "stop_sequence": None,
                        "usage": {"input_tokens": len(run.job.prompt), "output_tokens": 0}}

    def opening(self) -> list[bytes]:
        return [event("message_start", message=self.message), event("ping")]

    def step(self, step: Step) -> list[bytes]:
        self.finish = step.finish_reason or self.finish
        return self.changes(self.blocks.feed(step.text))

    def done(self, timings: Timings) -> list[bytes]:
        events = self.changes(self.blocks.finish())
        matched = self.run.job.generation.matcher.matched if self.run.job.generation is not None else None
        if self.finish == "length":
            reason = "max_tokens"
        elif self.blocks.n_calls:
            reason = "tool_use"
        elif matched is not None and matched in self.stops:
            reason, self.message["stop_sequence"] = "stop_sequence", matched
        else:
            reason = "end_turn"
        self.message.update(stop_reason=reason, content=[content_block(block) for block in self.blocks.blocks])
        self.message["usage"] = {"input_tokens": len(self.run.job.prompt), "output_tokens": timings.predicted_n}
        return [*events, event("message_delta", delta={"stop_reason": reason,
                                                       "stop_sequence": self.message["stop_sequence"]},
                               usage={"output_tokens": timings.predicted_n}),
                event("message_stop")]

    def changes(self, changes: list[tuple]) -> list[bytes]:
        events = []
        for change, index, value in changes:
            if change == "start":
                events.append(event("content_block_start", index=index, content_block=content_block(value, True)))
            elif change == "delta":
                kind = self.blocks.blocks[index].kind
                delta = ({"type": "text_delta", "text": value} if kind == "text"
                         else {"type": "thinking_delta", "thinking": value} if kind == "reasoning"
                         else {"type": "input_json_delta", "partial_json": value})
                events.append(event("content_block_delta", index=index, delta=delta))
            else:
                if value.kind == "reasoning":
                    events.append(event("content_block_delta", index=index,
                                        delta={"type": "signature_delta", "signature": ""}))
                events.append(event("content_block_stop", index=index))
        return events


def content_block(block: Block, starting: bool = False) -> dict:
    """A block as a content block (empty as it starts)."""
    if block.kind == "call":
        return {"type": "tool_use", "id": block.call_id, "name": block.name,
                "input": {} if starting else arguments_object(block.text)}
    if block.kind == "reasoning":
        return {"type": "thinking", "thinking": "" if starting else block.text, "signature": ""}
    return {"type": "text", "text": "" if starting else block.text}


def arguments_object(arguments: str) -> dict:
    """A call's arguments (JSON text) as an object; {} for text that is not one (a call cut short)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def event(kind: str, **data: object) -> bytes:
    return sse({"type": kind, **data}, event=kind)
