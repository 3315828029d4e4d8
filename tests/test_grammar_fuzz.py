"""The grammar paths of a live server on a tiny model, as an attacker would use them
(llamapyz/decode/grammar_limits.py):

- the probe's inputs (issue 27): a `$ref` chain 1,000 deep, a Lark chain of 4,000 rules, a GBNF one of
  10,000, a regex whose every mask costs ~1 s, 10,000 required properties, tools of such schemas: each a 400
  with a short message in under a second, through every field that takes a grammar;
- generated JSON schemas and Lark/GBNF grammars (hypothesis, derandomized): `$ref` chains, nested
  combinators, patterns from a list with pathological regexes, random rule graphs, chains about the limits:
  each answered 200 or 400, never a 5xx, a dropped connection or a wait past the compile time limit;

and all the while a neighbour streams exactly what it streams alone, the server writes no traceback and no
long line, and it is still up at the end. Bounded for CI on two cores: 4 tokens per reply, a few hundred cases.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llamapyz.decode import grammar_limits as limits
from tests.live_server import ServerProcess, wait_idle
from tests.test_grammar_limits import gbnf_chain, lark_chain, nested_ref_chain, ref_chain
from tests.test_schemathesis import NEIGHBOUR, Neighbour, streamed_text

pytestmark = pytest.mark.slow

N_CTX = 1024  # room for tools in the prompt (the tiny model was trained on 256: its output is noise anyway)
CAP_TOKENS = 4
EXAMPLES = 160  # generated requests, of each kind (schemas, grammars)
COSTLY_PATTERN = "^(a{1000}){1000}$"  # ~0.9 s a mask for the tiny model's 264 tokens; the probe's ^a{100000}$
# cost 0.9 s for SmolLM2's 49k tokens


def chat(schema_field: str, value: object) -> dict:
    """A chat request with `value` in one of the fields that constrain the output."""
    body: dict = {"messages": [{"role": "user", "content": "go"}], "max_tokens": CAP_TOKENS, "temperature": 0}
    if schema_field == "response_format":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": value}}
    elif schema_field == "json_object":
        body["response_format"] = {"type": "json_object", "schema": value}
    elif schema_field == "tools":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": value}}]
        body["tool_choice"] = "required"
    elif schema_field == "tools_auto":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": value}}]
    else:
        body[schema_field] = value
    return body


def wide_object(n: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)},
            "required": [f"p{i}" for i in range(n)]}


# (what, path, body, the error's param: None for a 200)
PROBE = [
    ("$ref chain 1,000 (response_format)", "/v1/chat/completions", chat("response_format", ref_chain(1000)),
     "response_format"),
    ("$ref chain 1,000 (json_schema)", "/v1/completions",
     {"prompt": "x", "max_tokens": CAP_TOKENS, "json_schema": ref_chain(1000)}, "json_schema"),
    ("nested $ref chain 1,000 (json_object)", "/v1/chat/completions", chat("json_object", nested_ref_chain(1000)),
     "response_format"),
    ("Lark chain 4,000 rules", "/v1/chat/completions", chat("grammar", lark_chain(4000)), "grammar"),
    ("Lark chain 2,000 rules", "/v1/completions", {"prompt": "x", "grammar": lark_chain(2000)}, "grammar"),
    ("GBNF chain 10,000 rules", "/v1/chat/completions", chat("grammar", gbnf_chain(10_000)), "grammar"),
    ("a costly regex", "/v1/chat/completions", chat("json_schema", {"type": "string", "pattern": COSTLY_PATTERN}),
     "json_schema"),
    ("10,000 required properties", "/v1/chat/completions", chat("response_format", wide_object(10_000)),
     "response_format"),
    ("a forced tool of a $ref chain", "/v1/chat/completions", chat("tools", ref_chain(1000)), "tools"),
    ("tools of 10,000 properties", "/v1/chat/completions", chat("tools_auto", wide_object(10_000)), "tools"),
    # compiled with the request (not on the engine thread if the model opens a call): the random model
    # never does, so its answer is text
    ("tool_choice auto, a costly regex", "/v1/chat/completions",
     chat("tools_auto", {"type": "object", "properties": {"a": {"type": "string", "pattern": COSTLY_PATTERN}}}),
     None),
]


# --- generated schemas and grammars -------------------------------------------------------------------------

PATTERNS = ["^[a-z]+$", "^(a|b)*c$", "^a{1000}$", "^(a+)+b$", "^(a|aa)*$", "^[ab]*a[ab]{12}$", "^.{0,40}$",
            "\\d{3}-\\d{4}", "^(x{100}){100}$", "(", "^[", "a{2,1}", "^\\p{L}+$", "^(?:a|b|c|d|e){0,30}$"]
LEAVES = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
                          {"type": "null"}, {"enum": ["a", "b", 1, None]}, {"const": "x"}, {},
                          {"type": "integer", "minimum": 5, "maximum": 2}, {"type": "string", "format": "date"},
                          {"type": "array"}, {"type": "object"}, {"type": "unknown"}, {"$ref": "#/$defs/missing"}])
PATTERN_LEAF = st.builds(lambda p, lo, hi: {"type": "string", "pattern": p, "minLength": lo, "maxLength": hi},
                         st.sampled_from(PATTERNS), st.integers(0, 3), st.integers(0, 50))


def _compound(children: st.SearchStrategy) -> st.SearchStrategy:
    names = st.sampled_from(["a", "b", "c", "name", "x-y", ""])
    return st.one_of(
        st.builds(lambda props, req, extra: {"type": "object", "properties": props, "required": req,
                                             "additionalProperties": extra},
                  st.dictionaries(names, children, max_size=4), st.lists(names, max_size=3), st.booleans()),
        st.builds(lambda item, lo, hi: {"type": "array", "items": item, "minItems": lo, "maxItems": hi},
                  children, st.integers(0, 3), st.integers(0, 5)),
        st.builds(lambda kind, options: {kind: options}, st.sampled_from(["anyOf", "oneOf", "allOf"]),
                  st.lists(children, min_size=1, max_size=4)),
        st.builds(lambda inner: {"not": inner}, children),
    )


SCHEMA_BODIES = st.recursive(st.one_of(LEAVES, PATTERN_LEAF), _compound, max_leaves=12)


@st.composite
def schemas(draw: st.DrawFn) -> dict:
    """A schema of generated parts, sometimes with `$defs` chained by `$ref`, some chains about MAX_REF_DEPTH
    deep, some of them recursive."""
    body = draw(SCHEMA_BODIES)
    if not isinstance(body, dict) or draw(st.booleans()):
        return body if isinstance(body, dict) else {}
    depth = draw(st.one_of(st.integers(1, 8), st.integers(limits.MAX_REF_DEPTH - 3, limits.MAX_REF_DEPTH + 3)))
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, body]} for i in range(depth)}
    defs[f"d{depth}"] = {"$ref": "#/$defs/d0"} if draw(st.booleans()) else body  # a cycle, or an end
    return {"$defs": defs, "$ref": "#/$defs/d0"}


TERMINALS = ['"a"', '"b"', '"{"', '"\\\\n"', "/[a-z]+/", "/[0-9]{1,3}/", "/(a|b)*c/", "/a{500}/", "/(x{100}){100}/",
             "%json {\"type\": \"integer\"}", "/[/", '"']


@st.composite
def grammars(draw: st.DrawFn) -> str:
    """A Lark or GBNF grammar: a random graph of rules over a few terminals (some undefined, some recursive,
    some broken), or a chain about MAX_GRAMMAR_RULES long."""
    gbnf = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        n = draw(st.integers(limits.MAX_GRAMMAR_RULES - 4, limits.MAX_GRAMMAR_RULES + 4))
        return gbnf_chain(n) if gbnf else lark_chain(n)
    n_rules = draw(st.integers(1, 12))
    names = [f"r{i}" for i in range(n_rules)] + ["undefined"]
    atom = st.one_of(st.sampled_from(TERMINALS if not gbnf else [t for t in TERMINALS if t[0] in '"/']),
                     st.sampled_from(names))
    rules = []
    for i in range(n_rules):
        alternatives = draw(st.lists(st.lists(atom, min_size=1, max_size=4), min_size=1, max_size=3))
        suffix = draw(st.sampled_from(["", "*", "+", "?"]))
        body = " | ".join(" ".join(seq) for seq in alternatives)
        rules.append(f"r{i} ::= ({body}){suffix}" if gbnf else f"r{i}: ({body}){suffix}")
    start = "root ::= r0" if gbnf else "start: r0"
    return "\n".join([start, *rules]) + "\n"


# --- the test -----------------------------------------------------------------------------------------------

def send(url: str, path: str, body: dict) -> tuple[int, dict, float]:
    started = time.perf_counter()
    response = httpx.post(url + path, json=body, timeout=limits.COMPILE_TIMEOUT_S + 60)
    return response.status_code, response.json(), time.perf_counter() - started


def test_the_probe_and_generated_grammars_get_answers_and_harm_no_one(tiny_models: Callable[..., Path]) -> None:
    with ServerProcess(tiny_models("llama"), "-np", "2", "-c", str(N_CTX), "-t", "1", "-n", str(CAP_TOKENS)) as server:
        alone = streamed_text(server.url, NEIGHBOUR)
        neighbour = Neighbour(server.url)
        neighbour.start()
        assert neighbour.streaming.wait(60), neighbour.errors
        failures: list[str] = []
        statuses: Counter = Counter()
        slowest_s = 0.0
        try:
            for what, path, body, param in PROBE:
                status, answer, elapsed_s = send(server.url, path, body)
                error = answer.get("error") or {}
                if status != (200 if param is None else 400) or error.get("param") != param or elapsed_s >= 1.0 \
                        or len(error.get("message", "")) > limits.ERROR_CHARS + 60:
                    failures.append(f"{what}: {status} in {elapsed_s:.2f} s: {json.dumps(answer)[:300]}")

            def check(path: str, body: dict, what: str) -> None:
                nonlocal slowest_s
                try:
                    status, answer, elapsed_s = send(server.url, path, body)
                except httpx.HTTPError as exc:
                    failures.append(f"{what}: {type(exc).__name__}: {exc}: {json.dumps(body)[:300]}")
                    return
                statuses[status] += 1
                slowest_s = max(slowest_s, elapsed_s)
                if status not in (200, 400):
                    failures.append(f"{what}: {status}: {json.dumps(answer)[:300]}: {json.dumps(body)[:300]}")

            fields = st.sampled_from(["response_format", "json_object", "json_schema", "tools", "tools_auto"])

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(schema=schemas(), field=fields)
            def one_schema(schema: dict, field: str) -> None:
                check("/v1/chat/completions", chat(field, schema), f"schema in {field}")

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(grammar=grammars(), completions=st.booleans())
            def one_grammar(grammar: str, completions: bool) -> None:
                if completions:
                    check("/v1/completions", {"prompt": "x", "grammar": grammar, "max_tokens": CAP_TOKENS}, "grammar")
                else:
                    check("/v1/chat/completions", chat("grammar", grammar), "grammar")

            started = time.perf_counter()
            one_schema()
            one_grammar()
            fuzzing_s = time.perf_counter() - started
        finally:
            neighbour.stop.set()
            neighbour.join(120)
        idle = wait_idle(server.url)
        alive = server.process.poll() is None
    print(f"\ngrammar fuzz: {sum(statuses.values())} generated requests in {fuzzing_s:.0f} s, {dict(statuses)}, "
          f"slowest {slowest_s:.2f} s; the neighbour streamed {len(neighbour.outputs)} times meanwhile")
    assert alive
    assert not failures, "\n".join(failures[:20])
    assert statuses[200] > EXAMPLES // 4 and statuses[400] > EXAMPLES // 4, statuses  # both kinds were reached
    assert slowest_s < limits.COMPILE_TIMEOUT_S + 5
    assert "Traceback" not in server.output, server.output[-5000:]
    assert max(map(len, server.output.splitlines()), default=0) < 1000
    assert not neighbour.errors
    assert len(neighbour.outputs) >= 2 and all(output == alone for output in neighbour.outputs), \
        (alone, neighbour.outputs)
    assert idle["requests_processing"] == idle["requests_deferred"] == 0, idle
