"""Tool calling: OpenAI's `tools` in, the model's own tool-call syntax out and back.

A model learned one way of writing a tool call, and its chat template shows it (the template renders the
conversation's earlier calls in that syntax):

    hermes   <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>       Qwen 2.5/3, Hermes 2 Pro
    mistral  [TOOL_CALLS][{"name": "f", "arguments": {...}}]                   Mistral Nemo, Small 3.1
    phi4     <|tool_call|>{"name": "f", "arguments": {...}}<|/tool_call|>      Phi-4-mini (llama.cpp's template)
    llama3   {"name": "f", "parameters": {...}}                                Llama 3.1/3.2

`syntax_of` picks it from the template's text. Such a template renders `tools` and the history's
`tool_calls`/`tool` messages itself. A template that knows no tools (SmolLM2's ChatML, Gemma's) gets the
hermes syntax taught in a system message, earlier calls written as hermes blocks in the assistant's text
and tool results as user turns (`prepare_messages`).

With `tool_choice` "required" or a named function, the whole reply is grammar-constrained to calls of the
given functions whose arguments follow each function's JSON schema (`call_grammar`), so they always parse.
With "auto", the model writes freely and `parse_calls` finds the calls in its text; "none" hides the tools.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..decode.constraint import JSON_FORMAT, Grammar, LazyConstraint
from ..decode.generation import prefix_overlap
from ..decode.grammar_limits import GrammarError, check_schema, check_size
from ..errors import LlamapyzError
from ..tokenizer import TokenType

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


class ToolError(LlamapyzError, ValueError):
    """A malformed `tools` or `tool_choice` (the request's fault)."""


@dataclass(frozen=True)
class ToolSyntax:
    name: str
    opening: str  # the marker before the calls ("" for llama3: the reply is the call)
    closing: str  # the marker after them ("" when the end of the reply closes them)
    array: bool  # the calls are one JSON array after one opening (else one object per opening ... closing)
    args_key: str  # "arguments" or "parameters"
    separator: str = ""  # between the opening marker and the JSON (and the JSON and the closing marker)


SYNTAXES = {
    "hermes": ToolSyntax("hermes", "<tool_call>", "</tool_call>", array=False, args_key="arguments", separator="\n"),
    "mistral": ToolSyntax("mistral", "[TOOL_CALLS]", "", array=True, args_key="arguments"),
    "phi4": ToolSyntax("phi4", "<|tool_call|>", "<|/tool_call|>", array=False, args_key="arguments"),
    "llama3": ToolSyntax("llama3", "", "", array=False, args_key="parameters"),
}
GENERIC = SYNTAXES["hermes"]  # what a template without tool syntax is taught


def syntax_of(template_source: str) -> ToolSyntax | None:
    """The tool-call syntax a chat template renders, or None when it renders no tool calls."""
    if "tool_call" not in template_source and "tools" not in template_source:
        return None
    for marker, name in (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|tool_call|>", "phi4"),
                         ("<|python_tag|>", "llama3"), ("ipython", "llama3")):
        if marker in template_source:
            return SYNTAXES[name]
    return None


# --- the request ------------------------------------------------------------------------------------------

@dataclass
class ToolRequest:
    """What a chat request asks about tools."""

    tools: list[dict]  # OpenAI function tools, checked
    choice: str  # "auto", "none", "required", or a function's name
    parallel: bool
    syntax: ToolSyntax
    native: bool  # the template renders tools and calls itself

    @classmethod
    def from_fields(cls, tools: list | None, choice: Any, parallel: bool | None, template_source: str
                    ) -> ToolRequest:
        syntax = syntax_of(template_source)
        if not tools:  # no tools now, but earlier calls and results in the history still need rendering
            if choice not in (None, "none", "auto"):
                raise ToolError("tool_choice needs tools")
            return cls([], "none", True, syntax or GENERIC, syntax is not None)
        checked = [_check_tool(i, tool) for i, tool in enumerate(tools)]
        names = [tool["function"]["name"] for tool in checked]
        if len(set(names)) != len(names):
            raise ToolError("tools: function names must be unique")
        try:  # before the template renders them into the prompt, and long before they are compiled
            check_size([tool["function"]["parameters"] for tool in checked], "the tools' parameters")
            for i, tool in enumerate(checked):
                check_schema(tool["function"]["parameters"], f"tools[{i}].function.parameters")
        except GrammarError as exc:
            raise ToolError(str(exc)) from None
        if choice is None:
            choice = "auto"
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
            if not isinstance(name, str):
                raise ToolError('tool_choice must be "auto", "none", "required" or {"type": "function", '
                                '"function": {"name": ...}}')
            if name not in names:
                raise ToolError(f"tool_choice names {name!r}, which is not among the tools")
            choice = name
        elif choice not in ("auto", "none", "required"):
            raise ToolError('tool_choice must be "auto", "none", "required" or a named function')
        return cls(checked, choice, True if parallel is None else bool(parallel), syntax or GENERIC, syntax is not None)

    @property
    def active(self) -> bool:
        """Whether the model is shown the tools and its reply read for calls."""
        return self.choice != "none"

    @property
    def forced(self) -> list[dict] | None:
        """The tools one of which must be called, or None when the model may answer in text."""
        if self.choice == "required":
            return self.tools
        if self.choice not in ("auto", "none"):
            return [tool for tool in self.tools if tool["function"]["name"] == self.choice]
        return None


def _check_tool(i: int, tool: Any) -> dict:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ToolError(f"tools[{i}].function must be an object with a name")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", function["name"]):
        raise ToolError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
    description = function.get("description", "")
    if not isinstance(description, str):
        raise ToolError(f"tools[{i}].function.description must be a string")
    return {"type": "function", "function": {"name": function["name"], "description": description,
                                             "parameters": parameters}}


# --- the prompt -------------------------------------------------------------------------------------------

GENERIC_INSTRUCTIONS = (
    "You can call functions. To call one, reply with nothing but\n<tool_call>\n"
    '{"name": <function name>, "arguments": <the arguments as a JSON object>}\n</tool_call>\n'
    "(one such block per call). A function's result comes back inside <tool_response></tool_response>. "
    "The functions:\n")


def prepare_messages(messages: list[dict], request: ToolRequest | None) -> tuple[list[dict], dict]:
    """Messages (and template variables) to render: for a template with tool syntax, tool calls' arguments
    as objects (as templates expect) and `tools`; otherwise the generic hermes rendering as plain turns."""
    native = request is None or request.native
    short_ids = request is not None and request.syntax.name == "mistral"  # Mistral's templates want 9 characters
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if native:
            if calls:
                message = {**message, "tool_calls": [_as_object_arguments(c, short_ids) for c in calls]}
            if short_ids and "tool_call_id" in message:
                message = {**message, "tool_call_id": _short_id(message["tool_call_id"])}
            out.append(message)
        elif message["role"] == "assistant" and calls:
            blocks = [render_call(GENERIC, c["function"]["name"], _arguments(c)) for c in calls]
            text = message.get("content") or ""
            out.append({"role": "assistant", "content": "\n".join(([text] if text else []) + blocks)})
        elif message["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n"
                                                   "</tool_response>"})
        else:
            out.append(message)
    if not native:
        out = _merge_turns(out)
    extra: dict = {}
    if request is not None and request.active:
        if request.native:
            extra["tools"] = request.tools
        else:
            listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in request.tools)
            system = GENERIC_INSTRUCTIONS + listing
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{system}"}
            else:
                out.insert(0, {"role": "system", "content": system})
    return out, extra


