"""Turning a request into an engine job: sampling parameters, stop strings, output constraints, prompts;
and the pieces of the responses built from a job's steps."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re

from ..chat.reply import reply_marker_tokens
from ..chat.template import ChatTemplateError
from ..chat.tools import ToolError, ToolRequest, call_grammar, lazy_call_constraint, prepare_messages
from ..decode.constraint import Grammar
from ..decode.generation import Generation, Step
from ..decode.grammar_limits import GrammarError, WorkersBusy
from ..decode.sampling import SamplingParams
from ..model.model import Model
from .engine import Job
from .pool import ServedModel
from .schema import ApiError
from .text_bounds import check_text_fits

MAX_STOP_STRINGS = 16


def sampling_params(fields: dict, model: Model) -> SamplingParams:
    bias = {}
    for key, value in (fields["logit_bias"] or {}).items():
        # a token id in ASCII decimal digits, as OpenAI's clients write it: int() would also take "1_0" (10),
        # " 5", "+5" and other scripts' digits
        if not re.fullmatch(r"[0-9]+", key, re.ASCII):
            raise ApiError(400, f"logit_bias keys must be token ids in decimal digits, got {key[:40]!r}",
                           param="logit_bias")
        token = int(key) if len(key) <= 18 else model.n_vocab  # more digits than any vocabulary's ids: outside it
        if not 0 <= token < model.n_vocab:
            raise ApiError(400, f"logit_bias: token {key[:40]} is outside the vocabulary [0, {model.n_vocab})",
                           param="logit_bias")
        finite = isinstance(value, int) or isinstance(value, float) and math.isfinite(value)  # any int: clipped
        if isinstance(value, bool) or not finite:
            raise ApiError(400, f"logit_bias: the bias of token {key} must be a finite number", param="logit_bias")
        bias[token] = float(max(-100.0, min(100.0, value)))
    try:
        return SamplingParams(temperature=fields["temperature"], top_k=fields["top_k"], top_p=fields["top_p"],
                              min_p=fields["min_p"], repeat_penalty=fields["repeat_penalty"],
                              presence_penalty=fields["presence_penalty"],
                              frequency_penalty=fields["frequency_penalty"], repeat_last_n=fields["repeat_last_n"],
                              logit_bias=bias, seed=None if (fields["seed"] or 0) < 0 else fields["seed"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def stop_strings(value: str | list | None) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return stops


def output_grammar(fields: dict) -> tuple[Grammar | None, str]:
    """The grammar the output must match: response_format (json_object, json_schema), or llama.cpp's
    `grammar` (Lark or GBNF) or `json_schema` fields; None for free text. With the field that asked for it
    (an error compiling the grammar names it)."""
    value = fields["response_format"] or {}
    kind = value.get("type", "text")
    asked = [name for name in ("grammar", "json_schema") if fields.get(name) is not None]
    if kind != "text":
        asked.append("response_format")
    if len(asked) > 1:
        raise ApiError(400, f"{' and '.join(asked)} both constrain the output: give one", param=asked[-1])
    try:
        if fields.get("grammar") is not None:
            return Grammar.lark(fields["grammar"]), "grammar"
        if fields.get("json_schema") is not None:
            return Grammar.json_schema(fields["json_schema"]), "json_schema"
        if kind == "text":
            return None, "response_format"
        if kind == "json_object":  # llama.cpp also takes a schema here
            schema = value.get("schema")
            return (Grammar.json_object() if schema is None else Grammar.json_schema(schema)), "response_format"
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise ApiError(400, 'response_format json_schema needs {"json_schema": {"name": ..., "schema": '
                               '{...}}}', param="response_format")
            return Grammar.json_schema(spec["schema"]), "response_format"
    except GrammarError as exc:
        raise ApiError(400, str(exc), param=asked[-1]) from None
    except WorkersBusy as exc:
        raise ApiError(503, str(exc), code="overloaded") from None
    raise ApiError(400, f"response_format type {kind!r} is not supported (use 'text', 'json_object' or "
                   "'json_schema')", param="response_format")


def tool_request(fields: dict, model: Model) -> ToolRequest:
    """The request's tools, and how its reply is read (reasoning_format none: a thinking model's reasoning
    stays in the content; gpt-oss's channels are markup and always go)."""
    try:
        request = ToolRequest.from_fields(fields["tools"], fields["tool_choice"], fields["parallel_tool_calls"],
                                          model.chat_template.source)
    except ToolError as exc:
        raise ApiError(400, str(exc), param="tools" if "tools" in str(exc) else "tool_choice") from None
    if fields.get("reasoning_format") == "none" and request.reasoning != "harmony":
        request = dataclasses.replace(request, reasoning=None)
    return request


