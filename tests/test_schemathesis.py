"""Schemathesis against a live server on a tiny synthetic model: every operation of /openapi.json, fed
requests generated from its own schema (valid ones, and invalid ones: wrong types, out-of-range numbers,
missing fields), must never answer 5xx nor write a traceback to the server's log; and a second client
streaming a greedy chat completion all through the fuzzing must get exactly what the same request gives
alone (a bad neighbour may be refused, never disturb anyone else).

Bounded for CI on two slow cores: a fixed number of examples per operation and mode (derandomized, so a run
is reproducible), generated token counts capped at CAP_TOKENS, a context of N_CTX tokens.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup  # a BaseExceptionGroup: not an Exception

from tests.live_server import ServerProcess, wait_idle

pytestmark = pytest.mark.slow

N_CTX = 128
CAP_TOKENS = 4  # every generated request makes at most this many tokens (the server's -n for those without)
EXAMPLES = {  # per operation and generation mode; the GET operations take no input, so a few calls suffice
    "POST /v1/chat/completions": 40, "POST /v1/completions": 40, "POST /v1/embeddings": 25,
    "POST /tokenize": 25, "POST /detokenize": 25,
    "POST /v1/responses": 20, "POST /v1/messages": 20, "POST /v1/messages/count_tokens": 15,
}
GET_EXAMPLES = 3
NEIGHBOUR = {"messages": [{"role": "user", "content": "tell me a story"}], "temperature": 0, "max_tokens": 24,
             "stream": True}


def bounded(body: object) -> object:
    """`body` with the token counts it asks for capped at CAP_TOKENS (the schema sets no maximum)."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > CAP_TOKENS:
                body[key] = CAP_TOKENS
    return body


def streamed_text(url: str, body: dict, on_first_chunk: Callable[[], None] = lambda: None) -> str:
    """The text a streaming chat request gets (`on_first_chunk` is called on every chunk, from the first)."""
    text = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices:  # the usage chunk has none
                    text.append(choices[0]["delta"].get("content") or "")
                on_first_chunk()
    return "".join(text)


class Neighbour(threading.Thread):
    """Streams NEIGHBOUR again and again until told to stop, keeping every output."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.outputs, self.errors = url, [], []
        self.streaming, self.stop = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.outputs.append(streamed_text(self.url, NEIGHBOUR, self.streaming.set))
            except Exception as exc:  # reported by the test, not lost in this thread
                self.errors.append(repr(exc))
                return


def fuzz(schema_document: dict, url: str) -> tuple[dict[str, dict[int, int]], list[str]]:
    """Every operation, in both modes, its examples sent to `url`: (status counts by operation and mode, the
    failures, each with a curl command that repeats it)."""
    statuses: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    for result in schemathesis.openapi.from_dict(schema_document).get_all_operations():
        operation = result.ok()
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if operation.body else (GenerationMode.POSITIVE,)
        for mode in modes:
            label = f"{operation.label} ({mode.value})"
            statuses[label] = fuzz_operation(operation, mode, url, label, failures)
    return statuses, failures


def fuzz_operation(operation: schemathesis.APIOperation, mode: GenerationMode, url: str, label: str,
                   failures: list[str]) -> dict[int, int]:
    """EXAMPLES of `operation` in `mode` sent to `url`, failures added to `failures`: the count of each status."""
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES.get(operation.label, GET_EXAMPLES), deadline=None, database=None,
              derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        case.body = bounded(case.body)
        try:
            response = case.call(base_url=url, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup as exc:  # collected, not raised: one must not hide the others (it names a curl)
            failures.append(f"{label}: {exc}")
        except Exception as exc:  # the connection dropped, a timeout...
            failures.append(f"{label}: {type(exc).__name__}: {exc}\n    {case.as_curl_command(base_url=url)}")

    one()
    return seen


def test_fuzzing_finds_no_server_error_and_disturbs_no_one(tiny_models: Callable[..., Path]) -> None:
    options = ("-np", "2", "-c", str(N_CTX), "-t", "1", "-n", str(CAP_TOKENS))
    with ServerProcess(tiny_models("llama"), *options) as server:
        alone = streamed_text(server.url, NEIGHBOUR)
        document = httpx.get(server.url + "/openapi.json").json()
        neighbour = Neighbour(server.url)
        neighbour.start()
        assert neighbour.streaming.wait(60), neighbour.errors
        started = time.perf_counter()
        try:
            statuses, failures = fuzz(document, server.url)
        finally:
            fuzzing_s = time.perf_counter() - started
            neighbour.stop.set()
            neighbour.join(120)
        idle = wait_idle(server.url)
    n_cases = sum(sum(seen.values()) for seen in statuses.values())
    print(f"\nschemathesis: {n_cases} cases in {fuzzing_s:.0f} s; the neighbour streamed {len(neighbour.outputs)} "
          "times meanwhile; statuses:")
    for label, seen in statuses.items():
        print(f"  {label}: {dict(sorted(seen.items()))}")
    assert not failures, "\n".join(failures)
    assert "Traceback" not in server.output, server.output
    assert not neighbour.errors
    assert len(neighbour.outputs) >= 2 and all(output == alone for output in neighbour.outputs), \
        (alone, neighbour.outputs)
    assert idle["requests_processing"] == idle["requests_deferred"] == 0, idle
