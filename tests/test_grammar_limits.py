"""`llamapyz/decode/grammar_limits.py`: what a grammar may cost. Inputs past a budget are refused before llguidance
sees them, in milliseconds; the chains that crashed the process compile (or are refused) without a crash;
compiling has a time limit and a costly mask is refused or ends its request; and the engine goes on with
the other requests while a mask is computed (tests/test_grammar_fuzz.py takes the same inputs through a
live server)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llamapyz.decode import grammar_limits as limits
from llamapyz.decode.constraint import Constraint, Grammar
from llamapyz.decode.grammar_limits import GrammarError, Workers, WorkersBusy, check_grammar, check_schema, ref_depth
from llamapyz.gguf.reader import load_gguf
from llamapyz.tokenizer import Tokenizer
from tests.live_server import ServerThread

REPO = Path(__file__).resolve().parents[1]


def ref_chain(n: int) -> dict:
    """`$ref`s n deep: d0 -> d1 -> ... -> dn, a string."""
    defs: dict = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def nested_ref_chain(n: int) -> dict:
    """n links of two nested objects each, the inner one's property a `$ref` to the next link."""
    defs: dict = {f"d{i}": {"type": "object", "required": ["a"], "properties": {"a": {
        "type": "object", "required": ["b"], "properties": {"b": {"$ref": f"#/$defs/d{i + 1}"}}}}} for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def lark_chain(n: int) -> str:
    return "start: r0\n" + "".join(f'r{i}: r{i + 1} "a"\n' for i in range(n)) + f'r{n}: "b"\n'


def gbnf_chain(n: int) -> str:
    return "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "a"\n' for i in range(n)) + f'r{n} ::= "b"\n'


@pytest.fixture(scope="module")
def tokenizer(tiny_llama) -> Tokenizer:
    return Tokenizer.from_gguf(load_gguf(tiny_llama))


# --- budgets -------------------------------------------------------------------------------------------------

def test_ref_depth_counts_chains_and_stops_at_recursion():
    assert ref_depth(ref_chain(5)) == 6  # the root's $ref, then five more
    assert ref_depth({"type": "object", "properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "string"}}}) == 1
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}
    assert ref_depth(tree) == 1  # recursion: the engine compiles each schema once
    assert ref_depth({"$ref": "#"}) == 0
    assert ref_depth({"$ref": "https://example.com/remote"}) == 0  # not ours to follow
    assert ref_depth(True) == 0


def test_schemas_past_a_budget_are_refused_at_once():
    check_schema(ref_chain(limits.MAX_REF_DEPTH - 1))
    started = time.perf_counter()
    with pytest.raises(GrammarError, match="chains more than 128 \\$refs"):
        check_schema(ref_chain(limits.MAX_REF_DEPTH))
    with pytest.raises(GrammarError, match="chains more than"):
        check_schema(nested_ref_chain(1000))
    many = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(limits.MAX_SCHEMA_OBJECTS)}}
    with pytest.raises(GrammarError, match="too large"):
        check_schema(many)
    with pytest.raises(GrammarError, match="too large"):
        check_schema({"enum": list(range(limits.MAX_SCHEMA_VALUES))})
    assert time.perf_counter() - started < 2


def test_grammars_past_a_budget_are_refused_at_once():
    check_grammar(lark_chain(limits.MAX_GRAMMAR_RULES - 2))  # start + the chain
    check_grammar(gbnf_chain(limits.MAX_GRAMMAR_RULES - 2))
    started = time.perf_counter()
    with pytest.raises(GrammarError, match="rules, more than 1000"):
        check_grammar(lark_chain(limits.MAX_GRAMMAR_RULES))
    with pytest.raises(GrammarError, match="rules, more than 1000"):
        check_grammar(gbnf_chain(limits.MAX_GRAMMAR_RULES))
    with pytest.raises(GrammarError, match="too large"):
        check_grammar(gbnf_chain(10_000))  # the converter's quadratic case: 193 s before
    with pytest.raises(GrammarError, match="too large"):
        check_grammar('start: "' + "x" * limits.MAX_GRAMMAR_BYTES + '"')
    assert time.perf_counter() - started < 1


