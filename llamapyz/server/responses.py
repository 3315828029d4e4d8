"""POST /v1/responses: OpenAI's Responses API, stateless, as a translation onto a chat job.

The request becomes chat completions' fields (`chat_fields`): `instructions` a system message first, `input`
items messages (function_call items an assistant's tool_calls, function_call_output items tool messages,
reasoning items the next assistant message's reasoning_content), flat function tools nested as chat's,
`text.format` a response_format, `max_output_tokens` max_tokens, `reasoning.effort` the template's
`reasoning_effort`. The reply, read into blocks (`chat_job.ReplyBlocks`), becomes output items: `reasoning`,
`message` (one `output_text` part) and `function_call`; streamed, as the event sequence the openai client
reads, each event with its `sequence_number`.

Stateless, as llama.cpp's server is: nothing is stored, so `previous_response_id` and `conversation` are a 400
saying to send the whole conversation; `store` is accepted and ignored (the response says `"store": false`).
"""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..decode.generation import Step
from . import schema
from .chat_job import Block, ChatJob, ReplyBlocks, start_chat_job
from .engine import Timings
from .http import collect_steps, event_stream, read_json, server_state, sse
from .schema import ApiError

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


async def responses(request: Request) -> Response:
    """OpenAI Responses (stateless): text, function tools and structured outputs, streaming or not."""
    defaults = server_state(request).sampling_defaults
    fields = schema.validate(await read_json(request), schema.RESPONSES, defaults)
    for name in ("previous_response_id", "conversation"):
        if fields[name] is not None:
            raise ApiError(400, f"{name} is not supported: this server keeps no responses or conversations "
                           "(stateless); send the whole conversation in input", param=name)
    chat = chat_fields(fields, defaults)
    effort = reasoning_effort(fields["reasoning"])
    run = await start_chat_job(request, chat, {"reasoning_effort": effort} if effort else None)
    answer = ResponseEvents(run, fields, chat, effort)
    if fields["stream"]:
        return event_stream(run.job, request, run.served, answer.opening(), answer.step, answer.done, answer.error)
    for step in await collect_steps(run.job, request, run.served):
        answer.step(step)
    answer.done(run.job.timings)
    return JSONResponse(answer.response)


# --- the request ------------------------------------------------------------------------------------------

def chat_fields(fields: dict, defaults: dict) -> dict:
    """A Responses request as chat completions' fields."""
    chat = schema.defaults_of(schema.CHAT, defaults)
    chat.update({name: fields[name] for name in schema.SHARED_SAMPLING})
    chat["messages"] = input_messages(fields["input"], fields["instructions"])
    chat["tools"] = [function_tool(i, tool) for i, tool in enumerate(fields["tools"] or [])] or None
    chat["tool_choice"] = tool_choice(fields["tool_choice"])
    chat["parallel_tool_calls"] = fields["parallel_tool_calls"]
    chat["max_tokens"] = fields["max_output_tokens"] or chat["max_tokens"]
    chat["response_format"] = response_format(fields["text"])
    return chat


def input_messages(given: str | list, instructions: str | None) -> list[dict]:
    """`input` (and `instructions`) as chat messages."""
    messages: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    reasoning = ""  # a reasoning item's text, for the assistant message that follows it
    names: dict[str, str] = {}  # call_id -> the function's name, for the tool messages
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            raise bad(i, "items must be objects")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad(i, "a message's role must be user, assistant, system or developer")
            message = {"role": role, "content": item_text(i, item.get("content"))}
            if role == "assistant" and reasoning:
                message["reasoning_content"], reasoning = reasoning, ""
            messages.append(message)
        elif kind == "function_call":
            call_id, name, arguments = (item.get(key) for key in ("call_id", "name", "arguments"))
            if not all(isinstance(value, str) for value in (call_id, name, arguments)):
                raise bad(i, "a function_call item needs call_id, name and arguments (strings)")
            names[call_id] = name
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not reasoning:  # the same turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                if reasoning:
                    messages[-1]["reasoning_content"], reasoning = reasoning, ""
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise bad(i, "a function_call_output item needs a call_id (a string)")
            message = {"role": "tool", "tool_call_id": call_id, "content": item_text(i, item.get("output"))}
            if call_id in names:
                message["name"] = names[call_id]
            messages.append(message)
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            reasoning = item_text(i, parts) if isinstance(parts, list) else ""
        elif kind == "item_reference":
            raise bad(i, "item_reference is not supported: this server keeps no items (stateless); send the "
                      "items themselves")
        else:
            raise bad(i, f"items of type {str(kind)[:40]!r} are not supported (messages, function_call, "
                      "function_call_output and reasoning are)")
    if not messages:
        raise ApiError(400, "input must not be empty", param="input")
    return messages