def check_prompt_fits(prompt: list[int], model: Model, param: str) -> None:
    if len(prompt) >= model.n_ctx:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens, which does not leave room for an answer in the "
                       f"context of {model.n_ctx} tokens", param=param, code="context_length_exceeded",
                       n_prompt_tokens=len(prompt), n_ctx=model.n_ctx)


def make_job(served: ServedModel, fields: dict, prompt: list[int], logprobs: int | None, param: str,
             loop: asyncio.AbstractEventLoop, end_of_turn: str | None = None, tools: ToolRequest | None = None
             ) -> Job:
    """A job for the engine; `end_of_turn` (chat only: the template's markup) stops it besides `stop`.
    Compiling a grammar may take a while: call this in the thread pool."""
    model = served.model
    check_prompt_fits(prompt, model, param)
    room = model.n_ctx - len(prompt)
    max_tokens = fields["max_completion_tokens"] or fields["max_tokens"] or room
    grammar, param = output_grammar(fields)
    keep_text = reply_marker_tokens(tools, model.tokenizer) if tools is not None else frozenset()  # for the reader
    try:
        if tools is not None and tools.active:
            if tools.forced and grammar is not None:
                raise ApiError(400, "a forced tool call (tool_choice) cannot also follow a response_format or "
                               "grammar", param="tool_choice")
            if tools.forced:
                param = "tools"
                grammar = call_grammar(tools, model.tokenizer)
        constraint = grammar.constraint(model.tokenizer) if grammar is not None else None
        if constraint is None and tools is not None:  # tool_choice auto: a call, once begun, follows the schemas
            param = "tools"
            constraint = lazy_call_constraint(tools, model.tokenizer)
    except GrammarError as exc:  # named after the field whose grammar did not compile
        raise ApiError(400, str(exc), param=param) from None
    except WorkersBusy as exc:
        raise ApiError(503, str(exc), code="overloaded") from None
    generation = Generation(model.tokenizer, prompt, max_tokens, sampling_params(fields, model), model.n_ctx,
                            stop=stop_strings(fields["stop"]) + ([end_of_turn] if end_of_turn else []),
                            logprobs=logprobs, constraint=constraint, keep_text=keep_text,
                            repeat_block=call_block(tools))
    return Job(prompt=prompt, generation=generation, loop=loop)


def call_block(tools: ToolRequest | None) -> tuple[str, str] | None:
    """The markers around one tool call, where the syntax has them (hermes' <tool_call>…</tool_call>): the
    same call again, word for word, ends the reply (it would do nothing a first one did not)."""
    if tools is None or not tools.active or tools.reasoning == "harmony":
        return None
    syntax = tools.syntax
    return (syntax.opening, syntax.closing) if syntax.opening and syntax.closing and not syntax.array else None


ROLES = ("system", "developer", "user", "assistant", "tool")
# what the server itself gives the template (or the renderer): not a request's chat_template_kwargs
RENDER_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "special_texts",
                              "max_chars", "timeout_s"})


