"""The sandbox chat templates render in. Templates come from untrusted files (a GGUF's
`tokenizer.chat_template`, --chat-template), so they run in Jinja2's immutable sandbox (no attribute tricks, no
mutation, no imports), each render under a budget.

The environment is the one Hugging Face transformers renders chat templates in (`_compile_jinja_template`
in transformers' chat_template_utils), so a model's template means here what it means there: trim_blocks
and lstrip_blocks, the loop-controls extension (`{% break %}`, `{% continue %}`), the globals
`raise_exception(message)` and `strftime_now(format)` (the local time, e.g. Llama 3.2's "Today Date"), and a
`tojson` filter that is `json.dumps` with ensure_ascii=False (Jinja's own escapes <, >, & and ' for HTML).

Bounds. Each render runs under a budget (`Budget`): at most `max_chars` characters of output
(`max_chars_for(n_ctx)` for a prompt, see there) and `timeout_s` seconds (`DEFAULT_TIMEOUT_S`). The output is
streamed (`Template.generate`) and measured chunk by chunk. The clock is read at every chunk, every loop item
(the parsed template is rewritten so that each `{% for %}` counts its items; a recursive loop's inner levels
too), every call, attribute and item lookup, so loops that write nothing cannot spin unchecked either. Values
the template makes (results of calls, filters, `+ * ** %` and `~`) may hold max_chars characters or items
each (integers 4,096 bits), and 64 x max_chars in all; the operations that can make something far larger than
their operands (repetition, powers, %- and format() widths, replace, join, expandtabs, translate, center and
its kin, indent, wordwrap, batch, slice, sum, tojson's indent) are measured before they run. Whatever a render
fails with (a Jinja error, a SecurityError, RecursionError, MemoryError, OverflowError, …) becomes a
ChatTemplateError. Not bounded: a single builtin operation within those sizes runs to its end (sorting 100,000
items, say), and compiling a template takes as long as its source makes it.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from string import Formatter
from types import BuiltinMethodType
from typing import Any

from jinja2 import Template, nodes
from jinja2.filters import make_attrgetter, pass_eval_context, sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from ..errors import LlamapyzError


class ChatTemplateError(LlamapyzError):
    """The model has no chat template, or its template failed on these messages (or ran over its bounds)."""


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


def compile_template(source: str) -> Template:
    """`source` compiled in a fresh `BoundedEnvironment`, its loops counted and its `~` measured."""
    env = BoundedEnvironment()
    try:
        return env.from_string(env.instrument(env.parse(source)))
    except Exception as exc:  # a template is untrusted input: whatever compiling it raises, it does not parse
        raise ChatTemplateError(f"the model's chat template does not parse: {_describe(exc)}") from None


def render_template(template: Template, variables: dict[str, Any], budget: Budget) -> str:
    """`template` (from `compile_template`) rendered with `variables` within `budget`; whatever it fails
    with, a ChatTemplateError."""
    token = _BUDGET.set(budget)
    chunks = template.generate(variables)
    try:
        return budget.collect(chunks)
    except ChatTemplateError:
        raise
    except Exception as exc:  # untrusted code: whatever it fails with is the template's failure
        raise ChatTemplateError(f"the model's chat template failed: {_describe(exc)}") from None
    finally:
        chunks.close()
        _BUDGET.reset(token)


def _describe(exc: BaseException) -> str:
    """An exception as one line, its type first (a MemoryError has no message of its own)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# transformers' extras (module docstring): the globals raise_exception and strftime_now, the tojson filter.

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


# --- bounds: the render's budget, checked by the sandbox ------------------------------------------------------

_MAX_INT_BITS = 4096
_MADE_PER_CHAR = 64  # the values a render makes, in all: this many times max_chars characters or items
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


@dataclass
class Budget:
    """What one render may spend: output characters, time, and the sizes of the values it makes."""

    max_chars: int
    timeout_s: float
    deadline: float = math.inf  # time.monotonic()
    made: int = 0  # characters and items of the values made so far

    @classmethod
    def start(cls, max_chars: int, timeout_s: float) -> Budget:
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
_BUDGET: ContextVar[Budget | None] = ContextVar("llamapyz_chat_budget", default=None)


def _budget() -> Budget:
    return _BUDGET.get() or Budget(DEFAULT_MAX_CHARS, math.inf)


def _check_bits(bits: int) -> None:
    if bits > _MAX_INT_BITS:
        raise ChatTemplateError(f"the model's chat template made an integer of over {_MAX_INT_BITS:,} bits")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
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

def _check_product(budget: Budget, left: Any, right: Any) -> None:
    for sequence, count in ((left, right), (right, left)):
        if isinstance(count, int) and isinstance(sequence, _SIZED):
            budget.check(len(sequence) * max(count, 0), "a repetition")
            return
    if isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length())


def _check_power(budget: Budget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        _check_bits(base.bit_length() * exponent)


def _check_sum(budget: Budget, left: Any, right: Any) -> None:
    if isinstance(left, _SIZED) and isinstance(right, _SIZED):
        budget.check(len(left) + len(right), "a sum")


def _check_percent(budget: Budget, left: Any, right: Any) -> None:
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


def _check_text_method(budget: Budget, method: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
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