def test_errors_are_short_whatever_llguidance_says(tokenizer):
    huge = "start: " + " ".join(f'"{i}"' for i in range(5000)) + " undefined_rule\n"  # one line, ~30 KB
    with pytest.raises(GrammarError) as caught:
        Grammar.lark(huge).constraint(tokenizer)
    assert len(str(caught.value)) < limits.ERROR_CHARS + 60
    assert "more characters" in str(caught.value)


# --- the stack ------------------------------------------------------------------------------------------------

def deep_within_limits() -> dict:
    """127 `$ref` links of 38 nested objects each: within every limit (128 $refs deep, 9,700 objects), and
    ~4,800 levels of llguidance's recursion, 16-32 MiB of stack (measured)."""
    defs: dict = {}
    for i in range(127):
        inner: dict = {"$ref": f"#/$defs/d{i + 1}"}
        for _ in range(38):
            inner = {"type": "object", "properties": {"a": inner}, "required": ["a"]}
        defs[f"d{i}"] = inner
    defs["d127"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


# Run in a child process, on a thread with an 8 MiB stack (Linux's default, what the server's thread pool
# had): `llguidance` straight, as before, or our `Grammar`.
ON_A_THREAD = """
import json, sys, threading
from llamapyz.decode.constraint import Grammar, JSON_FORMAT, llg_tokenizer
from llamapyz.gguf.reader import load_gguf
from llamapyz.decode.grammar_limits import GrammarError
from llamapyz.tokenizer import Tokenizer
from tests.test_grammar_limits import deep_within_limits, lark_chain, ref_chain

tokenizer = Tokenizer.from_gguf(load_gguf(sys.argv[1]))

def before():
    import llguidance
    definition = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(deep_within_limits()), defaults=JSON_FORMAT)
    llguidance.LLMatcher(llg_tokenizer(tokenizer), definition, log_level=0)
    print("compiled", flush=True)

def now():
    for name, make in {"deep within the limits": lambda: Grammar.json_schema(deep_within_limits()),
                       "ref chain 3000": lambda: Grammar.json_schema(ref_chain(3000)),
                       "lark chain 4000": lambda: Grammar.lark(lark_chain(4000))}.items():
        try:
            make().constraint(tokenizer)
            print(f"{name}: compiled", flush=True)
        except GrammarError as exc:
            print(f"{name}: refused: {exc}", flush=True)

threading.stack_size(8 << 20)
thread = threading.Thread(target=before if sys.argv[2] == "before" else now)
thread.start()
thread.join()
"""


def on_a_thread(model: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ON_A_THREAD, str(model), how], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_an_input_within_the_limits_that_crashes_a_thread_compiles_on_the_workers(tiny_llama):
    crashed = on_a_thread(tiny_llama, "before")
    assert crashed.returncode == -11, "the case no longer crashes llguidance on 8 MiB: " + crashed.stdout
    done = on_a_thread(tiny_llama, "now")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    results = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert results["deep within the limits"] == "compiled"
    assert results["ref chain 3000"].startswith("refused: the JSON schema chains more than 128")  # the probe's
    assert results["lark chain 4000"].startswith("refused: the grammar is too large")


def thread_stack_bytes() -> int:
    """The calling thread's stack size, from glibc (pthread_getattr_np)."""
    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_ulong
    attr = ctypes.create_string_buffer(128)  # a pthread_attr_t: 56 bytes on x86-64 and aarch64
    assert libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr) == 0
    size = ctypes.c_size_t()
    libc.pthread_attr_getstacksize(attr, ctypes.byref(size))
    libc.pthread_attr_destroy(attr)
    return size.value


def test_workers_have_the_stack_they_promise():
    assert limits.WORKERS.run(thread_stack_bytes) >= limits.STACK_BYTES
    assert threading.stack_size() == 0  # the process' setting for new threads is back to the default
    assert thread_stack_bytes() < limits.STACK_BYTES


# --- time -----------------------------------------------------------------------------------------------------

def test_compiling_has_a_time_limit_and_busy_workers_are_a_503():
    workers = Workers(max_workers=1)
    release = threading.Event()
    started = time.perf_counter()
    with pytest.raises(GrammarError, match="took longer than 0.2 s"):
        workers.run(release.wait, timeout_s=0.2)  # the only worker is stuck from now on
    with pytest.raises(WorkersBusy):
        workers.run(lambda: None, timeout_s=0.2)  # never started
    assert time.perf_counter() - started < 2
    release.set()
    assert workers.run(lambda: 42) == 42


