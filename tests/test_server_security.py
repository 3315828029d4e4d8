"""The server's guards (`llamapyz/server/security.py`) over real HTTP: slow or stalled bodies end in a 408 and
a closed connection, a stalled client (body or headers) keeps no one else waiting, CORS only when asked for,
and a loopback server answers only loopback Host names (DNS rebinding)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import sys
import time

import httpx
import pytest

from llamapyz.server import MAX_HEADER_BYTES, ServeOptions, create_server
from llamapyz.server.app import create_app
from llamapyz.server.security import BodyDeadlineMiddleware, allowed_hosts, host_name, is_loopback
from tests.live_server import ServerProcess, ServerThread

N_CTX = 64
BODY_TIMEOUT_S = 1.0
ORIGIN = "https://app.example"
KEY = {"Authorization": "Bearer sesame"}


@pytest.fixture(scope="module")
def plain(tiny_llama):
    """Everything at its default (bound to 127.0.0.1), but a short body deadline."""
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, body_timeout_s=BODY_TIMEOUT_S) as live:
        yield live


@pytest.fixture(scope="module")
def guarded(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, api_key="sesame", cors_origins=(ORIGIN,),
                      allowed_hosts=("llm.example", "*.lan.example")) as live:
        yield live


def raw(server: ServerThread) -> socket.socket:
    """A TCP connection to the server, for sending HTTP by hand."""
    return socket.create_connection(("127.0.0.1", server.options.port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def post_head(server: ServerThread, framing: str) -> bytes:
    return (f"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1:{server.options.port}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


# --- B5: slow bodies, stalled clients ----------------------------------------------------------------------

def assert_timed_out(reply: bytes, elapsed_s: float) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert BODY_TIMEOUT_S * 0.9 <= elapsed_s < BODY_TIMEOUT_S + 5


def test_a_stalled_body_is_408_and_the_connection_closed(plain):
    with raw(plain) as sock:
        started = time.monotonic()
        sock.sendall(post_head(plain, "Content-Length: 100") + b'{"prompt": "')  # then nothing
        reply = read_until_closed(sock)  # returns only once the server has closed the connection
        assert_timed_out(reply, time.monotonic() - started)


def test_a_trickled_body_is_408_however_steady_the_trickle(plain):
    """A byte every 0.1 s never lets the connection go idle; the deadline is on the whole body."""
    with raw(plain) as sock:
        started = time.monotonic()
        sock.sendall(post_head(plain, "Transfer-Encoding: chunked"))
        while time.monotonic() - started < BODY_TIMEOUT_S + 5:
            sock.sendall(b"1\r\n \r\n")  # a chunk of one byte
            if select.select([sock], [], [], 0.1)[0]:
                break  # the server has answered
        assert_timed_out(read_until_closed(sock), time.monotonic() - started)


def test_a_body_in_time_is_answered(plain):
    """The deadline leaves a body that does arrive alone, even one sent in parts."""
    with raw(plain) as sock:
        body = json.dumps({"content": "in time"}).encode()
        sock.sendall(post_head(plain, f"Content-Length: {len(body)}\r\nConnection: close") + body[:5])
        time.sleep(BODY_TIMEOUT_S / 3)
        sock.sendall(body[5:])
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"tokens"' in reply, reply[:300]


def test_stalled_clients_keep_no_one_waiting(plain):
    """Slowloris: connections stuck in their headers or their body hold no handler; a request alongside them
    is answered at once."""
    stalled = []
    try:
        for i in range(8):
            sock = raw(plain)
            if i % 2:
                sock.sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers unfinished
            else:
                sock.sendall(post_head(plain, "Content-Length: 1000") + b"{")
            stalled.append(sock)
        started = time.monotonic()
        assert httpx.get(plain.url + "/health", timeout=5).status_code == 200
        reply = httpx.post(plain.url + "/tokenize", json={"content": "hello"}, timeout=10)
        assert reply.status_code == 200 and time.monotonic() - started < 3
    finally:
        for sock in stalled:
            sock.close()


def test_headers_over_the_limit_are_refused_and_the_server_goes_on(plain):
    """A request head that keeps coming, in many reads, is refused once it holds more than MAX_HEADER_BYTES
    (the head in one read: `test_a_head_over_the_limit_in_one_read_is_431`)."""
    assert MAX_HEADER_BYTES == 16 << 10
    with raw(plain) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 256 KiB, until the server has had enough
                sock.sendall(b"a" * 4096)
                if select.select([sock], [], [], 0)[0]:
                    break
            reply = read_until_closed(sock)
        except (BrokenPipeError, ConnectionResetError):
            reply = b"(reset)"
    assert reply.startswith(b"HTTP/1.1 431 ") or reply == b"(reset)", reply[:200]
    assert httpx.get(plain.url + "/health").status_code == 200


def test_the_deadline_answers_for_a_handler_that_does_not_catch_it():
    """The middleware's own 408, for an app that reads the body without `read_json`'s error handling."""

    async def app(scope, receive, send) -> None:
        await receive()

    async def never() -> dict:
        await asyncio.sleep(60)
        return {}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"10")]}
    started = time.monotonic()
    asyncio.run(BodyDeadlineMiddleware(app, timeout_s=0.2)(scope, never, send))
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


# --- B7: CORS --------------------------------------------------------------------------------------------

def preflight(server: ServerThread, origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(server.url + "/v1/chat/completions",
                         headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                  "Access-Control-Request-Headers": "authorization, content-type"})


def test_no_cors_headers_unless_asked_for(plain):
    assert "access-control-allow-origin" not in preflight(plain).headers
    simple = httpx.get(plain.url + "/v1/models", headers={"Origin": ORIGIN})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_for_the_origins_given(guarded):
    allowed = preflight(guarded)  # no API key: a browser sends none on a preflight
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    simple = httpx.get(guarded.url + "/v1/models", headers={"Origin": ORIGIN, **KEY})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.get(guarded.url + "/v1/models", headers={"Origin": ORIGIN})  # the page may read the 401
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    other = preflight(guarded, "https://evil.example")
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in httpx.get(guarded.url + "/v1/models",
                                                          headers={"Origin": "https://evil.example", **KEY}).headers


def test_cors_any_origin(tiny_llama):
    state, _ = create_server(ServeOptions(model=tiny_llama, cors_origins=("*",), webui=None))
    transport = httpx.ASGITransport(app=create_app(state))

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            return await client.get("/health", headers={"Origin": "https://anyone.example"})

    assert asyncio.run(scenario()).headers["access-control-allow-origin"] == "*"


# --- B7: the Host allow-list (DNS rebinding) ---------------------------------------------------------------

def test_a_loopback_server_answers_loopback_names_only(plain):
    port = plain.options.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "localhost.:80"):
        assert httpx.get(plain.url + "/health", headers={"Host": host}).status_code == 200, host
    for host in (f"rebound.example:{port}", "127.0.0.1.rebound.example", "192.168.1.5"):
        refused = httpx.get(plain.url + "/v1/models", headers={"Host": host})
        error = refused.json()["error"]
        assert refused.status_code == 403 and error["code"] == "host_not_allowed", host
        assert f"--allowed-host {host_name(host)}" in error["message"] and "DNS rebinding" in error["message"]
    assert httpx.get(plain.url + "/", headers={"Host": "rebound.example"}).status_code == 403  # the UI too


def test_allowed_host_extends_the_list(guarded):
    for host, status in (("llm.example", 200), ("LLM.example:443", 200), ("a.lan.example", 200),
                         (f"localhost:{guarded.options.port}", 200), ("lan.example", 403), ("other.example", 403)):
        assert httpx.get(guarded.url + "/health", headers={"Host": host}).status_code == status, host


def test_which_hosts_a_bind_address_allows(tiny_llama):
    loopback = ("127.0.0.1", "::1", "localhost")
    for bind in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(bind)
        assert set(loopback) <= set(allowed_hosts(bind)), bind
    assert allowed_hosts("127.0.0.2") == ("127.0.0.1", "127.0.0.2", "::1", "localhost")
    for bind in ("0.0.0.0", "::", "192.168.1.5", "example.com"):
        assert not is_loopback(bind)
        assert allowed_hosts(bind) is None, bind  # the check is off: document it
    assert allowed_hosts("0.0.0.0", ["LLM.example"]) == ("127.0.0.1", "::1", "llm.example", "localhost")
    assert "192.168.1.5" in allowed_hosts("192.168.1.5", ["llm.example"])
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert host_name("[::1]:8080") == host_name("::1") == "::1" and host_name("Example.COM.:1") == "example.com"
    state, _ = create_server(ServeOptions(model=tiny_llama, host="0.0.0.0", webui=None))  # not started: no bind
    assert state.allowed_hosts is None
    state, _ = create_server(ServeOptions(model=tiny_llama, allowed_hosts=("llm.example",), webui=None))
    assert state.allowed_hosts == ("127.0.0.1", "::1", "llm.example", "localhost")


# --- cross-site requests: JSON bodies only with a JSON Content-Type ----------------------------------------

POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize",
              "/chat/completions", "/completions", "/embeddings")
SIMPLE_TYPES = ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", None)  # what a page may send cross-site with no preflight


def post_as(server: ServerThread, path: str, body: object, content_type: str | None,
            **headers: str) -> httpx.Response:
    sent = {"Content-Type": content_type} if content_type is not None else {}
    return httpx.post(server.url + path, content=json.dumps(body), headers={**sent, **headers}, timeout=30)


def test_a_body_not_sent_as_json_is_415_on_every_endpoint(plain):
    """A web page may send these cross-site without a CORS preflight: none of them makes the server work."""
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    before = plain.state.engine.stats["requests"]
    for path in POST_PATHS:
        for content_type in SIMPLE_TYPES:
            refused = post_as(plain, path, chat, content_type, Origin="https://evil.example")
            error = refused.json()["error"]
            assert refused.status_code == 415, (path, content_type, refused.text)
            assert error["code"] == "unsupported_media_type" and error["type"] == "invalid_request_error"
            assert "Content-Type: application/json" in error["message"] and "curl: -H" in error["message"]
            assert "access-control-allow-origin" not in refused.headers
    assert plain.state.engine.stats["requests"] == before  # nothing was generated


def test_json_content_types_are_read(plain):
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.llamapyz+json", "application/json ;charset=UTF-8"):
        answered = post_as(plain, "/tokenize", {"content": "hi"}, content_type)
        assert answered.status_code == 200 and answered.json()["tokens"], content_type
    for content_type in ("application/jsonx", "application/+json", "json", "application/json-patch", "+json"):
        assert post_as(plain, "/tokenize", {"content": "hi"}, content_type).status_code == 415, content_type


def test_which_content_types_are_json():
    from llamapyz.server.http import is_json_media_type

    assert is_json_media_type("application/json") and is_json_media_type("APPLICATION/JSON; charset=utf-8")
    assert is_json_media_type("application/problem+json") and is_json_media_type("text/x+json")
    for value in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/json5", "/json", "application/+json", "text/json"):
        assert not is_json_media_type(value), value


def test_a_replica_refuses_a_body_not_sent_as_json(tiny_llama):
    """`serve --ray`: the front forwards the headers and the body; the replica runs the same app, so the
    same 415 (and the same 200 for JSON)."""
    from llamapyz.scale.replica import ReplicaServer, Request

    replica = ReplicaServer(ServeOptions(model=tiny_llama, n_ctx=N_CTX, n_slots=1, n_threads=1, webui=None,
                                         open_browser=False), say=lambda text: None)

    async def status(content_type: bytes | None) -> tuple[int, bytes]:
        headers = ((b"host", b"localhost"),) + (((b"content-type", content_type),) if content_type else ())
        items = [item async for item in replica.handle(Request("POST", "/tokenize", headers=headers),
                                                       json.dumps({"content": "hi"}).encode())]
        return items[0][1], b"".join(piece for _, piece in items[1:])

    try:
        for content_type in (b"text/plain", b"application/x-www-form-urlencoded", None):
            code, body = asyncio.run(status(content_type))
            assert code == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type", content_type
        assert asyncio.run(status(b"application/json"))[0] == 200
    finally:
        replica.state.pool.stop()


# --- unknown paths ---------------------------------------------------------------------------------------

def test_a_post_to_an_unknown_path_is_404_and_a_wrong_method_405(plain):
    for path in ("/nonexistent", "/v1/nope", "/v1/chat/completion", "/index.htm"):
        missing = httpx.post(plain.url + path, json={})
        assert missing.status_code == 404 and missing.json()["error"]["message"] == f"not found: {path}", path
    assert httpx.get(plain.url + "/nonexistent").status_code == 404
    wrong = httpx.get(plain.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]["message"]
    for path in ("/v1/models", "/health", "/"):  # there is something at these: a GET
        refused = httpx.post(plain.url + path, json={})
        assert refused.status_code == 405 and "GET" in refused.headers["allow"].replace(" ", "").split(","), path


# --- the request head: its deadline and size; the cap on connections (slowloris) ----------------------------

HEADER_TIMEOUT_S = 1.5
HEAD_MARGIN_S = 3.0  # a slow, shared machine may answer this late; never earlier than the deadline
HALF_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def heads(tiny_llama):
    """A short deadline for the request head, the connection cap at its default."""
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, header_timeout_s=HEADER_TIMEOUT_S) as live:
        yield live


def closed_after(sock: socket.socket, started: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed it (s after `started`)."""
    reply = read_until_closed(sock)
    return reply, time.monotonic() - started