def _arguments(call: dict) -> Any:
    arguments = call["function"].get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _as_object_arguments(call: dict, short_id: bool) -> dict:
    """A call as templates read it: arguments as an object (most templates `tojson` them: a string would
    come out quoted twice)."""
    call = {**call, "function": {**call["function"], "arguments": _arguments(call)}}
    return {**call, "id": _short_id(call["id"])} if short_id else call


def _short_id(call_id: str) -> str:
    """A call id as Mistral's templates insist on: 9 letters or digits (the same for the same id)."""
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def _merge_turns(messages: list[dict]) -> list[dict]:
    """Consecutive turns of one role joined (a tool result after a user turn, for templates that insist on
    alternating roles)."""
    out: list[dict] = []
    for message in messages:
        if out and out[-1]["role"] == message["role"] and message["role"] != "system":
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{message['content']}"}
        else:
            out.append(message)
    return out


def render_call(syntax: ToolSyntax, name: str, arguments: Any) -> str:
    """One call as the model writes it."""
    body = json.dumps({"name": name, syntax.args_key: arguments}, ensure_ascii=False)
    if syntax.array:
        body = f"[{body}]"
    return f"{syntax.opening}{syntax.separator}{body}{syntax.separator}{syntax.closing}"


# --- constraining the reply -------------------------------------------------------------------------------

def call_grammar(request: ToolRequest, tokenizer: Tokenizer) -> Grammar | None:
    """The grammar of a reply that must call one of the forced tools (None when not forced)."""
    return _calls_grammar(request, request.forced, tokenizer, after_opening=False) if request.forced else None