def test_a_grammar_whose_first_mask_is_costly_is_refused_within_the_budget(tokenizer):
    grammar = Grammar.json_schema({"type": "string", "pattern": "^(a{1000}){1000}$"})  # ~0.9 s a mask here
    started = time.perf_counter()
    with pytest.raises(GrammarError, match="too costly"):
        grammar.constraint(tokenizer)
    assert time.perf_counter() - started < limits.MASK_BUDGET_S + 0.5


# --- the engine goes on while a mask is computed ------------------------------------------------------------

SLOW_MASK_S = 1.5


def test_a_slow_mask_ends_its_request_and_holds_up_no_other(tiny_llama, monkeypatch):
    """A constrained request whose third mask takes SLOW_MASK_S (injected into the real constraint) ends with
    a "too costly" error soon after MASK_BUDGET_S, while a neighbour's stream goes on without a pause and
    streams what it streams alone."""
    neighbour = {"messages": [{"role": "user", "content": "tell me a story"}], "temperature": 0, "max_tokens": 60,
                 "stream": True}
    constrained = {"messages": [{"role": "user", "content": "list"}], "temperature": 0, "max_tokens": 30,
                   "stream": True, "grammar": 'start: "[" ("x" | "y")* "]"'}
    with ServerThread(tiny_llama, n_ctx=256, n_slots=2) as live:
        alone, _, _ = stream(live.url, neighbour)
        compute, calls = Constraint._compute, []

        def slow_third(self: Constraint) -> None:
            calls.append(1)
            if len(calls) == 3:
                time.sleep(SLOW_MASK_S)
            compute(self)

        monkeypatch.setattr(Constraint, "_compute", slow_third)
        results: dict = {}
        thread = threading.Thread(target=lambda: results.update(neighbour=stream(live.url, neighbour)))
        thread.start()
        time.sleep(0.05)  # the neighbour is streaming
        started = time.perf_counter()
        _, _, constrained_events = stream(live.url, constrained)
        ended_s = time.perf_counter() - started
        thread.join(60)
    text, arrivals, _ = results["neighbour"]
    assert text == alone
    error = constrained_events[-1].get("error", {})
    assert "too costly" in error.get("message", ""), constrained_events[-3:]
    assert ended_s < SLOW_MASK_S  # ended before the slow mask did
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < SLOW_MASK_S / 2, max(gaps)  # before: the engine waited for the mask, every stream with it


def stream(url: str, body: dict) -> tuple[str, list[float], list[dict]]:
    """A streamed chat: its text, each event's arrival time, the events."""
    text, arrivals, events = "", [], []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(json.loads(line[6:]))
            arrivals.append(time.perf_counter())
            for choice in events[-1].get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text, arrivals, events


def test_nothing_is_compiled_on_the_engine_thread(tokenizer, monkeypatch):
    """tool_choice auto's grammar is compiled with the request (LazyConstraint's constructor, in the thread
    pool), not when the model opens a call, on the engine thread; and masks are computed on the workers."""
    from llamapyz.decode.constraint import LazyConstraint

    compiled_on, masks_on = [], []
    compile_grammar, compute = Grammar.constraint, Constraint._compute

    def recording_compile(self: Grammar, tok: Tokenizer) -> Constraint:
        compiled_on.append(threading.current_thread().name)
        return compile_grammar(self, tok)

    def recording_compute(self: Constraint) -> None:
        masks_on.append(threading.current_thread().name)
        compute(self)

    monkeypatch.setattr(Grammar, "constraint", recording_compile)
    monkeypatch.setattr(Constraint, "_compute", recording_compute)
    lazy = LazyConstraint(Grammar.lark('start: "ab"'), "<", tokenizer)
    assert compiled_on == [threading.current_thread().name]
    for token in tokenizer.encode("x<", add_special=False, parse_special=False):  # the trigger: the call starts
        lazy.advance(token)
    assert lazy.active is not None and len(compiled_on) == 1  # nothing compiled at the trigger
    lazy.prepare()
    assert lazy.active.wait() is None and lazy.ready
    assert masks_on and all(name.startswith("llamapyz-grammar") for name in masks_on)
