"""Request bodies, declared once: the same `Field` lists validate requests and describe them in
/openapi.json. Unknown fields are ignored (clients send many we do not use); a known field with the wrong
type or out of range is a 400 naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # an int is a number even past float's range (JSON's numbers have none): `Field.check` refuses it there
    "number": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


# The `type` of every error the server answers, by HTTP status: one table, so a status always has the same
# type whoever refuses the request (a handler, a guard, the connection limits, the Ray front). OpenAI's own
# answers name client errors `invalid_request_error` (a bad field, an unknown model, an unknown URL) and
# failures `server_error`; llama.cpp's server, whose clients read these too, names a missing or wrong key
# `authentication_error` and a server that cannot take the request now `unavailable_error`: those two are
# kept (OpenAI's SDK picks its exception from the status, never the type).
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",  # the request is malformed or asks for something out of range
    401: "authentication_error",  # --api-key: missing or wrong
    403: "invalid_request_error",  # a Host header this server does not answer (DNS rebinding)
    404: "invalid_request_error",  # an unknown path or model
    405: "invalid_request_error",  # a method the path does not take
    408: "invalid_request_error",  # the head or body did not arrive in time
    413: "invalid_request_error",  # the body is larger than --max-body-mib
    415: "invalid_request_error",  # the body is not sent as JSON
    431: "invalid_request_error",  # the request line and headers are too large
    500: "server_error",  # ours: a bug, or a model whose output is not finite
    503: "unavailable_error",  # busy, loading, or a model that could not load: with Retry-After
}

# The same statuses as Anthropic's API names them, for its paths (/v1/messages): its error object is
# {"type": "error", "error": {"type", "message"}}.
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    405: "invalid_request_error", 408: "invalid_request_error", 413: "request_too_large",
    415: "invalid_request_error", 431: "invalid_request_error", 500: "api_error", 503: "overloaded_error",
}

# Retry-After (seconds) of a 503, by why the server cannot take the request now
RETRY_SOON_S = 1  # busy: a slot, a queue place, a grammar worker or a connection frees within a reply or so
RETRY_LOADING_S = 5  # a model still loading, or waiting for another to make room (a switch takes seconds)
RETRY_FAILED_S = 60  # a model that could not be loaded stays so until the server is restarted


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code", ...}}, its type
    from ERROR_TYPES (a status not there is a bug: ValueError). A 503 carries Retry-After: `retry_after_s`,
    RETRY_SOON_S unless given."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        if status not in ERROR_TYPES:
            raise ValueError(f"HTTP status {status} has no error type: add it to schema.ERROR_TYPES")
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = ERROR_TYPES[status]
        self.retry_after_s = RETRY_SOON_S if retry_after_s is None and status == 503 else retry_after_s
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def anthropic_body(self) -> dict:
        """The error in Anthropic's shape (its Messages API's paths)."""
        return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES[self.status], "message": self.message}}

    def headers(self) -> dict[str, str]:
        """The response's headers that the error itself calls for (Retry-After)."""
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