def assert_in_deadline(elapsed_s: float) -> None:
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed_s < HEADER_TIMEOUT_S + HEAD_MARGIN_S, elapsed_s


def assert_head_timed_out(reply: bytes) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower(), reply[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "headers did not arrive" in error["message"]


def test_a_silent_connection_is_closed_at_the_head_deadline(heads):
    with raw(heads) as sock:
        reply, elapsed_s = closed_after(sock, time.monotonic())
    assert reply == b""  # nothing asked, nothing said
    assert_in_deadline(elapsed_s)


def test_half_a_head_is_408_at_the_deadline(heads):
    with raw(heads) as sock:
        started = time.monotonic()
        sock.sendall(HALF_HEAD)
        reply, elapsed_s = closed_after(sock, started)
    assert_head_timed_out(reply)
    assert_in_deadline(elapsed_s)


def test_a_trickled_head_is_408_however_steady_the_trickle(heads):
    """A byte every 0.1 s: the deadline runs from the connection's start, not from the last byte."""
    with raw(heads) as sock:
        started = time.monotonic()
        sock.sendall(HALF_HEAD)
        while time.monotonic() - started < HEADER_TIMEOUT_S + HEAD_MARGIN_S:
            sock.sendall(b"a")
            if select.select([sock], [], [], 0.1)[0]:
                break
        reply, elapsed_s = closed_after(sock, started)
    assert_head_timed_out(reply)
    assert_in_deadline(elapsed_s)


def read_response(sock: socket.socket) -> bytes:
    """One whole response (framed by Content-Length) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_the_deadline_starts_again_after_each_response_on_a_kept_alive_connection(heads):
    """Two requests on one connection, the second head sent late but within the deadline, then a third
    stalled halfway: the deadline counts from the end of the previous response (uvicorn's keep-alive timer
    stops at the first byte)."""
    whole = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with raw(heads) as sock:
        sock.sendall(whole)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_TIMEOUT_S * 0.4)
        sock.sendall(whole[:10])
        time.sleep(HEADER_TIMEOUT_S * 0.2)
        sock.sendall(whole[10:])  # in time, in parts
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.sendall(HALF_HEAD)
        reply, elapsed_s = closed_after(sock, started)
    assert_head_timed_out(reply)
    assert_in_deadline(elapsed_s)


def test_slowloris_stalled_sockets_are_closed_at_the_deadline_and_others_answered(heads):
    """100 sockets, half of them silent, half stuck in their headers: /health and a real request are answered
    at once meanwhile, every stalled socket is closed at the deadline, and the server answers after."""
    stalled = []
    try:
        started = time.monotonic()
        for i in range(100):
            sock = raw(heads)
            if i % 2:
                sock.sendall(HALF_HEAD)
            stalled.append(sock)
        for _ in range(3):
            asked = time.monotonic()
            assert httpx.get(heads.url + "/health", timeout=5).status_code == 200
            assert httpx.post(heads.url + "/tokenize", json={"content": "hi"}, timeout=5).status_code == 200
            assert time.monotonic() - asked < 2
        closed_at = {}
        while len(closed_at) < len(stalled) and time.monotonic() - started < HEADER_TIMEOUT_S + HEAD_MARGIN_S + 2:
            readable, _, _ = select.select([s for s in stalled if s not in closed_at], [], [], 0.5)
            for sock in readable:
                if not sock.recv(65536):  # the close (after a 408, for those that sent part of a head)
                    closed_at[sock] = time.monotonic() - started
        assert len(closed_at) == len(stalled), f"{len(stalled) - len(closed_at)} stalled sockets still open"
        assert HEADER_TIMEOUT_S * 0.9 <= min(closed_at.values())
        assert max(closed_at.values()) < HEADER_TIMEOUT_S + HEAD_MARGIN_S + 2  # the last opened ~1 s after the first
        assert httpx.get(heads.url + "/health", timeout=5).status_code == 200
        assert httpx.post(heads.url + "/tokenize", json={"content": "hi"}, timeout=5).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_head_over_the_limit_in_one_read_is_431(heads):
    """The limit holds however the head arrives; a head of exactly MAX_HEADER_BYTES is still read."""

    def head_of(size: int) -> bytes:
        start, end = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ", b"\r\n\r\n"
        return start + b"a" * (size - len(start) - len(end)) + end

    for size, status in ((MAX_HEADER_BYTES, b"200"), (MAX_HEADER_BYTES + 1, b"431"), (20_000, b"431")):
        with raw(heads) as sock:
            sock.sendall(head_of(size))
            reply = read_response(sock) if status == b"200" else read_until_closed(sock)
        assert reply.startswith(b"HTTP/1.1 " + status + b" "), (size, reply[:200])
        if status == b"431":
            assert f"larger than {MAX_HEADER_BYTES} bytes".encode() in reply
    assert httpx.get(heads.url + "/health").status_code == 200


def test_connections_over_the_cap_are_turned_away_logged_once_and_the_server_recovers(tiny_llama, caplog,
                                                                                         monkeypatch):
    """With the cap held by stalled sockets, one more connection is a 503 and closed at once (never a hang),
    the log says so in one line per period, and once the stalled ones reach the deadline all is answered."""
    from llamapyz.server import connections

    monkeypatch.setattr(connections, "LOG_EVERY_S", 1.0)
    cap, extra, timeout_s = 16, 8, 3.0
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, header_timeout_s=timeout_s, max_connections=cap) as live:
        caplog.set_level("WARNING", logger="llamapyz.server")
        stalled = [raw(live) for _ in range(cap)]
        try:
            started = time.monotonic()
            time.sleep(0.3)  # all accepted
            for _ in range(extra - 1):
                with raw(live) as sock:
                    reply = read_until_closed(sock)
                head, _, body = reply.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head.lower(), reply[:200]
                assert json.loads(body)["error"]["code"] == "overloaded"
            busy = httpx.get(live.url + "/health", timeout=5)  # refused at once, not left waiting
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert not select.select(stalled, [], [], 0)[0]  # all that while the cap was held
            for sock in stalled:
                assert closed_after(sock, started)[0] == b""
            assert timeout_s * 0.9 <= time.monotonic() - started < timeout_s + HEAD_MARGIN_S
            assert httpx.get(live.url + "/health", timeout=5).status_code == 200
            assert httpx.post(live.url + "/tokenize", json={"content": "hi"}, timeout=5).status_code == 200
            time.sleep(1.5)  # the period's summary line
        finally:
            for sock in stalled:
                sock.close()
    lines = [r.getMessage() for r in caplog.records if "turned away" in r.getMessage()]
    counts = [int(line.split("turned away ")[1].split(" ")[0]) for line in lines]
    assert len(lines) == 2 and counts[0] == 1 and sum(counts) == extra, lines  # every refusal told, in 2 lines
    assert f"--max-connections {cap}" in lines[0] and "--header-timeout-s" in lines[0]


def test_306_stalled_sockets_against_a_256_descriptor_limit(tiny_llama):
    """The probe's case: `serve` under `ulimit -n 256` and 306 stalled sockets. The cap (default: 128 here)
    keeps descriptors free, so the excess is refused at once, and /health answers again once the stalled ones
    reach --header-timeout-s."""
    launcher = ["bash", "-c", 'ulimit -n 256 && exec "$@"', "serve", sys.executable, "-m", "llamapyz", "serve"]
    with ServerProcess(tiny_llama, "-c", str(N_CTX), "-np", "1", "--header-timeout-s", "2", launcher=launcher) as live:
        stalled = []
        try:
            started = time.monotonic()
            for i in range(306):
                sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
                if i % 2:
                    sock.sendall(HALF_HEAD)
                stalled.append(sock)
            meanwhile = httpx.get(live.url + "/health", timeout=5)  # at once: 200, or 503 while the cap is held
            assert meanwhile.status_code in (200, 503)
            while time.monotonic() - started < 2 + HEAD_MARGIN_S + 5:
                if httpx.get(live.url + "/health", timeout=5).status_code == 200:
                    break
                time.sleep(0.2)
            recovered_s = time.monotonic() - started
            assert httpx.get(live.url + "/health", timeout=5).status_code == 200, f"{recovered_s:.1f} s"
            assert httpx.post(live.url + "/tokenize", json={"content": "hi"}, timeout=5).status_code == 200
            for sock in stalled:  # every one answered (503 or 408) or closed, none left hanging
                sock.settimeout(HEAD_MARGIN_S)
                with contextlib.suppress(ConnectionResetError):  # refused before its half head came: a reset
                    read_until_closed(sock)
        finally:
            for sock in stalled:
                sock.close()
    assert "turned away" in live.output and "--max-connections 128" in live.output, live.output[-2000:]
