"""One replica's server driven in-process (llamapyz/scale/replica.py), without Ray, on a tiny synthetic model:
it answers as the single-process server does, streams piece by piece, cancels a request whose reader left,
and reports itself unhealthy when its engine thread is gone. And the Ray front's own answers
(llamapyz/scale/deployment.py, Ray imported but no cluster, the replicas' handle faked): its refusals are
the single server's errors, every 503 with Retry-After, and a replica's answer goes through as it is."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from llamapyz.scale.replica import REPLICA_HEADER, ReplicaServer, ReplicaUnhealthy, Request
from llamapyz.server import ServeOptions
from tests.synth import write_model

HOST = ((b"host", b"localhost"), (b"content-type", b"application/json"))


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    path = tmp_path_factory.mktemp("replica") / "tiny.gguf"
    write_model(path, "llama", "Q8_0")
    server = ReplicaServer(ServeOptions(model=str(path), n_ctx=256, n_slots=2, n_threads=1, open_browser=False),
                           name="r1", say=lambda text: None)
    yield server
    server.state.pool.stop()


def answer(replica: ReplicaServer, path: str, body: dict | None = None, stop_after: int | None = None):
    async def collect():
        items = []
        stream = replica.handle(Request("POST" if body is not None else "GET", path, headers=HOST),
                                json.dumps(body).encode() if body is not None else b"")
        async for item in stream:
            items.append(item)
            if stop_after is not None and len(items) >= stop_after:
                await stream.aclose()
                break
        return items

    return asyncio.run(collect())


def test_a_chat_completion_is_the_apps_answer_with_the_replicas_name(replica):
    items = answer(replica, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 4, "temperature": 0})
    kind, status, headers = items[0]
    assert (kind, status) == ("start", 200) and (REPLICA_HEADER.encode(), b"r1") in headers
    reply = json.loads(b"".join(piece for _, piece in items[1:]))
    assert reply["usage"]["completion_tokens"] == 4


def test_a_stream_comes_in_pieces_and_a_reader_leaving_cancels_its_job(replica):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
    items = answer(replica, "/v1/chat/completions", body)
    assert len(items) > 4 and items[-1][1].endswith(b"data: [DONE]\n\n")
    engine = replica.state.engine
    cancelled = engine.stats["requests_cancelled"]
    answer(replica, "/v1/chat/completions", {**body, "max_tokens": 10_000}, stop_after=3)
    deadline = time.monotonic() + 10
    while engine.stats["requests_cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats["requests_cancelled"] == cancelled + 1 and engine.n_running == 0


def test_health_and_stats(replica):
    asyncio.run(replica.check_health())
    assert replica.stats()["tiny"]["stats"]["requests"] >= 1


def test_a_dead_engine_thread_makes_the_replica_unhealthy(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_model(path, "llama", "Q8_0")
    server = ReplicaServer(ServeOptions(model=str(path), n_ctx=256, n_slots=1, n_threads=1, open_browser=False),
                           say=lambda text: None)
    server.state.engine.stop()  # the thread ends, as it would after a fatal error
    with pytest.raises(ReplicaUnhealthy, match="engine thread"):
        asyncio.run(server.check_health())


def test_a_model_that_cannot_load_fails_the_replica(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ReplicaUnhealthy, match="could not be loaded"):
        ReplicaServer(ServeOptions(model=str(path), open_browser=False), say=lambda text: None)


# --- the Ray front's own answers ------------------------------------------------------------------------------

class FakeStream:
    """A replica's answer as the front sees a Ray stream: the replica's items, or `error` at the first."""

    def __init__(self, items=None, error: Exception | None = None) -> None:
        self.items, self.error, self.cancelled = items, error, False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self):
        if self.error is not None:
            raise self.error
        return await self.items.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeReplicas:
    """The front's DeploymentHandle: each call's stream from `answer(request, body)`."""

    def __init__(self, answer) -> None:
        self.answer, self.handle, self.calls = answer, self, 0

    def options(self, **kwargs) -> FakeReplicas:
        return self

    def remote(self, request: Request, body: bytes, prefix_keys: tuple = ()) -> FakeStream:
        self.calls += 1
        return self.answer(request, body)


def front_answer(answer, body: bytes | None = b"{}", max_body_bytes: int = 1 << 20,
                 body_timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes, FakeReplicas]:
    """The front's answer to a POST /v1/completions whose replicas answer with `answer`; `body` None: the
    client never sends its body."""
    from starlette.requests import Request as HttpRequest

    from llamapyz.scale.deployment import LlamapyzFront

    replicas = FakeReplicas(answer)
    front = LlamapyzFront(replicas, board=None, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
                          prefix_routing=False)
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "raw_path": b"/v1/completions",
             "query_string": b"", "headers": list(HOST), "client": ("127.0.0.1", 1), "scheme": "http",
             "server": ("127.0.0.1", 8000), "root_path": "", "http_version": "1.1"}

    async def run() -> tuple[int, dict[str, str], bytes]:
        sent_body = False

        async def receive() -> dict:
            nonlocal sent_body
            if body is None or sent_body:
                await asyncio.sleep(3600)  # a stalled client; or, once the body is in, one that stays
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}

        messages = []

        async def send(message: dict) -> None:
            messages.append(message)

        response = await front(HttpRequest(scope, receive))
        await response(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in messages[0]["headers"]}
        return messages[0]["status"], headers, b"".join(m.get("body", b"") for m in messages[1:])

    return (*asyncio.run(run()), replicas)


def test_the_fronts_refusals_are_the_single_servers_errors():
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    from llamapyz.server.http import BodyTimeout

    def failing(error: Exception):
        return lambda request, body: FakeStream(error=error)

    status, headers, body, _ = front_answer(failing(AssertionError("not asked")), body=b"x" * 17, max_body_bytes=16)
    error = json.loads(body)["error"]
    assert (status, error["type"], error["code"]) == (413, "invalid_request_error", "request_too_large")

    status, headers, body, _ = front_answer(failing(AssertionError("not asked")), body=None, body_timeout_s=0.2)
    assert status == 408 and json.loads(body) == BodyTimeout(0.2).body()  # the single server's 408, typed alike
    assert json.loads(body)["error"]["type"] == "invalid_request_error"

    status, headers, body, _ = front_answer(failing(BackPressureError(num_queued_requests=1, max_queued_requests=1)))
    assert (status, json.loads(body)["error"]["code"], headers["retry-after"]) == (503, "overloaded", "1")

    status, headers, body, replicas = front_answer(failing(RayActorError()))
    error = json.loads(body)["error"]
    assert (status, error["type"], error["code"], headers["retry-after"]) == (503, "unavailable_error",
                                                                              "replica_failed", "1")
    assert replicas.calls == 2  # tried another replica once

    status, headers, body, _ = front_answer(failing(RayTaskError("handle", "Traceback: boom", ValueError("boom"))))
    error = json.loads(body)["error"]
    assert (status, error["type"]) == (500, "server_error") and "boom" not in body.decode()
    assert "retry-after" not in headers


def test_the_front_relays_a_replicas_503_with_its_retry_after(replica, monkeypatch):
    """A 503 of the replica's (its grammar workers all busy) reaches the client with the replica's Retry-After."""
    import threading

    from llamapyz.decode import constraint
    from llamapyz.decode import grammar_limits as limits

    workers, release = limits.Workers(max_workers=1), threading.Event()
    workers.submit(release.wait)  # the only worker, stuck
    monkeypatch.setattr(constraint, "WORKERS", workers)
    monkeypatch.setattr(limits, "COMPILE_TIMEOUT_S", 0.3)
    body = json.dumps({"prompt": "a", "max_tokens": 2, "response_format": {"type": "json_object"}}).encode()
    try:
        status, headers, answer, _ = front_answer(lambda request, body: FakeStream(replica.handle(request, body)),
                                                  body=body)
    finally:
        release.set()
    assert (status, json.loads(answer)["error"]["code"], headers["retry-after"]) == (503, "overloaded", "1")
    assert headers[REPLICA_HEADER] == "r1"