TEXT_PARTS = ("input_text", "output_text", "text", "reasoning_text", "summary_text")


def item_text(i: int, content: object) -> str:
    """An item's content: a string, or text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(i, "content must be a string or a list of input_text / output_text parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise ApiError(400, f"input[{i}]: {kind} parts are not supported: this model reads text only",
                           param="input", code="unsupported_content")
        else:
            raise bad(i, "content parts must be {\"type\": \"input_text\" or \"output_text\", \"text\": ...}")
    return "\n".join(texts)


def bad(i: int, message: str) -> ApiError:
    return ApiError(400, f"input[{i}]: {message}", param="input")


def function_tool(i: int, tool: dict) -> dict:
    """A Responses function tool ({type, name, description, parameters}) as chat's."""
    if tool.get("type", "function") != "function":
        raise ApiError(400, f"tools[{i}]: only function tools are supported, not {str(tool.get('type'))[:40]!r}",
                       param="tools")
    function = {key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def tool_choice(choice: str | dict | None) -> str | dict | None:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise ApiError(400, 'tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
                           param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def response_format(text: dict | None) -> dict | None:
    """`text.format` as chat's response_format."""
    form = (text or {}).get("format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "text.format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": "
                       "\"json_schema\", \"name\": ..., \"schema\": {...}}", param="text")
    if form["type"] != "json_schema":
        return {"type": form["type"]}
    if not isinstance(form.get("schema"), dict):
        raise ApiError(400, "text.format json_schema needs a schema (an object)", param="text")
    return {"type": "json_schema", "json_schema": {"name": form.get("name", "output"), "schema": form["schema"],
                                                   "strict": bool(form.get("strict"))}}


def reasoning_effort(reasoning: dict | None) -> str | None:
    effort = (reasoning or {}).get("effort")
    if effort is not None and effort not in EFFORTS:
        raise ApiError(400, f"reasoning.effort must be one of {', '.join(EFFORTS)}", param="reasoning")
    return effort


# --- the response -----------------------------------------------------------------------------------------

class ResponseEvents:
    """The response to one request, built from its job's steps: `response` (the Response object, complete
    after `done`), and as it goes, the server-sent events of its stream (`opening`, `step`, `done`)."""

    def __init__(self, run: ChatJob, fields: dict, chat: dict, effort: str | None) -> None:
        self.run = run
        self.blocks = ReplyBlocks(run.tools)
        self.ids: list[str] = []  # each block's item id
        self.sequence = 0
        self.finish: str | None = None
        self.response = {
            "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "background": False, "error": None, "incomplete_details": None,
            "instructions": fields["instructions"], "max_output_tokens": fields["max_output_tokens"],
            "model": run.served.alias, "output": [], "parallel_tool_calls": chat["parallel_tool_calls"],
            "previous_response_id": None, "reasoning": {"effort": effort, "summary": None}, "store": False,
            "temperature": chat["temperature"], "text": {"format": (fields["text"] or {}).get("format")
                                                         or {"type": "text"}},
            "tool_choice": fields["tool_choice"] or "auto", "tools": fields["tools"] or [],
            "top_p": chat["top_p"], "truncation": "disabled", "usage": None, "user": None,
            "metadata": fields["metadata"] or {}}

    def opening(self) -> list[bytes]:
        return [self.event("response.created", response=self.response),
                self.event("response.in_progress", response=self.response)]

    def step(self, step: Step) -> list[bytes]:
        self.finish = step.finish_reason or self.finish
        return self.changes(self.blocks.feed(step.text))

    def done(self, timings: Timings) -> list[bytes]:
        events = self.changes(self.blocks.finish())
        job = self.run.job
        reasoning = self.blocks.reasoning
        n_reasoning = len(self.run.model.tokenize(reasoning, add_special=False)) if reasoning else 0
        self.response["usage"] = {
            "input_tokens": len(job.prompt), "input_tokens_details": {"cached_tokens": timings.cache_n},
            "output_tokens": timings.predicted_n,
            "output_tokens_details": {"reasoning_tokens": min(n_reasoning, timings.predicted_n)},
            "total_tokens": len(job.prompt) + timings.predicted_n}
        self.response["output"] = [self.item(i, block) for i, block in enumerate(self.blocks.blocks)]
        if self.finish == "length":
            self.response["status"] = "incomplete"
            self.response["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            self.response["status"] = "completed"
        return [*events, self.event(f"response.{self.response['status']}", response=self.response)]

    def error(self, error: ApiError) -> bytes:
        return self.event("error", code=error.code or error.type, message=error.message, param=error.param)

    def changes(self, changes: list[tuple]) -> list[bytes]:
        events = []
        for change, index, value in changes:
            if change == "start":
                self.ids.append(f"{ITEM_PREFIX[value.kind]}_{uuid.uuid4().hex}")
                events.append(self.event("response.output_item.added", output_index=index,
                                         item=self.item(index, value, "in_progress")))
                if value.kind != "call":
                    events.append(self.event("response.content_part.added", **self.part(index, value, "")))
            elif change == "delta":
                block = self.blocks.blocks[index]
                kind = {"text": "response.output_text.delta", "reasoning": "response.reasoning_text.delta",
                        "call": "response.function_call_arguments.delta"}[block.kind]
                position = {"item_id": self.ids[index], "output_index": index}
                if block.kind != "call":
                    position["content_index"] = 0
                extra = {"logprobs": []} if block.kind == "text" else {}
                events.append(self.event(kind, **position, delta=value, **extra))
            else:  # stop
                position = {"item_id": self.ids[index], "output_index": index}
                if value.kind == "call":
                    events.append(self.event("response.function_call_arguments.done", **position,
                                             name=value.name, arguments=value.text))
                else:
                    kind = "response.output_text.done" if value.kind == "text" else "response.reasoning_text.done"
                    extra = {"logprobs": []} if value.kind == "text" else {}
                    events += [self.event(kind, **position, content_index=0, text=value.text, **extra),
                               self.event("response.content_part.done", **self.part(index, value, value.text))]
                events.append(self.event("response.output_item.done", output_index=index, item=self.item(index, value)))
        return events

    def item(self, index: int, block: Block, status: str = "completed") -> dict:
        """A block as an output item (empty while in progress)."""
        done = status == "completed"
        if block.kind == "call":
            return {"type": "function_call", "id": self.ids[index], "call_id": block.call_id, "name": block.name,
                    "arguments": block.text if done else "", "status": status}
        if block.kind == "reasoning":
            return {"type": "reasoning", "id": self.ids[index], "summary": [], "status": status,
                    "content": [{"type": "reasoning_text", "text": block.text}] if done else []}
        return {"type": "message", "id": self.ids[index], "status": status, "role": "assistant",
                "content": [output_text(block.text)] if done else []}

    def part(self, index: int, block: Block, text: str) -> dict:
        part = output_text(text) if block.kind == "text" else {"type": "reasoning_text", "text": text}
        return {"item_id": self.ids[index], "output_index": index, "content_index": 0, "part": part}

    def event(self, kind: str, **data: object) -> bytes:
        """One named server-sent event, numbered."""
        self.sequence += 1
        return sse({"type": kind, "sequence_number": self.sequence - 1, **data}, event=kind)


ITEM_PREFIX = {"text": "msg", "reasoning": "rs", "call": "fc"}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