@dataclass(frozen=True)
class Field:
    name: str
    type: str | tuple[str, ...]  # JSON type(s)
    description: str
    default: Any = None
    required: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False  # the minimum itself is refused
    maximum: float | None = None
    items: str | None = None  # arrays: the JSON type of every item
    enum: tuple | None = None
    shape: dict | None = None  # a fuller JSON schema for /openapi.json (the handler checks the details)

    @property
    def types(self) -> tuple[str, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def check(self, value: Any) -> Any:
        if "integer" in self.types and isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)  # JSON Schema's integer: 1.0 is one
        if not any(_JSON_TYPES[t](value) for t in self.types):
            raise ApiError(400, f"'{self.name}' must be {' or '.join(self.types)}, got {_json_type(value)}",
                           param=self.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = _shown_number(value)
            if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
                relation = ">" if self.exclusive_minimum else ">="
                raise ApiError(400, f"'{self.name}' must be {relation} {self.minimum}, got {shown}", param=self.name)
            if self.maximum is not None and value > self.maximum:
                raise ApiError(400, f"'{self.name}' must be <= {self.maximum}, got {shown}", param=self.name)
            if "number" in self.types and "integer" not in self.types and isinstance(value, int):
                try:  # the sampler computes in floats: an integer of 400 digits overflowed there (a 500)
                    value = float(value)
                except OverflowError:
                    raise ApiError(400, f"'{self.name}' is too large, got {shown}", param=self.name) from None
        if self.items == "integer" and isinstance(value, list):
            value = [int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else v for v in value]
        if self.items and isinstance(value, list) and not all(_JSON_TYPES[self.items](v) for v in value):
            raise ApiError(400, f"'{self.name}' must be a list of {self.items}s", param=self.name)
        if self.enum is not None and value not in self.enum:
            raise ApiError(400, f"'{self.name}' must be one of {', '.join(map(str, self.enum))}, got {value!r}",
                           param=self.name)
        return value

    def openapi(self) -> dict:
        if self.shape is not None:
            return {**self.shape, "description": self.description}
        one = [_openapi_type(t, self.items) for t in self.types]
        schema = one[0] if len(one) == 1 else {"oneOf": one}
        schema["description"] = self.description
        for key in ("minimum", "maximum", "default"):
            if getattr(self, key) is not None:
                schema[key] = getattr(self, key)
        if self.exclusive_minimum:
            schema["exclusiveMinimum"] = schema.pop("minimum")
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        return schema


def _shown_number(value: int | float, digits: int = 24) -> str:
    """A number as an error message shows it: an integer of hundreds of digits by its first ones and length."""
    text = str(value)
    return text if len(text) <= digits else f"{text[:digits]}… ({len(text.lstrip('-'))} digits)"


def _json_type(value: Any) -> str:
    return next((t for t, ok in _JSON_TYPES.items() if ok(value)), type(value).__name__)


def _openapi_type(json_type: str, items: str | None) -> dict:
    if json_type == "array":
        return {"type": "array", "items": {"type": items} if items else {}}
    return {"type": json_type}


def validate(body: Any, fields: list[Field], defaults: dict[str, Any] | None = None) -> dict:
    """The known fields of a JSON body, type-checked, defaults filled in (`defaults` before the fields' own)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_type(body)}")
    out = {}
    for f in fields:
        value = body.get(f.name)
        if value is None:
            if f.required:
                raise ApiError(400, f"'{f.name}' is required", param=f.name)
            out[f.name] = defaults.get(f.name, f.default) if defaults else f.default
        else:
            out[f.name] = f.check(value)
    return out


def schema_of(fields: list[Field]) -> dict:
    return {"type": "object", "properties": {f.name: f.openapi() for f in fields},
            "required": [f.name for f in fields if f.required]}


# --- the requests ------------------------------------------------------------------------------------------

_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_TOOL_CALL = {"type": "object", "required": ["id", "type", "function"], "properties": {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": {"type": "object", "required": ["name", "arguments"],
                 "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}}}}
MESSAGES = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"], "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": _TEXT_PART}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_call_id": {"type": "string"}}}}
TOOLS = {"type": "array", "items": {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"},
    "function": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "description": {"type": "string"},
        "parameters": {"type": "object"}}}}}}
TOOL_CHOICE = {"anyOf": [{"enum": ["auto", "none", "required"]}, {
    "type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]}
_TEXT = {"type": "string", "minLength": 1}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
PROMPT = {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "maxItems": 1, "items": {"anyOf": [_TEXT, _TOKEN_IDS]}},
                    _TOKEN_IDS]}
EMBEDDING_INPUT = {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT},
                             {"type": "array", "minItems": 1, "items": _TOKEN_IDS}, _TOKEN_IDS]}
RESPONSE_FORMAT = {"anyOf": [
    {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
    {"type": "object", "required": ["type", "json_schema"], "properties": {
        "type": {"const": "json_schema"},
        "json_schema": {"type": "object", "required": ["name", "schema"], "properties": {
            "name": {"type": "string"}, "description": {"type": "string"}, "schema": {"type": "object"},
            "strict": {"type": "boolean"}}}}}]}

SAMPLING = [
    Field("model", "string", "Which model (its alias or file name; /v1/models lists them). With one model, any "
          "name; with several, none is the first."),
    Field("max_tokens", "integer", "Most tokens to generate (default: until end of generation or a full "
          "context).", minimum=1),
    Field("max_completion_tokens", "integer", "Same as max_tokens (OpenAI's newer name).", minimum=1),
    Field("temperature", "number", "0 = greedy.", default=0.8, minimum=0, maximum=5),
    Field("top_p", "number", "Nucleus sampling.", default=0.95, minimum=0, exclusive_minimum=True, maximum=1),
    Field("top_k", "integer", "Keep the k most likely tokens (0 = all).", default=40, minimum=0),
    Field("min_p", "number", "Drop tokens below min_p times the best one's probability.", default=0.05,
          minimum=0, maximum=1),
    Field("presence_penalty", "number", "Penalty for tokens already present.", default=0.0, minimum=-2, maximum=2),
    Field("frequency_penalty", "number", "Penalty per occurrence.", default=0.0, minimum=-2, maximum=2),
    Field("repeat_penalty", "number", "llama.cpp's repetition penalty (1 = off).", default=1.0, minimum=0,
          exclusive_minimum=True),
    Field("repeat_last_n", "integer", "How many recent tokens the penalties look at (-1 = all).", default=64,
          minimum=-1),
    Field("seed", "integer", "Same seed and request = same output; -1 (any negative): a random seed."),
    Field("stop", ("string", "array"), "Up to 16 strings; generation stops before them.", items="string"),
    Field("logit_bias", "object", "Token id (as a string) -> bias added to its logit, -100..100."),
    Field("n", "integer", "Number of choices; only 1 is supported.", default=1, minimum=1, maximum=1),
    Field("stream", "boolean", "Send server-sent events as tokens are generated.", default=False),
    Field("stream_options", "object", "{\"include_usage\": true} adds a final chunk with usage."),
    Field("response_format", "object", "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": "
          "{...}, \"strict\": true}} constrains the output to JSON matching the schema; {\"type\": \"json_object\"} "
          "to any JSON object; {\"type\": \"text\"} is the default.", shape=RESPONSE_FORMAT),
    Field("grammar", "string", "llama.cpp's field: a Lark (llguidance) or GBNF grammar the output must match."),
    Field("json_schema", "object", "llama.cpp's field: a JSON schema the output must match."),
    Field("user", "string", "Accepted and ignored."),
]

CHAT = [
    Field("messages", "array", "The conversation: objects with role (system, developer, user, assistant, tool) "
          "and content (a string, or a list of {\"type\": \"text\", \"text\": ...} parts); an assistant's "
          "tool_calls, a tool's tool_call_id.", required=True, items="object", shape=MESSAGES),
    Field("tools", "array", "Functions the model may call: [{\"type\": \"function\", \"function\": {\"name\", "
          "\"description\", \"parameters\": JSON schema}}].", items="object", shape=TOOLS),
    Field("tool_choice", ("string", "object"), "auto (default with tools), none, required, or {\"type\": "
          "\"function\", \"function\": {\"name\": ...}}; required and named calls are grammar-constrained.",
          shape=TOOL_CHOICE),
    Field("parallel_tool_calls", "boolean", "Whether one reply may call several tools.", default=True),
    Field("reasoning_format", "string", "Where a thinking model's reasoning goes: auto or deepseek (the message's "
          "reasoning_content, the default) or none (left in content, markers and all; gpt-oss's channels are "
          "always split).", default="auto", enum=("auto", "deepseek", "none")),
    Field("chat_template_kwargs", "object", "Variables for the chat template, e.g. {\"enable_thinking\": false} "
          "(Qwen 3); each reaches the template only if it reads it."),
    Field("logprobs", "boolean", "Return the log-probability of each output token.", default=False),
    Field("top_logprobs", "integer", "With logprobs: the most likely alternatives per token.", default=0,
          minimum=0, maximum=20),
    *SAMPLING,
]

COMPLETION = [
    Field("prompt", ("string", "array"), "The text to continue (a list: one string, or token ids).", shape=PROMPT,
          required=True),
    Field("logprobs", "integer", "Return the log-probabilities of the this many most likely tokens.",
          minimum=0, maximum=20),
    Field("echo", "boolean", "Prepend the prompt to the returned text.", default=False),
    *SAMPLING,
]

EMBEDDING = [
    Field("input", ("string", "array"), "A string or a list of strings (or token id lists).", required=True,
          shape=EMBEDDING_INPUT),
    Field("model", "string", "Which model (its alias or file name); with one model, any name."),
    Field("encoding_format", "string", "float (default) or base64.", default="float", enum=("float", "base64")),
]

MODEL = Field("model", "string", "Which model's tokenizer (default: the first).")

TOKENIZE = [
    Field("content", "string", "Text to tokenize.", required=True),
    MODEL,
    Field("add_special", "boolean", "Add BOS/EOS as the model does.", default=True),
    Field("with_pieces", "boolean", "Also return each token's text.", default=False),
]

DETOKENIZE = [
    MODEL,
    Field("tokens", "array", "Token ids.", required=True, items="integer",
          shape={"type": "array", "items": {"type": "integer", "minimum": 0}}),
]


def defaults_of(fields: list[Field], defaults: dict[str, Any] | None = None) -> dict:
    """Every field's default (`defaults` before the fields' own): the fields of a request that gives none,
    as a translated request (Responses', Messages') starts from chat completions' fields."""
    return {f.name: (defaults or {}).get(f.name, f.default) for f in fields}


