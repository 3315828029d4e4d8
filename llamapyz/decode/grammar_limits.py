"""What a request's grammar may cost, and where llguidance's work on it runs: the guarantee that no grammar,
JSON schema or tool list a request sends can crash the process, stall it, or hold up other requests.

Three ways a grammar could hurt, and what bounds each:

- **Stack.** llguidance compiles a chain of rules or `$ref`s by recursion, about 3 KiB of stack per JSON
  object or Lark rule on the chain (measured on 8 MiB threads: a plain `$ref` chain crashes at ~2,500 links,
  3.4 KiB each; a Lark rule chain at ~2,700, 3.1 KiB each; links of two nested objects and a `$ref`, five
  JSON objects, at ~575 links, 14.6 KiB each). Nesting within one rule or document it bounds itself
  (serde_json's depth limit of 128, Lark's and the regex parser's own nesting limits). Before llguidance
  sees the input, chains longer than any real grammar are refused (`check_schema`: MAX_REF_DEPTH `$ref`s
  one inside another; `check_grammar`: MAX_GRAMMAR_RULES rules), and so is size: a recursion is at most
  as deep as the input has rules or JSON objects (MAX_SCHEMA_OBJECTS; MAX_GRAMMAR_BYTES, a rule or an
  embedded schema's link taking several bytes). All of llguidance's work runs on `WORKERS`' threads,
  whose stack (STACK_BYTES) holds that size at 16 KiB a level, several times the worst cost measured:
  that is the guarantee, whatever order llguidance compiles in.
- **Time.** Compiling runs on those threads with a time limit (COMPILE_TIMEOUT_S): past it the request is
  refused and the thread left to finish alone. GBNF grammars are converted to Lark by llguidance's Python
  converter, quadratic in the rules of a chain (1,000 rules: 0.26 s; 10,000: 193 s): MAX_GRAMMAR_RULES.
- **Each token's mask.** The set of tokens that may come next is computed on those threads too, while the
  engine runs the forward pass (`constraint.Constraint.prepare`), so a costly one never holds up the
  engine's turn for the other requests: the engine goes on without that request, and ends it once its mask
  has taken longer than MASK_BUDGET_S (`Constraint.overdue`). The first mask is computed when the grammar is
  compiled, before the request reaches the engine: a grammar whose first mask is over budget (a regex like
  `(a{1000}){1000}`: ~0.9 s a token) is refused with the request, after MASK_BUDGET_S.

Every refusal is a `GrammarError` (a 400) with a short message (ERROR_CHARS: llguidance's own quote the
grammar); `WorkersBusy` (a 503) when every worker is taken by work that has not ended.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from llguidance.gbnf_to_lark import is_lark_syntax

from ..errors import LlamapyzError

T = TypeVar("T")

MAX_SCHEMA_OBJECTS = 10_000  # JSON objects (sub-schemas) in one request's schema or tools, all together
MAX_SCHEMA_VALUES = 200_000  # JSON values of any kind in them (enums, consts: llguidance's grammar size)
MAX_REF_DEPTH = 128  # $refs one inside another (serde_json's nesting limit, which llguidance applies within a document)
MAX_GRAMMAR_BYTES = 64 << 10  # a Lark or GBNF grammar's text (UTF-8)
MAX_GRAMMAR_RULES = 1_000  # rules of a Lark or GBNF grammar (GBNF's conversion to Lark is quadratic in them)
COMPILE_TIMEOUT_S = 10.0  # compiling one grammar, its first mask included
MASK_BUDGET_S = 0.1  # one token's mask (llguidance: ~0.05 ms for 49k tokens, ~0.15 ms for 262k)
STACK_BYTES = 256 << 20  # each worker thread's stack: address space, committed only as far as it is used
MAX_WORKERS = 8  # threads for compiling and masks: requests computing a mask at once, and stuck ones
ERROR_CHARS = 300  # llguidance's messages quote the grammar: a 400's message keeps this much of one


class GrammarError(LlamapyzError, ValueError):
    """A grammar or JSON schema that cannot be used: it does not compile, is over a limit here, or costs too
    much (the request's fault: a 400). The message is capped at ERROR_CHARS."""

    def __init__(self, message: str) -> None:
        super().__init__(shorten(message))


class WorkersBusy(LlamapyzError):
    """Every grammar worker is busy (a 503: try again)."""


def shorten(message: str, limit: int = ERROR_CHARS) -> str:
    """`message`, at most `limit` characters: a long one ends in how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}… ({len(message) - limit} more characters)"


# --- budgets, checked before llguidance sees the input ------------------------------------------------------

def check_schema(schema: Any, what: str = "the JSON schema") -> None:
    """Raise GrammarError if `schema` (parsed JSON) is over a limit: `check_size`, and a chain of `$ref`s
    deeper than MAX_REF_DEPTH."""
    check_size(schema, what)
    if ref_depth(schema) > MAX_REF_DEPTH:
        raise GrammarError(f"{what} chains more than {MAX_REF_DEPTH} $refs one inside another")


def check_size(value: Any, what: str) -> None:
    """Raise GrammarError if `value` (parsed JSON: a schema, or a list of them) holds more than
    MAX_SCHEMA_OBJECTS objects or MAX_SCHEMA_VALUES values. Walks without recursion, and stops as soon as a
    limit is passed."""
    n_objects = n_values = 0
    todo = [value]
    while todo:
        value = todo.pop()
        n_values += 1
        if isinstance(value, dict):
            n_objects += 1
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        if n_objects > MAX_SCHEMA_OBJECTS or n_values > MAX_SCHEMA_VALUES:
            raise GrammarError(f"{what} is too large: more than {MAX_SCHEMA_OBJECTS} objects or {MAX_SCHEMA_VALUES} "
                               "values (each a rule for the grammar engine)")


def ref_depth(schema: Any) -> int:
    """The most `$ref`s met one after another going into `schema` (a reference back to a schema already on the
    way, recursion, ends a chain: the grammar engine compiles each schema once). Local references only
    ("#", "#/$defs/name", any JSON pointer); others are the engine's to refuse. Without recursion."""
    if not isinstance(schema, dict):
        return 0
    depth: dict[int, int] = {}  # id of a schema object -> its depth, once known
    on_path = {id(schema)}
    frames = [_Frame(schema, _edges(schema, schema), 0)]
    while frames:
        frame = frames[-1]
        if frame.edges:
            child, weight = frame.edges.pop()
            if id(child) in depth:
                frame.deepest = max(frame.deepest, depth[id(child)] + weight)
            elif id(child) not in on_path:
                on_path.add(id(child))
                frames.append(_Frame(child, _edges(child, schema), weight))
            continue
        frames.pop()
        on_path.discard(id(frame.node))
        depth[id(frame.node)] = frame.deepest
        if frames:
            frames[-1].deepest = max(frames[-1].deepest, frame.deepest + frame.weight)
    return depth[id(schema)]


@dataclass
class _Frame:
    """A schema object on `ref_depth`'s path: the edges left to follow, the weight of the one that led here."""

    node: dict
    edges: list[tuple[dict, int]]
    weight: int
    deepest: int = 0


def _edges(node: dict, root: Any) -> list[tuple[dict, int]]:
    """The schema objects `node` holds (weight 0) and the one its `$ref` names (weight 1)."""
    edges, todo = [], list(node.values())
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            edges.append((value, 0))
        elif isinstance(value, list):
            todo.extend(value)
    target = resolve_ref(root, node.get("$ref"))
    if target is not None:
        edges.append((target, 1))
    return edges


def resolve_ref(root: Any, ref: Any) -> dict | None:
    """The schema object a local `$ref` ("#", "#/$defs/a", "#/properties/x/items") names in `root`, or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    value = root
    for part in ref[1:].split("/")[1:] if ref[1:] else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value if isinstance(value, dict) else None


def check_grammar(text: str) -> None:
    """Raise GrammarError if a Lark or GBNF grammar is over MAX_GRAMMAR_BYTES or MAX_GRAMMAR_RULES rules (a
    rule or terminal definition: a line's `name:` in Lark, each `::=` in GBNF)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the grammar is too large: {size} bytes, more than {MAX_GRAMMAR_BYTES}")
    rules = len(LARK_RULE.findall(text)) if is_lark_syntax(text) else text.count("::=")
    if rules > MAX_GRAMMAR_RULES:
        raise GrammarError(f"the grammar has {rules} rules, more than {MAX_GRAMMAR_RULES}")


LARK_RULE = re.compile(r"^[ \t]*[?!]?[A-Za-z_]\w*(?:\.-?\d+)?[ \t]*:", re.MULTILINE)  # "name:", "?name.2:", "NAME:"


# --- where llguidance's work runs ---------------------------------------------------------------------------

class Workers:
    """Threads with a STACK_BYTES stack for llguidance's work (it releases the GIL while it works, so they run
    beside the engine). A thread is made when work arrives and none is idle, up to MAX_WORKERS; work that never
    ends keeps its thread, and the others go on."""

    def __init__(self, max_workers: int = MAX_WORKERS, stack_bytes: int = STACK_BYTES) -> None:
        self.stack_bytes = stack_bytes
        self.pool = ThreadPoolExecutor(max_workers, thread_name_prefix="llamapyz-grammar")
        self.lock = threading.Lock()

    def submit(self, work: Callable[..., T], *args: Any) -> Timed[T]:
        """Start `work(*args)` on a worker; its result (and how long it ran) comes in the returned Timed."""
        timed: Timed[T] = Timed()
        # the stack size is a process-wide setting read when a thread starts, and submit starts the pool's
        # threads: set it around the call (a thread another module starts meanwhile gets a big stack too,
        # which costs it nothing but address space)
        with self.lock:
            previous = threading.stack_size(self.stack_bytes)
            try:
                timed.future = self.pool.submit(timed.run, work, *args)
            finally:
                threading.stack_size(previous)
        return timed

    def run(self, work: Callable[..., T], *args: Any, timeout_s: float = COMPILE_TIMEOUT_S,
            what: str = "compiling the grammar") -> T:
        """`work(*args)` on a worker, waiting for it up to `timeout_s`: past that a GrammarError if it was
        running (the work's own cost), WorkersBusy if it never started."""
        timed = self.submit(work, *args)
        try:
            return timed.future.result(timeout=timeout_s)
        except FutureTimeout:
            if timed.future.cancel():
                raise WorkersBusy("the server is busy with other requests' grammars; try again later") from None
            raise GrammarError(f"{what} took longer than {timeout_s:g} s") from None


class Timed(Generic[T]):
    """Work given to a worker: its future, and when it was given, started and ended (`perf_counter` seconds;
    0 until then)."""

    def __init__(self) -> None:
        self.future: Future[T] = Future()
        self.submitted = time.perf_counter()
        self.started = 0.0
        self.ended = 0.0

    def run(self, work: Callable[..., T], *args: Any) -> T:
        self.started = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.ended = time.perf_counter()

    def ran_s(self, now: float | None = None) -> float:
        """How long the work has run (so far, if it has not ended)."""
        if not self.started:
            return 0.0
        return (self.ended or (now if now is not None else time.perf_counter())) - self.started


WORKERS = Workers()