def lazy_call_constraint(request: ToolRequest, tokenizer: Tokenizer) -> LazyConstraint | None:
    """With tool_choice auto: free text, but once the model opens a call (writes the syntax's opening
    marker, or for llama3 starts its reply with "{"), the rest of the reply is calls of the tools with
    schema-valid arguments (llama.cpp's lazy grammars)."""
    if not request.active or request.forced or not request.tools:
        return None
    syntax = request.syntax
    grammar = _calls_grammar(request, request.tools, tokenizer, after_opening=True)
    trigger, anchored = (syntax.opening, False) if syntax.opening else ("{", True)
    return LazyConstraint(grammar, trigger, tokenizer, marker_tokens(syntax, tokenizer), anchored)


def _calls_grammar(request: ToolRequest, tools: list[dict], tokenizer: Tokenizer, after_opening: bool) -> Grammar:
    """Calls of `tools` in the request's syntax: from the reply's start, or from just after an opening
    marker already written (then the first call's opening is left out; llama3 has none)."""
    syntax = request.syntax
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", syntax.args_key],
              "properties": {"name": {"const": t["function"]["name"]}, syntax.args_key: _closed(t)}}
             for t in tools]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if syntax.array:
        body = {"type": "array", "items": call, "minItems": 1, **({} if request.parallel else {"maxItems": 1})}
    else:
        body = call
    opening, closing = _marker(syntax.opening, tokenizer), _marker(syntax.closing, tokenizer)
    sep = json.dumps(syntax.separator) if syntax.separator else ""
    rest = " ".join(part for part in (sep, "body", sep, closing) if part)
    repeat = "" if syntax.array or not request.parallel or not syntax.opening else ' ("\\n" call)*'
    first = "rest" if after_opening else "call"
    lark = (f"start: {first}{repeat}\ncall: {opening} rest\nrest: {rest}\n"
            f"body: %json {json.dumps({**body, 'x-guidance': JSON_FORMAT})}\n")
    return Grammar.around_schema(lark, body)


def _closed(tool: dict) -> dict:
    """A function's parameters schema, taking no arguments it does not name unless it says otherwise (as
    llama.cpp's schema converter reads a missing additionalProperties): a function gets what it declared."""
    parameters = tool["function"]["parameters"]
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def _marker(text: str, tokenizer: Tokenizer) -> str:
    """A marker in Lark: a control token by id (its text is not output text), anything else as a string."""
    if not text:
        return ""
    token = tokenizer.vocab.token_to_id.get(text)
    if token is not None and tokenizer.vocab.types[token] == TokenType.CONTROL:
        return f"<[{token}]>"
    return json.dumps(text)


def marker_tokens(syntax: ToolSyntax, tokenizer: Tokenizer) -> frozenset[int]:
    """Control tokens among the syntax's markers: their text must reach the parser."""
    ids = (tokenizer.vocab.token_to_id.get(m) for m in (syntax.opening, syntax.closing) if m)
    return frozenset(t for t in ids if t is not None and tokenizer.vocab.types[t] == TokenType.CONTROL)


# --- reading the reply ------------------------------------------------------------------------------------

@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_calls(text: str, syntax: ToolSyntax, names: set[str]) -> tuple[str, list[ToolCall]]:
    """The reply's text outside tool calls, and its calls (a block that does not parse stays text)."""
    stream = ToolStream(syntax, names)
    content, calls = [], []
    for event in stream.feed(text) + stream.finish():
        if event[0] == "content":
            content.append(event[1])
        elif event[0] == "call":
            calls.append(ToolCall(event[3], "", event[2]))
        else:
            calls[event[1]].arguments += event[2]
    return "".join(content).strip() if calls else "".join(content), calls


# a call's start up to its arguments' first character: '{"name": "f", "arguments": ' (then "{" follows)
_HEADER = re.compile(r'\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\S)')


class ToolStream:
    """Reads a reply as it streams and says, as early as it can, what is text and what are calls.

    `feed` returns events: ("content", text), ("call", index, id, name) when a call's name is known, and
    ("arguments", index, text) for each new piece of its arguments' JSON (the pieces join to the JSON text
    the model wrote). Text that may be the start of an opening marker is held back until it is not; a
    call's arguments are released as they arrive, since everything before the arguments' value completes
    belongs to it. `finish` releases what is left: an unfinished or unparsable block as text.
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
        if self.in_calls and self.header_end is None:  # an unfinished block: it was text after all
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

    def _read_arguments(self, events: list[tuple]) -> bool:
        text = self.text
        try:
            _, end = self.decoder.raw_decode(text, self.header_end)
        except ValueError:  # not complete yet: all of it so far is the arguments'
            if len(text) > self.sent:
                events.append(("arguments", self.n_calls, text[self.sent:]))
                self.sent = len(text)
            return False
        if end > self.sent:
            events.append(("arguments", self.n_calls, text[self.sent:end]))
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
