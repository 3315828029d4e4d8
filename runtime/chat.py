"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered sandboxed
(templates come from untrusted files: no attribute tricks, no mutation, no imports).

The environment is the one Hugging Face transformers renders chat templates in (`_compile_jinja_template`
in transformers' chat_template_utils), so a model's template means here what it means there: trim_blocks
and lstrip_blocks, the loop-controls extension (`{% break %}`, `{% continue %}`), the globals
`raise_exception(message)` and `strftime_now(format)` (the local time, e.g. Llama 3.2's "Today Date"), and a
`tojson` filter that is `json.dumps` with ensure_ascii=False (Jinja's own escapes <, >, & and ' for HTML).

A model without a template (a base model) gets the built-in one that fits its vocabulary (`FALLBACKS`):
Gemma's turn markup, ChatML or Llama 3's headers where their markup tokens are in the vocabulary, else
plain "User: …\\nAssistant:" text. `--chat-template` overrides either with a built-in name (`BUILTIN`) or a
Jinja2 source.

Every template has an end of turn (`ChatTemplate.end_of_turn`): the markup it writes right after an
assistant's message, found by rendering one. Chat generation stops at it, so a model that spells the markup
out as text (rather than as its end-of-generation token) never shows it to the user.

Client text. The template's markup comes from the model; the messages, and any other variable a caller
passes (`tools=[…]`), come from clients. `render_parts` keeps the two apart for the tokenizer
(`Tokenizer.encode_parts`): before rendering, every special-token text in a client string ("<|im_end|>"
typed by a user; dict keys, tool names and arguments included) is swapped for a placeholder of private-use
characters carrying a random per-render nonce, and so is a client string's end that could join a neighbour
into one (a trailing "<|im_", a leading "end|>"). The rendered text is then split at the placeholders into
(text, parse_special) parts, the client's special-token texts coming back as literal parts, so a user
cannot write control tokens. Not covered: a template that re-cases, cuts or reassembles client strings
(`| upper`, slicing, `replace`) can still make markup of them, and one that cuts a placeholder apart
renders its private-use characters instead of the text it stood for.

Bounds. Templates come from GGUF files and --chat-template, so each render runs under a budget: at most
`max_chars` characters of output (`max_chars_for(n_ctx)` for a prompt, see there) and `timeout_s` seconds
(`DEFAULT_TIMEOUT_S`). The output is streamed (`Template.generate`) and measured chunk by chunk. The clock
is read at every chunk, every loop item (the parsed template is rewritten so that each `{% for %}` counts
its items; a recursive loop's inner levels too), every call, attribute and item lookup, so loops that write
nothing cannot spin unchecked either. Values the template makes (results of calls, filters, `+ * ** %` and
`~`) may hold max_chars characters or items each (integers 4,096 bits), and 64 x max_chars in all; the
operations that can make something far larger than their operands (repetition, powers, %- and format()
widths, replace, join, expandtabs, translate, center and its kin, indent, wordwrap, batch, slice, sum,
tojson's indent) are measured before they run. Whatever a render fails with (a Jinja error, a
SecurityError, RecursionError, MemoryError, OverflowError, …) becomes a ChatTemplateError. Not bounded: a
single builtin operation within those sizes runs to its end (sorting 100,000 items, say), and compiling a
template takes as long as its source makes it.
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from string import Formatter
from types import BuiltinMethodType
from typing import Any

from jinja2 import nodes
from jinja2.filters import make_attrgetter, pass_eval_context, sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .errors import LlamapyzError


class ChatTemplateError(LlamapyzError):
    """The model has no chat template, or its template failed on these messages (or ran over its bounds)."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the model's chat template refused the messages: {message}")


_MAX_JSON_INDENT = 16  # tojson's indent and separators, in characters (the output grows with them per line)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    widths = [len(indent) if isinstance(indent, str) else indent or 0, *map(len, separators or ())]
    if max(widths) > _MAX_JSON_INDENT:
        raise ChatTemplateError(f"the model's chat template asked tojson for an indent or separator over "
                                f"{_MAX_JSON_INDENT} characters")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


BUILTIN = {
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
        "else 'user' %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
        "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    # A transcript for a vocabulary with no markup tokens: "User: Hi\nAssistant: Hello!\nUser: …". The
    # assistant's turn ends with the next "User:" label (a user message right after it does not repeat
    # it), so "User:", what a base model writes to go on with the dialogue, is this template's end of turn.
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}\nUser:"
        "{% elif message['role'] == 'user' %}"
        "{% if not (loop.previtem and loop.previtem['role'] == 'assistant') %}User:{% endif %}"
        " {{ message['content'] | trim }}\n"
        "{% else %}{{ message['content'] | trim }}\n\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"),
}

# The built-in template for a model without one: the first whose markup tokens are all in the vocabulary.
FALLBACKS = (
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
)
PLAIN = "plain"

# Probe texts: rendered as message contents to see what a template writes around them.
_SENTINEL = "LLAMAPYZ-PROBE-REPLY"
_SYSTEM_SENTINEL = "LLAMAPYZ-PROBE-SYSTEM"

DEFAULT_TIMEOUT_S = 10.0  # a real template renders a long conversation in milliseconds
DEFAULT_MAX_CHARS = 4 * 2**20  # output characters of a render not tied to a context
MAX_CHARS_SLACK = 64 * 1024


def max_chars_for(n_ctx: int, chars_per_token: int) -> int:
    """The most characters a prompt for a context of n_ctx tokens may render to, for a vocabulary whose
    tokens stand for at most `chars_per_token` characters each (`Tokenizer.longest_token_chars`: 81 for
    SmolLM2, 31 for Gemma 3): a longer text needs more tokens than the context holds, so refusing it while
    rendering refuses nothing that could fit. 64 KiB more leave the borderline cases to the tokenizer,
    whose count (and error, naming it) is the one that decides."""
    return chars_per_token * n_ctx + MAX_CHARS_SLACK


def fallback_for(tokens: Sequence[str]) -> str:
    """The built-in template that fits a vocabulary (`FALLBACKS`), else the plain-text one."""
    vocab = set(tokens)
    return next((name for name, markup in FALLBACKS if vocab.issuperset(markup)), PLAIN)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = _BoundedEnvironment()
        try:
            self.template = env.from_string(env.instrument(env.parse(source)))
        except Exception as exc:  # a template is untrusted input: whatever compiling it raises, it does not parse
            raise ChatTemplateError(f"the model's chat template does not parse: {_describe(exc)}") from None
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.origin = "model"  # "model", "built-in <name>", "built-in <name> (the model has none)" or "override"

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tokens: Sequence[str], override: str | None = None
                      ) -> ChatTemplate:
        """The model's template, or `override` (a BUILTIN name or Jinja2 source), or the fallback that fits
        the vocabulary `tokens`."""
        source, origin = metadata.get("tokenizer.chat_template"), "model"
        if override:
            source, origin = BUILTIN.get(override, override), "override"
            if override in BUILTIN:
                origin = f"built-in {override}"
        elif not isinstance(source, str) or not source:
            name = fallback_for(tokens)
            source, origin = BUILTIN[name], f"built-in {name} (the model has none)"

        def token(key: str) -> str:
            index = metadata.get(key)
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

        template = cls(source, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
        template.origin = origin
        return template

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, *,
               max_chars: int = DEFAULT_MAX_CHARS, timeout_s: float = DEFAULT_TIMEOUT_S, **context: Any) -> str:
        """The conversation as the template writes it. `context`: further template variables (tools=[…],
        documents, …); bos_token and eos_token default to the model's. Client strings are rendered as they
        are (see `render_parts`); the render is bounded by `max_chars` and `timeout_s` (module docstring)."""
        return self._render(self._fold_system(messages), add_generation_prompt, _Budget.start(max_chars, timeout_s),
                            context)

    def render_parts(self, messages: Sequence[dict[str, Any]], special_texts: SpecialTexts,
                     add_generation_prompt: bool = True, *, max_chars: int = DEFAULT_MAX_CHARS,
                     timeout_s: float = DEFAULT_TIMEOUT_S, **context: Any) -> list[tuple[str, bool]]:
        """`render`, as (text, parse_special) parts for `Tokenizer.encode_parts`: the template's own text
        parses special tokens; where a client string (in `messages` or `context`) spells one of
        `special_texts`, or ends in a piece of one, that text comes as a literal part (module docstring).
        Without such text in client strings, the one part is (render(...), True)."""
        budget = _Budget.start(max_chars, timeout_s)
        shield = _Shield(special_texts)
        try:
            messages, context = shield.protect((self._fold_system(messages), context))
        except RecursionError:
            raise ChatTemplateError("the messages are nested too deeply to render") from None
        return shield.split(self._render(messages, add_generation_prompt, budget, context))

    def _fold_system(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        messages = list(messages)
        if messages and messages[0].get("role") == "system" and not self.supports_system:
            messages = _system_into_first_user(messages)
        return messages

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, budget: _Budget | None = None,
                context: Mapping[str, Any] | None = None) -> str:
        budget = budget or _Budget.start(DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT_S)
        context = context or {}
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, **context, "messages": messages,
                     "add_generation_prompt": add_generation_prompt}
        token = _BUDGET.set(budget)
        chunks = self.template.generate(variables)
        try:
            return budget.collect(chunks)
        except ChatTemplateError:
            raise
        except Exception as exc:  # untrusted code: whatever it fails with is the template's failure
            raise ChatTemplateError(f"the model's chat template failed: {_describe(exc)}") from None
        finally:
            chunks.close()
            _BUDGET.reset(token)

    @functools.cached_property
    def end_of_turn(self) -> str | None:
        """The markup right after an assistant's message (ChatML "<|im_end|>", Gemma "<end_of_turn>", Llama 3
        "<|eot_id|>"): its first whitespace-separated word. None if nothing follows or the probe fails."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = self._render(probe, add_generation_prompt=False)
        except ChatTemplateError:
            return None
        _, found, after = text.rpartition(_SENTINEL)
        words = after.split()
        return words[0] if found and words else None

    @functools.cached_property
    def supports_system(self) -> bool:
        """Whether a system message survives rendering. Some templates refuse one (Gemma 2's raises "System
        role not supported"); then `render` folds it into the first user message, as llama.cpp does."""
        probe = [{"role": "system", "content": _SYSTEM_SENTINEL}, {"role": "user", "content": "Hi"}]
        try:
            return _SYSTEM_SENTINEL in self._render(probe, add_generation_prompt=True)
        except ChatTemplateError:
            return False


def _describe(exc: BaseException) -> str:
    """An exception as one line, its type first (a MemoryError has no message of its own)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _system_into_first_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading system message's text put before the first user message's, a blank line between."""
    system, rest = messages[0].get("content") or "", messages[1:]
    for i, message in enumerate(rest):
        if message.get("role") == "user":
            content = message.get("content") or ""
            return [*rest[:i], {**message, "content": f"{system}\n\n{content}" if content else system}, *rest[i + 1:]]
    return [{**messages[0], "role": "user"}, *rest]


# --- client text: special-token texts swapped for placeholders while rendering ------------------------------

_OPEN, _CLOSE = "\ue000", "\ue001"  # a placeholder: _OPEN, the render's nonce, an index in _DIGITS, _CLOSE
_DIGITS = "".join(map(chr, range(0xE010, 0xE01A)))
_TO_DIGITS, _FROM_DIGITS = str.maketrans("0123456789", _DIGITS), str.maketrans(_DIGITS, "0123456789")
_NONCE_CHARS = 8  # each one of 256 private-use characters: 64 random bits


class SpecialTexts:
    """The texts a client string must not spell into markup (a tokenizer's `markup_texts`: "<|im_start|>",
    "<bos>", …), indexed once for `ChatTemplate.render_parts`."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = tuple(text for text in texts if text)
        self._full = set(self.texts)
        self._prefixes = {text[:k] for text in self.texts for k in range(1, len(text))}
        self._suffixes = {text[k:] for text in self.texts for k in range(1, len(text))}
        self._longest = max(map(len, self.texts), default=0)
        # Where one may start: at its first three characters (Gemma's 6,249 share 7 of them), or at its first
        # one for the rare shorter text; and the lengths to try there, longest first.
        self._lengths: dict[str, list[int]] = {}
        for text in self.texts:
            self._lengths.setdefault(text[:3] if len(text) >= 3 else text[0], []).append(len(text))
        for head, lengths in self._lengths.items():
            self._lengths[head] = sorted(set(lengths), reverse=True)
        heads = sorted(self._lengths, key=lambda head: (-len(head), head))
        self._starts = re.compile(f"(?=({'|'.join(map(re.escape, heads))}))") if heads else None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where `text` spells one of the texts (leftmost, longest), or ends in a piece of one that a
        neighbour could complete: a proper prefix of one at its end, a proper suffix at its start, also once
        its whitespace is stripped. Sorted, overlaps merged. Every occurrence of a text, in `text` or across
        its ends, overlaps one of them."""
        if self._starts is None:
            return []
        spans: list[tuple[int, int]] = []
        for match in self._starts.finditer(text):
            start = match.start()
            end = self._match_at(text, start, match.group(1)) if not spans or start >= spans[-1][1] else 0
            if end:
                spans.append((start, end))
        for end in {len(text), len(text.rstrip())}:
            k = self._longest_piece(text, end, self._prefixes, at_end=True)
            if k:
                spans.append((end - k, end))
        for start in {0, len(text) - len(text.lstrip())}:
            k = self._longest_piece(text, start, self._suffixes, at_end=False)
            if k:
                spans.append((start, start + k))
        return _merged(spans)

    def _match_at(self, text: str, start: int, head: str) -> int:
        """The end of the longest of the texts at `start` (where `head` begins), 0 if none."""
        lengths = self._lengths[head] + (self._lengths.get(head[0], []) if len(head) == 3 else [])
        return next((start + n for n in lengths if text[start:start + n] in self._full), 0)

    def _longest_piece(self, text: str, edge: int, pieces: set[str], at_end: bool) -> int:
        """The length of the longest of `pieces` ending (at_end) or starting at `edge`, 0 if none."""
        room = edge if at_end else len(text) - edge
        for k in range(min(room, self._longest - 1), 0, -1):
            if (text[edge - k:edge] if at_end else text[edge:edge + k]) in pieces:
                return k
        return 0


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class _Shield:
    """One render's placeholders: `protect` swaps client strings' special texts for them, `split` turns the
    rendered text back into (text, parse_special) parts. The nonce is random per render, so neither a client
    nor an earlier render can write a placeholder; one a template forges from a protected string it was given
    can only stand for literal text."""

    def __init__(self, special_texts: SpecialTexts) -> None:
        self._specials = special_texts
        self._texts: list[str] = []  # by index: the client text each placeholder stands for
        nonce = "".join(chr(0xE100 + byte) for byte in secrets.token_bytes(_NONCE_CHARS))
        self._prefix = _OPEN + nonce
        self._placeholder = re.compile(re.escape(self._prefix) + f"([{_DIGITS}]+)" + re.escape(_CLOSE))

    def protect(self, value: Any) -> Any:
        """`value` with every string in it (dict keys too) protected; lists, tuples and dicts are copied where
        something in them changed, other objects passed as they are."""
        if isinstance(value, str):
            return self._protect_text(value)
        if isinstance(value, dict):
            items = [(self.protect(key), self.protect(item)) for key, item in value.items()]
            same = all(new[0] is old[0] and new[1] is old[1] for new, old in zip(items, value.items(), strict=True))
            return value if same else dict(items)
        if isinstance(value, (list, tuple)):
            items = [self.protect(item) for item in value]
            same = all(new is old for new, old in zip(items, value, strict=True))
            return value if same else (items if isinstance(value, list) else tuple(items))
        return value

    def _protect_text(self, text: str) -> str:
        spans = self._specials.spans(text)
        if not spans:
            return text
        pieces, pos = [], 0
        for start, end in spans:
            self._texts.append(text[start:end])
            index = str(len(self._texts) - 1).translate(_TO_DIGITS)
            pieces += [text[pos:start], self._prefix, index, _CLOSE]
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    def split(self, rendered: str) -> list[tuple[str, bool]]:
        """The rendered text as parts: the template's text (special tokens parsed) between the client texts
        the placeholders stand for (literal)."""
        pieces = self._placeholder.split(rendered)
        parts = [(pieces[0], True)] if pieces[0] else []
        for digits, text in zip(pieces[1::2], pieces[2::2], strict=True):
            index = int(digits.translate(_FROM_DIGITS))
            parts.append((self._texts[index], False) if index < len(self._texts) else ("", True))
            if text:
                parts.append((text, True))
        return [part for part in parts if part[0]]


# --- bounds: the render's budget, checked by the sandbox ------------------------------------------------------

_MAX_INT_BITS = 4096
_MADE_PER_CHAR = 64  # the values a render makes, in all: this many times max_chars characters or items
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


@dataclass
class _Budget:
    """What one render may spend: output characters, time, and the sizes of the values it makes."""

    max_chars: int
    timeout_s: float
    deadline: float = math.inf  # time.monotonic()
    made: int = 0  # characters and items of the values made so far

    @classmethod
    def start(cls, max_chars: int, timeout_s: float) -> _Budget:
        return cls(max_chars, timeout_s, time.monotonic() + timeout_s)

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(f"the model's chat template ran over its time limit of {self.timeout_s:g} s")

    def check(self, size: int, what: str) -> None:
        """Refuse to make `what` of `size` characters or items."""
        if size > self.max_chars:
            raise ChatTemplateError(f"the model's chat template made {what} of {size:,} characters or items, "
                                    f"over the limit of {self.max_chars:,}")

    def made_value(self, value: Any) -> Any:
        """`value`, just made by the template, within the budget."""
        if isinstance(value, _SIZED):
            self.check(len(value), "a value")
            self.made += len(value)
            if self.made > _MADE_PER_CHAR * self.max_chars:
                raise ChatTemplateError("the model's chat template made values of over "
                                        f"{_MADE_PER_CHAR * self.max_chars:,} characters or items in all")
        elif isinstance(value, int):
            _check_bits(value.bit_length())
        return value

    def collect(self, chunks: Iterator[str]) -> str:
        """The output, `chunks` joined, up to max_chars characters."""
        out, n = [], 0
        for chunk in chunks:
            n += len(chunk)
            if n > self.max_chars:
                raise ChatTemplateError(f"the model's chat template wrote over {self.max_chars:,} characters, "
                                        "its limit for this prompt")
            self.tick()
            out.append(chunk)
        return "".join(out)


# The budget of the render running in this thread (the server renders in a thread pool); outside a render
# (constant folding while compiling) a fresh default one.
_BUDGET: ContextVar[_Budget | None] = ContextVar("llamapyz_chat_budget", default=None)


def _budget() -> _Budget:
    return _BUDGET.get() or _Budget(DEFAULT_MAX_CHARS, math.inf)


def _check_bits(bits: int) -> None:
    if bits > _MAX_INT_BITS:
        raise ChatTemplateError(f"the model's chat template made an integer of over {_MAX_INT_BITS:,} bits")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template sandbox, with every operation that could run long or grow large checked
    against the render's budget (module docstring)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        del self.globals["lipsum"]  # lorem ipsum as long as its arguments ask: no chat template uses it
        self.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        self.filters.update(tojson=_tojson, join=_join)
        self.filters = {name: _bounded_filter(name, f, _FILTER_SIZES.get(name)) for name, f in self.filters.items()}
        self.llamapyz_loop = _Counted  # reached as EnvironmentAttribute nodes: a template cannot rebind them
        self.llamapyz_concat = _concat

    def instrument(self, tree: nodes.Template) -> nodes.Template:
        """The parsed template with every loop's iterable counted and every ~ measured."""
        tree = _Instrument().visit(tree)
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        _BINOP_CHECKS[operator](budget, left, right)
        return budget.made_value(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level: its items count too
            args = (_Counted(args[0]), *args[1:])
        if isinstance(obj, BuiltinMethodType) and isinstance(obj.__self__, (str, bytes)):
            named = {key: value for key, value in kwargs.items() if key not in _JINJA_KWARGS}
            args = _check_text_method(budget, obj, args, named)
        return budget.made_value(super().call(context, obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Any:
        """str.format and format_map, their widths measured first."""
        format = super().wrap_str_format(value)
        if format is None:
            return None
        text = value.__self__

        @functools.wraps(format)
        def measured(*args: Any, **kwargs: Any) -> str:
            _budget().check(len(text) + _format_widths(text), "a format() text")
            return format(*args, **kwargs)

        return measured


_JINJA_KWARGS = ("_loop_vars", "_block_vars")  # what Jinja's generated code passes to Context.call besides


class _Instrument(NodeTransformer):
    """Rewrites a parsed template: each loop iterates `_Counted(iterable)`, each `a ~ b` is `_concat(a, b)`."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _environment_call("llamapyz_loop", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return _environment_call("llamapyz_concat", node.nodes, node.lineno)


def _environment_call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), list(args), [], None, None, lineno=lineno)


class _Counted:
    """A loop's iterable, the render's clock read at every item (a loop that writes nothing is otherwise
    never checked). Its length is the iterable's, where it has one (`loop.length`)."""

    def __init__(self, iterable: Any) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        budget = _budget()
        for item in self._iterable:
            budget.tick()
            yield item

    def __len__(self) -> int:
        return len(self._iterable)


def _concat(*values: Any) -> str:
    """`a ~ b ~ …`, measured before it is made."""
    texts = [str(value) for value in values]
    _budget().check(sum(map(len, texts)), "a ~ concatenation")
    return "".join(texts)


# --- sizes of results, computed before the operations that could make them far larger than their operands ---

def _check_product(budget: _Budget, left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(count, int) and isinstance(sequence, _SIZED):
            budget.check(len(sequence) * max(count, 0), "a repetition")
            return
    if isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length())


def _check_power(budget: _Budget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _check_bits(base.bit_length() * exponent)


def _check_sum(budget: _Budget, left: Any, right: Any) -> None:
    if isinstance(left, _SIZED) and isinstance(right, _SIZED):
        budget.check(len(left) + len(right), "a sum")


def _check_percent(budget: _Budget, left: Any, right: Any) -> None:
    if isinstance(left, str):
        budget.check(len(left) + _percent_widths(left), "a %-formatted text")


_BINOP_CHECKS = {"*": _check_product, "**": _check_power, "+": _check_sum, "%": _check_percent}
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_widths(text: str) -> int:
    """The sum of the widths and precisions in a %-format: at most that many characters beyond its own."""
    total = 0
    for width, precision in _PERCENT_SPEC.findall(text):
        if "*" in (width, precision):
            raise ChatTemplateError("the model's chat template used a '*' width in a %-format (not allowed)")
        total += int(width or 0) + int(precision or 0)
    return total


def _format_widths(text: str) -> int:
    """The sum of the numbers in a str.format text's format specs (widths, precisions)."""
    total = 0
    for _, _, spec, _ in Formatter().parse(text):
        if spec and "{" in spec:
            raise ChatTemplateError("the model's chat template used a nested width in format() (not allowed)")
        total += sum(map(int, re.findall(r"\d+", spec or "")))
    return total


def _replaced(text: str | bytes, old: Any, new: Any, count: int = -1) -> int:
    n = text.count(old) if count < 0 else min(count, text.count(old))
    return len(text) + n * max(len(new) - len(old), 0)


def _padded(text: str | bytes, width: int, *_: Any) -> int:
    return max(len(text), width)


def _tabs_expanded(text: str | bytes, tabsize: int = 8) -> int:
    return len(text) + text.count("\t" if isinstance(text, str) else b"\t") * max(tabsize, 0)


def _translated(text: str | bytes, table: Any, *_: Any) -> int:
    values = table.values() if isinstance(table, Mapping) else ()
    return len(text) * max([1, *(len(v) for v in values if isinstance(v, (str, bytes)))])


_TEXT_METHOD_SIZES = {"replace": _replaced, "center": _padded, "ljust": _padded, "rjust": _padded,
                      "zfill": _padded, "expandtabs": _tabs_expanded, "translate": _translated}


def _check_text_method(budget: _Budget, method: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Measure a str (or bytes) method's result before it runs; the arguments to call it with (join's
    iterable made a list, to be measured)."""
    text, name = method.__self__, method.__name__
    if name == "join" and len(args) == 1:
        items = list(args[0])
        size = sum(len(x) for x in items if isinstance(x, (str, bytes))) + len(text) * max(len(items) - 1, 0)
        budget.check(size, "a joined text")
        return (items,)
    size_of = _TEXT_METHOD_SIZES.get(name)
    if size_of is not None:
        budget.check(size_of(text, *args, **kwargs), f"the result of {name}()")
    return args


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    """Jinja's join filter, its result measured before it is made."""
    items = list(value)
    shown = items if attribute is None else list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    _budget().check(sum(len(str(x)) for x in shown) + len(str(d)) * max(len(items) - 1, 0), "a joined text")
    return sync_do_join(eval_ctx, items, d, attribute)


def _indented(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> int:
    text = str(s)
    return len(text) + (text.count("\n") + 1) * (width if isinstance(width, int) else len(str(width)))


def _wrapped(environment: Any, s: Any, width: int = 79, break_long_words: bool = True,
             wrapstring: str | None = None, break_on_hyphens: bool = True) -> int:
    text = str(s)  # no more lines than words and newlines, plus the pieces long words are broken into
    lines = text.count(" ") + text.count("\n") + 1 + len(text) // max(width, 1)
    return len(text) + lines * len(wrapstring if wrapstring is not None else environment.newline_sequence)


def _summed(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    if not isinstance(start, (int, float)):  # summing lists copies each partial sum: time grows as n squared
        raise ChatTemplateError("the model's chat template summed values that are not numbers (not allowed)")
    return 0


# The filters whose result could be far larger than their arguments: its size, from the same arguments.
_FILTER_SIZES = {
    "center": lambda value, width=80: max(len(str(value)), width),
    "format": lambda value, *args, **kwargs: len(str(value)) + _percent_widths(str(value)),
    "replace": lambda eval_ctx, s, old, new, count=None: _replaced(str(s), str(old), str(new),
                                                                   -1 if count is None else count),
    "indent": _indented,
    "wordwrap": _wrapped,
    "batch": lambda value, linecount, fill_with=None: linecount,
    "slice": lambda value, slices, fill_with=None: slices,
    "sum": _summed,
}


def _bounded_filter(name: str, function: Any, size_of: Any) -> Any:
    """A filter that reads the clock, measures its result first if `size_of` says how, and counts it."""

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_eval_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if size_of is not None:
            budget.check(size_of(*args, **kwargs), f"the result of the {name} filter")
        return budget.made_value(function(*args, **kwargs))

    return bounded
