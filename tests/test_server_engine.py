"""The engine's queue (llamapyz/server/engine.py), on the tiny model: a request cancelled while it waits for a
slot leaves the queue at once, so /metrics' `requests_deferred` counts only requests that still wait."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from tests.live_server import ServerThread

NO_EOG = {"0": -100, "1": -100}  # the tiny model's end-of-generation tokens, barred: a completion runs its max_tokens


def deferred(live) -> int:
    text = httpx.get(live.url + "/metrics").text
    return int(next(line.split()[-1] for line in text.splitlines() if line.startswith("llamapyz:requests_deferred")))


def test_a_request_cancelled_while_it_waits_is_not_counted_as_deferred(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=64, n_slots=1) as live:
        engine, model = live.state.engine, live.state.model
        step = model.step  # the engine's pass each turn
        model.step = lambda *args, **kwargs: time.sleep(0.05) or step(*args, **kwargs)  # 40 steps: 2 s
        long_reply: dict = {}
        busy = threading.Thread(target=lambda: long_reply.setdefault("response", httpx.post(
            live.url + "/v1/completions", json={"prompt": "a", "max_tokens": 40, "logit_bias": NO_EOG}, timeout=60)))
        busy.start()
        deadline = time.monotonic() + 30
        while engine.n_running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        body = json.dumps({"prompt": "b", "max_tokens": 2}).encode()  # waits for the only slot, then leaves
        host, port = live.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(body), body))
        while deferred(live) != 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        client.close()
        while deferred(live) != 0:  # the server notices within its disconnect poll (0.25 s)
            assert time.monotonic() < deadline, "the cancelled request still counts as deferred"
            time.sleep(0.01)
        assert busy.is_alive() and engine.n_running == 1  # the slot never came free: it left the queue itself
        busy.join(60)
    assert long_reply["response"].json()["usage"]["completion_tokens"] == 40
