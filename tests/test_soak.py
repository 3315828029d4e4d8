"""A soak test of the live server on a tiny synthetic model: 16 clients at once on 4 slots, for a fixed
number of rounds, each round a mix of

- normal chat requests (greedy, or sampled with a fixed seed): each must stream exactly what it streams alone;
- numerically extreme ones (temperature or repeat_penalty 1e-300, top_k 0, huge logit biases, seed -1):
  answered (or refused with a 4xx), never a 5xx and never a broken stream;
- malformed ones (bad JSON, wrong types, a 5,000-digit integer, a lone surrogate, an unknown role): a 4xx;
- cancelled ones (the client closes the stream after a few chunks);
- embeddings of a few inputs: the same vectors as alone, bit for bit;
- constrained ones (response_format json_schema): the output parses and validates.

At the end: no 5xx anywhere and no traceback in the server's log, its resident memory flat after a warm-up
round, and /metrics back to nothing processing and nothing waiting. Bounded to well under 4 minutes on two
slow cores: short outputs, a context of N_CTX tokens.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.live_server import ServerProcess, wait_idle

pytestmark = pytest.mark.slow

N_CTX = 128
N_SLOTS = 4
N_CLIENTS = 16
ROUNDS = 20  # after the warm-up round: 40-120 s on two cores, as busy as they are
# Growth of the server's resident memory from after the warm-up round to the end, in MiB. Everything the
# server keeps for good (weights: ~2 MiB memory-mapped; KV caches: 4 slots x 128 tokens, under 1 MiB;
# compiled kernels; llguidance's tokenizer) is in place after the warm-up round, so what remains is the
# allocator's noise (the server's threads' malloc arenas grow and shrink: 1-3 MiB seen over these rounds).
# 32 MiB is ten times that noise, and what a leak of 100 KiB per request (a request's logits history, token
# lists, response chunks or grammar matcher kept alive) adds over the ROUNDS x N_CLIENTS = 320 requests.
RSS_GROWTH_MIB = 32

CHAT = "/v1/chat/completions"
NORMAL = [  # (prompt, sampling): greedy and seeded
    ("tell me a story", {"temperature": 0}),
    ("the cat sat on", {"temperature": 0, "max_tokens": 24}),
    ("why is the sky blue", {"temperature": 0.9, "seed": 11, "top_k": 0, "top_p": 1, "min_p": 0}),
    ("count to ten", {"temperature": 1.2, "seed": 12, "repeat_penalty": 1.3}),
]
EXTREME = [
    {"temperature": 1e-300, "seed": -1},
    {"temperature": 0.8, "repeat_penalty": 1e-300, "seed": 5},
    {"temperature": 5, "top_k": 0, "top_p": 1, "min_p": 0, "seed": -1},
    {"temperature": 1.0, "logit_bias": {"65": 1e300, "66": -1e300}, "seed": 3},
    {"temperature": 0.7, "logit_bias": {str(t): 100 for t in range(40, 60)}, "top_k": 0, "seed": -1},
]
MALFORMED = [
    b'{"messages": [{"role": "user", "content": "unfinished',
    json.dumps({"messages": "not a list"}).encode(),
    json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(),
    b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "a lone \\ud800 surrogate"}]}',
    json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(),
]
EMBEDDING = {"input": ["one", "two words", "three little words"]}
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                            "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}
CONSTRAINED = {"messages": [{"role": "user", "content": "answer in JSON"}], "max_tokens": 48, "temperature": 0.8,
               "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA,
                                                                          "strict": True}}}
KINDS = ["normal", "extreme", "normal", "malformed", "cancelled", "normal", "embedding", "constrained"]


def normal_body(index: int) -> dict:
    prompt, sampling = NORMAL[index]
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 16, "stream": True, **sampling}


def stream(client: httpx.Client, body: dict) -> tuple[int, str, str | None]:
    """(status, the streamed text, the finish reason) of a streaming chat request; raises on a broken stream."""
    text, finish = [], None
    with client.stream("POST", CHAT, json=body) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, response.text, None
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    for line in lines[:-1]:
        choices = json.loads(line[6:])["choices"]
        if choices:
            text.append(choices[0]["delta"].get("content") or "")
            finish = choices[0]["finish_reason"] or finish
    return 200, "".join(text), finish


class Client:
    """One of the N_CLIENTS: in round r it sends a request of kind KINDS[(number + r) % len(KINDS)]."""

    def __init__(self, url: str, number: int, texts_alone: list[str], vectors_alone: list) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.number, self.texts_alone, self.vectors_alone = number, texts_alone, vectors_alone
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []

    def round(self, r: int) -> None:
        kind = KINDS[(self.number + r) % len(KINDS)]
        variant = self.number * 7 + r
        try:
            status = getattr(self, kind)(variant)
        except Exception as exc:  # collected: one client's failure must not hide the others'
            self.failures.append(f"client {self.number} round {r} {kind} {variant}: {type(exc).__name__}: {exc}")
            return
        self.statuses[kind, status] += 1
        if status >= 500:
            self.failures.append(f"client {self.number} round {r} {kind} {variant}: {status}")

    def normal(self, variant: int) -> int:
        index = variant % len(NORMAL)
        status, text, _ = stream(self.http, normal_body(index))
        alone = self.texts_alone[index]
        assert status == 200 and text == alone, (status, normal_body(index), text, alone)
        return status

    def extreme(self, variant: int) -> int:
        body = {"messages": [{"role": "user", "content": f"extreme {variant}"}], "max_tokens": 8, "stream": True,
                **EXTREME[variant % len(EXTREME)]}
        status, text, finish = stream(self.http, body)
        assert (status == 200 and finish in ("stop", "length")) or 400 <= status < 500, (body, status, text)
        return status

    def malformed(self, variant: int) -> int:
        body = MALFORMED[variant % len(MALFORMED)]
        response = self.http.post(CHAT, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500 and "error" in response.json(), (body[:80], response.text)
        return response.status_code

    def cancelled(self, variant: int) -> int:
        body = {"messages": [{"role": "user", "content": f"go on {variant}"}], "max_tokens": 64, "temperature": 1,
                "stream": True}
        with self.http.stream("POST", CHAT, json=body) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += line.startswith("data: ")
                if chunks == 3:
                    break  # leaving the block closes the connection mid-stream
        return response.status_code

    def embedding(self, variant: int) -> int:
        response = self.http.post("/v1/embeddings", json=EMBEDDING)
        vectors = [d["embedding"] for d in response.json()["data"]]
        assert response.status_code == 200 and vectors == self.vectors_alone, "the vectors differ from alone"
        return response.status_code

    def constrained(self, variant: int) -> int:
        status, text, finish = stream(self.http, {**CONSTRAINED, "seed": variant, "stream": True})
        assert status == 200 and finish == "stop", (status, text, finish)
        jsonschema.validate(json.loads(text), SCHEMA)
        return status


def test_soak(tiny_models: Callable[..., Path]) -> None:
    started = time.perf_counter()
    options = ("-np", str(N_SLOTS), "-c", str(N_CTX), "-t", "1")
    with ServerProcess(tiny_models("llama"), *options) as server:
        with httpx.Client(base_url=server.url, timeout=120) as alone:
            normal = [stream(alone, normal_body(i))[1] for i in range(len(NORMAL))]
            embedding = [d["embedding"] for d in alone.post("/v1/embeddings", json=EMBEDDING).json()["data"]]
        clients = [Client(server.url, number, normal, embedding) for number in range(N_CLIENTS)]
        rss_start = server.rss_mib()
        with ThreadPoolExecutor(N_CLIENTS) as pool:
            list(pool.map(lambda client: client.round(0), clients))
            rss_warm = server.rss_mib()
            soak_started = time.perf_counter()
            list(pool.map(lambda client: [client.round(r) for r in range(1, ROUNDS + 1)], clients))
            soak_s = time.perf_counter() - soak_started
        idle = wait_idle(server.url)
        rss_end = server.rss_mib()
        for client in clients:
            client.http.close()
    statuses = sum((client.statuses for client in clients), Counter())
    failures = [failure for client in clients for failure in client.failures]
    print(f"\nsoak: {sum(statuses.values())} requests ({ROUNDS} rounds in {soak_s:.0f} s after a warm-up round; "
          f"{time.perf_counter() - started:.0f} s in all): {dict(sorted(statuses.items()))}; RSS {rss_start:.1f} "
          f"-> {rss_warm:.1f} (warm) -> {rss_end:.1f} MiB; cancelled {idle['requests_cancelled_total']:.0f}")
    assert not failures, "\n".join(failures)
    assert "Traceback" not in server.output, server.output
    assert idle["requests_processing"] == idle["requests_deferred"] == 0, idle
    assert rss_end - rss_warm < RSS_GROWTH_MIB, (rss_start, rss_warm, rss_end)
