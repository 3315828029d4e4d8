"""Tool calling: OpenAI's `tools` in, the model's own tool-call syntax out and back.

A model learned one way of writing a tool call, and its chat template shows it (the template renders the
conversation's earlier calls in that syntax):

    hermes   <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>       Qwen 2.5/3, Hermes 2 Pro
    mistral  [TOOL_CALLS][{"name": "f", "arguments": {...}}]                   Mistral Nemo, Small 3.1
    mistral3 [TOOL_CALLS]f[ARGS]{...}  (one marker per call)                  Ministral 3, Small 3.2, Devstral
    phi4     <|tool_call|>{"name": "f", "arguments": {...}}<|/tool_call|>      Phi-4-mini (llama.cpp's template)
    llama3   {"name": "f", "parameters": {...}}                                Llama 3.1/3.2
    harmony  <|channel|>commentary to=functions.f <|constrain|>json<|message|>{...}   gpt-oss (harmony.py)

`syntax_of` picks it from the template's text. Such a template renders `tools` and the history's
`tool_calls`/`tool` messages itself. A template that knows no tools (SmolLM2's ChatML, Gemma's) gets the
hermes syntax taught in a system message, earlier calls written as hermes blocks in the assistant's text
and tool results as user turns (`prepare_messages`).

With `tool_choice` "required" or a named function, the whole reply is grammar-constrained to calls of the
given functions whose arguments follow each function's JSON schema (`call_grammar`), so they always parse.
With "auto", the model writes freely and `parse_calls` finds the calls in its text; "none" hides the tools.
A reply's reasoning (harmony's analysis channel, Mistral's [THINK]) is split off in `reply.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..decode.constraint import JSON_FORMAT, Grammar, LazyConstraint
from ..decode.grammar_limits import GrammarError, check_schema, check_size
from ..errors import LlamapyzError
from ..tokenizer import TokenType
from . import harmony, think
from .tool_stream import ToolCall, ToolStream, new_call_id

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
    args_marker: str = ""  # set: a call is `opening NAME args_marker ARGUMENTS` (no JSON around the name)

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (self.opening, self.closing, self.args_marker) if m)


SYNTAXES = {
    "hermes": ToolSyntax("hermes", "<tool_call>", "</tool_call>", array=False, args_key="arguments", separator="\n"),
    "mistral": ToolSyntax("mistral", "[TOOL_CALLS]", "", array=True, args_key="arguments"),
    "mistral3": ToolSyntax("mistral3", "[TOOL_CALLS]", "", array=False, args_key="arguments", args_marker="[ARGS]"),
    "harmony": ToolSyntax("harmony", "", "", array=False, args_key="arguments"),  # its own reader (harmony.py)
    "phi4": ToolSyntax("phi4", "<|tool_call|>", "<|/tool_call|>", array=False, args_key="arguments"),
    "llama3": ToolSyntax("llama3", "", "", array=False, args_key="parameters"),
}
GENERIC = SYNTAXES["hermes"]  # what a template without tool syntax is taught


def syntax_of(template_source: str) -> ToolSyntax | None:
    """The tool-call syntax a chat template renders, or None when it renders no tool calls."""
    if "tool_call" not in template_source and "tools" not in template_source:
        return None
    for marker, name in (("<|channel|>", "harmony"), ("<tool_call>", "hermes"), ("[ARGS]", "mistral3"),
                         ("[TOOL_CALLS]", "mistral"), ("<|tool_call|>", "phi4"), ("<|python_tag|>", "llama3"),
                         ("ipython", "llama3")):
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
    reasoning: str | None = None  # how the template writes reasoning: "harmony", "think" ([THINK]), "tags"
    # (<think>) or None (also when the request wants the reasoning left in the content)

    @classmethod
    def from_fields(cls, tools: list | None, choice: Any, parallel: bool | None, template_source: str
                    ) -> ToolRequest:
        syntax = syntax_of(template_source)
        reasoning = ("harmony" if syntax is not None and syntax.name == "harmony"
                     else think.reasoning_style(template_source))
        if not tools:  # no tools now, but earlier calls and results in the history still need rendering
            if choice not in (None, "none", "auto"):
                raise ToolError("tool_choice needs tools")
            return cls([], "none", True, syntax or GENERIC, syntax is not None, reasoning)
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
        return cls(checked, choice, True if parallel is None else bool(parallel), syntax or GENERIC, syntax is not None,
                   reasoning)

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
    elif request is not None and request.reasoning == "harmony":
        out = harmony.prepare_history(out)
    elif request is not None and request.reasoning == "think":
        out = [think.think_blocks(m) if m["role"] in ("assistant", "system") else m for m in out]
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
    if syntax.name == "harmony":
        return (f"{harmony.CHANNEL}commentary to={harmony.FUNCTIONS}{name} {harmony.CONSTRAIN}json{harmony.MESSAGE}"
                + json.dumps(arguments, ensure_ascii=False))
    if syntax.args_marker:
        return f"{syntax.opening}{name}{syntax.args_marker}{json.dumps(arguments, ensure_ascii=False)}"
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
    if syntax.name == "harmony":
        trigger, anchored = harmony.TRIGGER, False
    else:
        trigger, anchored = (syntax.opening, False) if syntax.opening else ("{", True)
    return LazyConstraint(grammar, trigger, tokenizer, marker_tokens(syntax, tokenizer), anchored)


def _calls_grammar(request: ToolRequest, tools: list[dict], tokenizer: Tokenizer, after_opening: bool) -> Grammar:
    """Calls of `tools` in the request's syntax: from the reply's start, or from just after an opening
    marker already written (then the first call's opening is left out; llama3 has none)."""
    syntax = request.syntax
    if syntax.name == "harmony":
        named = [{"name": t["function"]["name"], "schema": _closed(t)} for t in tools]
        return Grammar.around_schema(harmony.call_lark(named, after_opening, JSON_FORMAT),
                                     {"anyOf": [n["schema"] for n in named]})
    if syntax.args_marker:
        return _name_first_grammar(request, tools, tokenizer, after_opening)
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


def _name_first_grammar(request: ToolRequest, tools: list[dict], tokenizer: Tokenizer, after_opening: bool
                        ) -> Grammar:
    """`_calls_grammar` for a syntax that writes a call as `opening NAME args_marker ARGUMENTS`."""
    syntax = request.syntax
    opening, args = _marker(syntax.opening, tokenizer), _marker(syntax.args_marker, tokenizer)
    repeat = " call*" if request.parallel else ""
    lines = [f"start: {'rest' if after_opening else 'call'}{repeat}\ncall: {opening} rest\n",
             "rest: " + " | ".join(f"tool_{i}" for i in range(len(tools))) + "\n"]
    for i, tool in enumerate(tools):
        lines.append(f"tool_{i}: {json.dumps(tool['function']['name'])} {args} "
                     f"%json {json.dumps({**_closed(tool), 'x-guidance': JSON_FORMAT})}\n")
    return Grammar.around_schema("".join(lines), {"anyOf": [_closed(t) for t in tools]})


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
    ids = (tokenizer.vocab.token_to_id.get(m) for m in syntax.markers)
    return frozenset(t for t in ids if t is not None and tokenizer.vocab.types[t] == TokenType.CONTROL)


# --- reading the reply ------------------------------------------------------------------------------------

def call_stream(syntax: ToolSyntax, names: set[str]) -> ToolStream | harmony.HarmonyStream:
    """A reader of a reply's calls in `syntax` (events: see `ToolStream`)."""
    if syntax.name == "harmony":
        return harmony.HarmonyStream(names, new_call_id)
    return ToolStream(syntax, names)


def parse_calls(text: str, syntax: ToolSyntax, names: set[str]) -> tuple[str, list[ToolCall]]:
    """The reply's text outside tool calls, and its calls (a block that does not parse stays text)."""
    stream = call_stream(syntax, names)
    content, calls = [], []
    for event in stream.feed(text) + stream.finish():
        if event[0] == "content":
            content.append(event[1])
        elif event[0] == "call":
            calls.append(ToolCall(event[3], "", event[2]))
        else:
            calls[event[1]].arguments += event[2]
    return "".join(content).strip() if calls else "".join(content), calls