def chat_prompt(messages: list[dict], model: Model, tools: ToolRequest | None = None,
                template_vars: dict | None = None) -> list[int]:
    """The prompt tokens of a conversation (checked message by message), rendered with the tools and those
    of `template_vars` (reasoning_effort, enable_thinking) that the template reads. Contents whose length
    alone cannot fit in the context are refused before rendering (templates render every message's content)."""
    clean = [chat_message(i, message) for i, message in enumerate(messages)]
    if not clean:
        raise ApiError(400, "messages must not be empty", param="messages")
    check_text_fits(model, sum(len(message["content"]) for message in clean), model.n_ctx - 1, "the messages' content",
                    f"which does not leave room for an answer in the context of {model.n_ctx} tokens", "messages")
    clean, context = prepare_messages(clean, tools)
    source = model.chat_template.source
    taken = RENDER_ARGUMENTS.union(context).intersection(template_vars or {})
    if taken:
        raise ApiError(400, f"chat_template_kwargs may not set {', '.join(sorted(taken))}: the server does",
                       param="chat_template_kwargs")
    context.update({name: value for name, value in (template_vars or {}).items() if name in source})
    try:
        return model.chat_tokens(clean, **context)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages") from None


def chat_message(i: int, message: dict) -> dict:
    """One message as templates read it: role, content text; an assistant's tool_calls, a tool's
    tool_call_id and name."""
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param="messages")
    if isinstance(content, list):
        content = "\n".join(_text_part(i, part) for part in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
    clean: dict = {"role": "system" if role == "developer" else role, "content": content}
    if role == "assistant" and isinstance(message.get("reasoning_content"), str):  # templates that render it
        clean["reasoning_content"] = message["reasoning_content"]
    if role == "assistant" and message.get("tool_calls") is not None:
        clean["tool_calls"] = [_tool_call(i, j, call) for j, call in enumerate(_list(i, message["tool_calls"]))]
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if message.get(key) is not None:
                if not isinstance(message[key], str):
                    raise ApiError(400, f"messages[{i}].{key} must be a string", param="messages")
                clean[key] = message[key]
    return clean


def _text_part(i: int, part: object) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("image_url", "input_image", "input_audio", "file"):
        raise ApiError(400, f"messages[{i}].content: {kind} parts are not supported: this model reads text only",
                       param="messages", code="unsupported_content")
    raise ApiError(400, f"messages[{i}].content: parts must be {{\"type\": \"text\", \"text\": ...}}",
                   param="messages")


def _list(i: int, value: object) -> list:
    if not isinstance(value, list):
        raise ApiError(400, f"messages[{i}].tool_calls must be a list", param="messages")
    return value


def _tool_call(i: int, j: int, call: object) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
            or not isinstance(function.get("arguments", "{}"), (str, dict)):
        raise ApiError(400, f"messages[{i}].tool_calls[{j}] must be {{\"id\": ..., \"type\": \"function\", "
                       "\"function\": {\"name\": ..., \"arguments\": \"{...}\"}}", param="messages")
    call_id = call.get("id")
    return {"id": call_id if isinstance(call_id, str) else f"call_{j}", "type": "function",
            "function": {"name": function["name"], "arguments": function.get("arguments", "{}")}}


def completion_prompt(prompt: str | list, model: Model) -> list[int]:
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
                raise ApiError(400, "prompt must be a string, a list with one string, or a list of token ids",
                               param="prompt")
            if min(prompt) < 0 or max(prompt) >= model.n_vocab:
                raise ApiError(400, f"prompt token ids must be in [0, {model.n_vocab})", param="prompt")
            return list(prompt)
    check_text_fits(model, len(prompt), model.n_ctx - 1, "the prompt",
                    f"which does not leave room for an answer in the context of {model.n_ctx} tokens", "prompt")
    tokens = model.tokenize(prompt)
    if not tokens:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return tokens


# --- response shapes --------------------------------------------------------------------------------------

def token_text(model: Model, token: int) -> str:
    return model.tokenizer.token_bytes(token).decode("utf-8", errors="replace")


def chat_logprob(model: Model, step: Step) -> dict:
    def entry(token: int, logprob: float) -> dict:
        data = model.tokenizer.token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {**entry(step.token, step.logprob),
            "top_logprobs": [entry(t, lp) for t, lp in step.top_logprobs or []]}


def usage(job: Job) -> dict:
    prompt = len(job.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": job.timings.predicted_n,
            "total_tokens": prompt + job.timings.predicted_n,
            "prompt_tokens_details": {"cached_tokens": job.timings.cache_n}}
