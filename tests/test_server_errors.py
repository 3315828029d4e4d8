"""The server's one error path (llamapyz/server/http.py, schema.ERROR_TYPES), over real HTTP where it can be:
every status it sends has its type from the one table, every 503 carries Retry-After, a bug in a handler is a
short 500 logged with one traceback and the server goes on, and a bug in the middle of a stream ends the
stream with an error event."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from llamapyz.server import MAX_HEADER_BYTES, engine, info
from llamapyz.server.app import ServerState, create_app
from llamapyz.server.config_file import ModelSpec
from llamapyz.server.pool import ModelPool
from llamapyz.server.schema import ERROR_TYPES, ApiError
from tests.live_server import ServerThread

N_CTX = 64
KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT_S = 1.0  # the edge server's deadlines, for the head and for the body
MAX_BODY = 4096

# What each status the server sends is typed (written out here, not read from the table: a change to the table
# must be a change to this test too)
EXPECTED_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "invalid_request_error",
    404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
    413: "invalid_request_error", 415: "invalid_request_error", 431: "invalid_request_error",
    500: "server_error", 503: "unavailable_error",
}


@pytest.fixture(scope="module")
def edge(tiny_llama, tmp_path_factory):
    """A server with an API key, short deadlines, a small body limit, no queue, and three models: the tiny one,
    a second name that is never loaded, and a file that cannot load."""
    broken = tmp_path_factory.mktemp("broken") / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    models = [ModelSpec(str(tiny_llama), "tiny"), ModelSpec(str(tiny_llama), "other"), ModelSpec(str(broken), "broken")]
    with ServerThread(None, models=models, n_ctx=N_CTX, n_slots=1, max_queue=0, api_key=KEY,
                      body_timeout_s=TIMEOUT_S, header_timeout_s=TIMEOUT_S, max_body_bytes=MAX_BODY) as live:
        yield live


class Answer:
    """An HTTP answer, however it was got: status, headers (lower-case names) and the body's JSON."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.json = status, headers, json.loads(body)

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        return cls(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    @classmethod
    def raw(cls, reply: bytes) -> Answer:
        head, _, body = reply.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return cls(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body)


def post(live: ServerThread, path: str, body: object, headers: dict | None = None) -> Answer:
    return Answer.of(httpx.post(live.url + path, content=json.dumps(body), timeout=30,
                                headers={"Content-Type": "application/json", **AUTH, **(headers or {})}))


def raw_exchange(live: ServerThread, data: bytes) -> bytes:
    """Send `data` on a new connection; what comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", live.options.port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def app_answer(state: ServerState, method: str, path: str, body: object | None = None) -> Answer:
    """The app's answer, in process (for pool states a live server cannot be put in on demand)."""

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.request(method, path, json=body)

    return Answer.of(asyncio.run(ask()))


class Tracebacks(logging.Handler):
    """Every record with a traceback, from the root logger and uvicorn's (which does not propagate to it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and all(record is not seen for seen in self.records):  # met once per logger
            self.records.append(record)

    def __enter__(self) -> Tracebacks:
        for name in ("", "uvicorn"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ("", "uvicorn"):
            logging.getLogger(name).removeHandler(self)


def fails_once(monkeypatch, target: object, name: str) -> None:
    """`target.name` raises a RuntimeError naming internals the first time it is called, then works."""
    original, calls = getattr(target, name), []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("secret internals: /home/someone/.cache at 0x7f00")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, broken)


# --- the table ---------------------------------------------------------------------------------------------

def test_the_table_types_every_status_and_refuses_others():
    assert ERROR_TYPES == EXPECTED_TYPES
    for status, kind in EXPECTED_TYPES.items():
        assert ApiError(status, "x").body()["error"]["type"] == kind
    with pytest.raises(ValueError, match="ERROR_TYPES"):
        ApiError(418, "a status the table does not have")
    assert ApiError(503, "busy").headers() == {"Retry-After": "1"}
    assert ApiError(503, "loading", retry_after_s=5).headers() == {"Retry-After": "5"}
    assert ApiError(400, "bad").headers() == {}


def test_every_status_the_code_sends_is_in_the_table():
    """Each literal status given to ApiError anywhere in the package (a status the table lacked would be a
    ValueError where it is raised: this finds it before a request does)."""
    root = Path(__file__).resolve().parents[1] / "llamapyz"
    sent = {int(status) for path in root.rglob("*.py")
            for status in re.findall(r"ApiError\(\s*(\d{3})\b", path.read_text(encoding="utf-8"))}
    assert {400, 401, 403, 404, 405, 408, 413, 415, 500, 503} <= sent  # the search finds them
    assert sent <= set(EXPECTED_TYPES), sent - set(EXPECTED_TYPES)


# --- each status, over HTTP ----------------------------------------------------------------------------------

def provoke(status: int, live: ServerThread, monkeypatch) -> Answer:
    """An answer of `status` from the live server, provoked as a client (or a bug) would."""
    url, port = live.url, live.options.port
    if status == 400:
        return post(live, "/v1/completions", {"prompt": "a", "temperature": "hot"})
    if status == 401:
        return Answer.of(httpx.get(url + "/v1/models"))
    if status == 403:
        return Answer.of(httpx.get(url + "/v1/models", headers={"Host": "rebound.example", **AUTH}))
    if status == 404:
        return post(live, "/v1/completions", {"prompt": "a", "model": "gpt-4"})
    if status == 405:
        return Answer.of(httpx.delete(url + "/v1/models", headers=AUTH))
    if status == 408:  # a body announced and never sent
        head = (f"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                "Content-Type: application/json\r\nContent-Length: 20\r\n\r\n{")
        return Answer.raw(raw_exchange(live, head.encode()))
    if status == 413:
        return post(live, "/tokenize", {"content": "x" * MAX_BODY})
    if status == 415:
        return Answer.of(httpx.post(url + "/tokenize", content=b'{"content": "hi"}',
                                    headers={"Content-Type": "text/plain", **AUTH}))
    if status == 431:
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
        return Answer.raw(raw_exchange(live, head))
    if status == 500:
        fails_once(monkeypatch, info, "generation_defaults")
        return Answer.of(httpx.get(url + "/props", headers=AUTH))
    if status == 503:
        return post(live, "/v1/completions", {"prompt": "a", "model": "broken"})
    raise AssertionError(f"no way to provoke {status}")


@pytest.mark.parametrize("status", sorted(EXPECTED_TYPES))
def test_each_status_is_answered_with_its_type(edge, monkeypatch, status):
    answer = provoke(status, edge, monkeypatch)
    assert answer.status == status, answer.json
    error = answer.json["error"]
    assert error["type"] == EXPECTED_TYPES[status] and error["message"], error
    assert set(error) >= {"message", "type", "param", "code"}
    assert ("retry-after" in answer.headers) == (status == 503), answer.headers


def test_the_408s_of_the_body_and_of_the_head_are_one_error(edge):
    """The body's deadline (the app's) and the head's (the connection's) answer the same code and type."""
    head = Answer.raw(raw_exchange(edge, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a"))
    body = provoke(408, edge, None)
    assert head.status == body.status == 408
    assert {k: head.json["error"][k] for k in ("type", "code")} == {k: body.json["error"][k] for k in ("type", "code")}


def test_a_request_that_is_not_http_is_a_400_of_the_table(edge):
    answer = Answer.raw(raw_exchange(edge, b"NOT HTTP AT ALL\r\n\r\n"))
    assert answer.status == 400 and answer.json["error"]["type"] == EXPECTED_TYPES[400]


# --- Retry-After on every 503 --------------------------------------------------------------------------------

def test_a_full_queue_is_503_overloaded_with_retry_after(edge):
    """n_slots 1 and no queue: with the engine held before its turn, the one slot is taken and the next
    request is refused at once."""
    served = edge.state.pool.default
    done: list[Answer] = []
    with engine.COMPUTE:  # the engine admits the first request into its slot, then waits here
        first = threading.Thread(target=lambda: done.append(post(edge, "/v1/completions",
                                                                 {"prompt": "a", "max_tokens": 2})))
        first.start()
        deadline = time.monotonic() + 10
        while served.engine.n_running == 0:
            assert time.monotonic() < deadline, "the first request never took the slot"
            time.sleep(0.01)
        busy = post(edge, "/v1/completions", {"prompt": "b", "max_tokens": 2})
    first.join(30)
    assert busy.status == 503 and busy.json["error"]["code"] == "overloaded"
    assert busy.headers["retry-after"] == "1"
    assert done[0].status == 200  # the one in the slot went on


def test_a_model_that_could_not_load_is_503_with_a_long_retry_after(edge):
    answer = post(edge, "/v1/completions", {"prompt": "a", "model": "broken"})
    assert answer.status == 503 and answer.json["error"]["code"] == "load_failed"
    assert answer.headers["retry-after"] == "60"


def test_busy_grammar_workers_are_503_with_retry_after(edge, monkeypatch):
    """Every grammar worker taken by work that does not end: a request with a grammar waits COMPILE_TIMEOUT_S
    for one, then gets its 503."""
    from llamapyz.decode import constraint
    from llamapyz.decode import grammar_limits as limits

    workers, release = limits.Workers(max_workers=1), threading.Event()
    workers.submit(release.wait)  # the only worker, stuck
    monkeypatch.setattr(constraint, "WORKERS", workers)
    monkeypatch.setattr(limits, "COMPILE_TIMEOUT_S", 0.3)
    try:
        answer = post(edge, "/v1/completions", {"prompt": "a", "max_tokens": 2,
                                                "response_format": {"type": "json_object"}})
    finally:
        release.set()
    assert answer.status == 503 and answer.json["error"]["code"] == "overloaded", answer.json
    assert answer.headers["retry-after"] == "1"


def test_a_model_still_loading_is_503_with_retry_after():
    pool = ModelPool([ModelSpec("x.gguf", "x")], load=lambda spec: None, load_timeout_s=0.2)
    pool.default.loading = True  # and never done: a request waits its load_timeout_s, then gives up
    answer = app_answer(ServerState(pool=pool), "POST", "/v1/completions", {"prompt": "a"})
    assert answer.status == 503 and answer.json["error"]["code"] == "loading"
    assert answer.headers["retry-after"] == "5"


def test_a_draining_model_is_503_with_retry_after_once_the_wait_is_over():
    """models_max 1: `a` is busy and is drained for `b`, which requests wait for; a request for `a` meanwhile
    waits too (a draining model takes none), and gets its 503 at load_timeout_s, as do those for `b`. (A
    second request for `b` keeps the drain going after the first gives up.)"""
    busy = SimpleNamespace(n_running=1, n_waiting=0)  # an engine that never gets idle
    pool = ModelPool([ModelSpec("a.gguf", "a"), ModelSpec("b.gguf", "b")], load=lambda spec: None,
                     models_max=1, load_timeout_s=0.5, switch_s=0.0)
    drained = pool.default
    drained.engine = busy
    state = ServerState(pool=pool)

    async def three() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            def ask(model: str) -> asyncio.Task:
                return asyncio.create_task(client.post("/v1/completions", json={"prompt": "x", "model": model}))

            first_b = ask("b")
            while not drained.draining:
                await asyncio.sleep(0.01)
            for_a = ask("a")
            while not drained.waits:
                await asyncio.sleep(0.01)
            second_b = ask("b")
            return [await for_a, await first_b, await second_b]

    for response in asyncio.run(three()):
        answer = Answer.of(response)
        assert answer.status == 503 and answer.json["error"]["code"] == "loading", answer.json
        assert answer.headers["retry-after"] == "5"
    assert drained.engine is busy  # never unloaded: it never got idle


def test_health_is_503_with_retry_after_while_loading_and_after_a_failure():
    pool = ModelPool([ModelSpec("x.gguf", "x")], load=lambda spec: None)
    pool.default.loading = True
    loading = app_answer(ServerState(pool=pool), "GET", "/health")
    pool.default.loading, pool.default.load_error = False, "not a GGUF file"
    failed = app_answer(ServerState(pool=pool), "GET", "/health")
    assert (loading.status, loading.headers["retry-after"]) == (503, "1")
    assert (failed.status, failed.headers["retry-after"]) == (503, "60")


# --- bugs -------------------------------------------------------------------------------------------------

def test_a_bug_in_a_handler_is_a_short_500_logged_once_and_the_server_goes_on(edge, monkeypatch):
    fails_once(monkeypatch, info, "generation_defaults")
    with Tracebacks() as logged:
        answer = Answer.of(httpx.get(edge.url + "/props", headers=AUTH))
        time.sleep(0.2)  # a second report would come after the answer
    assert answer.status == 500
    assert answer.json["error"]["message"] == "internal server error (see the server log)"
    assert "secret" not in json.dumps(answer.json)
    assert len(logged.records) == 1, [r.getMessage() for r in logged.records]
    assert logged.records[0].getMessage() == "error while handling GET /props"
    assert "secret internals" in str(logged.records[0].exc_info[1])
    assert httpx.get(edge.url + "/props", headers=AUTH).json()["loaded"] is True  # the next one is fine
    assert post(edge, "/v1/completions", {"prompt": "a", "max_tokens": 2}).status == 200


def test_a_bug_in_the_middle_of_a_stream_ends_it_with_an_error_event(edge, monkeypatch):
    from llamapyz.server import completions

    fails_once(monkeypatch, completions, "chat_logprob")
    with Tracebacks() as logged:
        response = httpx.post(edge.url + "/v1/chat/completions", headers=AUTH, timeout=30, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True, "logprobs": True})
        time.sleep(0.2)
    assert response.status_code == 200
    events = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
              for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"  # the opening went out first
    assert events[-1] == {"error": {"message": "internal server error (see the server log)", "type": "server_error",
                                    "param": None, "code": None}}
    assert len(logged.records) == 1 and "while streaming POST /v1/chat/completions" in logged.records[0].getMessage()
    deadline = time.monotonic() + 10
    while edge.state.pool.default.engine.n_running:  # the job the stream ended is cancelled (one slot here)
        assert time.monotonic() < deadline, "the job of the broken stream still runs"
        time.sleep(0.01)
    again = post(edge, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert again.status == 200
