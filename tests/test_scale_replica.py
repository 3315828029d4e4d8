"""One replica's server driven in-process (llamapyz/scale/replica.py), without Ray, on a tiny synthetic model:
it answers as the single-process server does, streams piece by piece, cancels a request whose reader left,
and reports itself unhealthy when its engine thread is gone."""

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