# The sampling fields the Responses and Messages endpoints take as chat completions do (OpenAI's and
# Anthropic's own, plus llama.cpp's extras); the rest of each request is its own and translated.
SHARED_SAMPLING = ("model", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                   "repeat_penalty", "repeat_last_n", "seed", "logit_bias")
_SHARED = [f for f in SAMPLING if f.name in SHARED_SAMPLING]

_RESPONSES_TOOLS = {"type": "array", "items": {"type": "object", "required": ["type", "name"], "properties": {
    "type": {"const": "function"}, "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "description": {"type": "string"}, "parameters": {"type": "object"}, "strict": {"type": "boolean"}}}}
_RESPONSES_TOOL_CHOICE = {"anyOf": [{"enum": ["auto", "none", "required"]}, {
    "type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"},
                                                                   "name": {"type": "string"}}}]}
_RESPONSES_INPUT = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}

RESPONSES = [
    Field("input", ("string", "array"), "A user message's text, or a list of items: messages ({\"role\", "
          "\"content\": text or input_text / output_text parts}), function_call and function_call_output items "
          "(and reasoning items, given back to templates that read them).", required=True, shape=_RESPONSES_INPUT),
    Field("instructions", "string", "A system message put first."),
    Field("tools", "array", "Function tools: [{\"type\": \"function\", \"name\", \"description\", \"parameters\": "
          "JSON schema}].", items="object", shape=_RESPONSES_TOOLS),
    Field("tool_choice", ("string", "object"), "auto (default with tools), none, required, or {\"type\": "
          "\"function\", \"name\": ...}.", shape=_RESPONSES_TOOL_CHOICE),
    Field("parallel_tool_calls", "boolean", "Whether one reply may call several tools.", default=True),
    Field("text", "object", "{\"format\": {\"type\": \"json_schema\", \"name\", \"schema\", \"strict\"}} or "
          "{\"format\": {\"type\": \"json_object\"}} constrains the output; {\"type\": \"text\"} is the default."),
    Field("reasoning", "object", "{\"effort\": \"low\" | \"medium\" | \"high\"}: passed to templates that take a "
          "reasoning effort (gpt-oss)."),
    Field("max_output_tokens", "integer", "Most tokens to generate, reasoning included.", minimum=1),
    Field("stream", "boolean", "Send the Responses API's server-sent events.", default=False),
    Field("previous_response_id", "string", "Not supported: the server keeps no responses (a 400); send the "
          "whole conversation in input."),
    Field("conversation", ("string", "object"), "Not supported: the server keeps no conversations (a 400)."),
    Field("store", "boolean", "Accepted and ignored: nothing is stored."),
    Field("metadata", "object", "Accepted and returned as given."),
    *_SHARED,
]

_ANTHROPIC_BLOCKS = {"type": "array", "items": {"type": "object", "required": ["type"]}}
_ANTHROPIC_MESSAGES = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role", "content"], "properties": {
        "role": {"enum": ["user", "assistant"]},
        "content": {"anyOf": [{"type": "string"}, _ANTHROPIC_BLOCKS]}}}}
_ANTHROPIC_TOOLS = {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "description": {"type": "string"},
    "input_schema": {"type": "object"}}}}
_ANTHROPIC_TOOL_CHOICE = {"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["auto", "any", "tool", "none"]}, "name": {"type": "string"},
    "disable_parallel_tool_use": {"type": "boolean"}}}
_ANTHROPIC_THINKING = {"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["enabled", "adaptive", "disabled"]}, "budget_tokens": {"type": "integer"}}}
_ANTHROPIC_OUTPUT = {"type": "object", "properties": {
    "effort": {"enum": ["low", "medium", "high", "xhigh", "max"]},
    "format": {"type": "object", "required": ["type", "schema"], "properties": {
        "type": {"const": "json_schema"}, "schema": {"type": "object"}}}}}

_ANTHROPIC_PROMPT = [
    Field("messages", "array", "The conversation: {\"role\": \"user\" | \"assistant\", \"content\": a string or "
          "blocks}; blocks: text, tool_use (assistant), tool_result (user: content a string or text blocks, "
          "is_error), thinking (assistant).", required=True, items="object", shape=_ANTHROPIC_MESSAGES),
    Field("system", ("string", "array"), "The system prompt: a string or text blocks.", items="object"),
    Field("tools", "array", "Tools: [{\"name\", \"description\", \"input_schema\": JSON schema}].", items="object",
          shape=_ANTHROPIC_TOOLS),
    Field("tool_choice", "object", "{\"type\": \"auto\" | \"any\" | \"tool\" (with \"name\") | \"none\"}, and "
          "disable_parallel_tool_use.", shape=_ANTHROPIC_TOOL_CHOICE),
    Field("thinking", "object", "{\"type\": \"enabled\" | \"adaptive\" | \"disabled\"}: passed to templates "
          "that switch thinking (enable_thinking); budget_tokens is accepted and not enforced.",
          shape=_ANTHROPIC_THINKING),
    Field("output_config", "object", "{\"effort\": ...} passed to templates that take a reasoning effort "
          "(gpt-oss: xhigh and max as high); {\"format\": {\"type\": \"json_schema\", \"schema\": {...}}} "
          "constrains the text to JSON matching the schema.", shape=_ANTHROPIC_OUTPUT),
]

MESSAGES_API = [
    *_ANTHROPIC_PROMPT,
    Field("max_tokens", "integer", "Most tokens to generate, thinking included.", required=True, minimum=1),
    Field("stop_sequences", "array", "Up to 16 strings; generation stops before them (stop_reason "
          "\"stop_sequence\").", items="string"),
    Field("stream", "boolean", "Send the Messages API's server-sent events.", default=False),
    Field("metadata", "object", "Accepted and ignored."),
    *_SHARED,
]

COUNT_TOKENS = [*_ANTHROPIC_PROMPT, _SHARED[0]]
