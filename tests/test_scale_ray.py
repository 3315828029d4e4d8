"""`llamapyz serve --ray` on a local Ray cluster started by the command (llamapyz/scale), with two replicas of
SmolLM2: the openai client's calls, many clients at once, prefix-aware routing, and a replica killed under a
streaming load. Each request has REQUEST_TIMEOUT_S; the module takes a few minutes on a 2-core machine."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.live_server import RayServer, ray_pids, replica_pids

pytestmark = [pytest.mark.slow, pytest.mark.real_model,
              # found, not imported: Ray runs in the server's processes, never in pytest's
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the [ray] extra is not installed")]

REQUEST_TIMEOUT_S = 60.0  # no request may take longer, replica killed or not
REPLACED_TIMEOUT_S = 120.0  # a killed replica is replaced (and has loaded its model) within this
KEY = "test-key"  # the server asks for one, so that the front's own answers (/metrics) are seen to respect it
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    if ray_pids():  # --ray would join it, and the checks below count this machine's Ray processes
        pytest.skip("a Ray cluster is already running on this machine")
    with RayServer(smollm2_path, log, "--replicas", "2", "-t", "1", "-np", "8", "-c", "1024",
                   "--api-key", KEY) as live:
        yield live
    deadline = time.monotonic() + 30
    while ray_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_pids(), "stopped with SIGTERM, the command left Ray processes running"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=REQUEST_TIMEOUT_S, max_retries=0)


def chat(server, messages: list[dict], **fields) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=REQUEST_TIMEOUT_S)


def metrics(server) -> dict[str, float]:
    """/metrics as {name: value}: every replica's counters summed by the front."""
    response = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return {name.removeprefix("llamapyz:"): float(value)
            for name, value in (line.split() for line in response.text.splitlines() if line and line[0] != "#")}


def test_the_openai_clients_calls_and_the_models_list(server, client):
    reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi."}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0,
        stream=True) if chunk.choices]
    assert "".join(pieces) == reply.choices[0].message.content  # greedy: the same words, streamed
    listed = httpx.get(server.url + "/v1/models", headers=AUTH, timeout=10).json()
    assert [(m["id"], m["status"]) for m in listed["data"]] == [("SmolLM2-135M-Instruct.Q4_1", "loaded")]
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401  # the key guards the front's answer too


def test_16_clients_50_requests_each_all_succeed_on_both_replicas(server, client):
    before = metrics(server)["requests_total"]

    def one_client(i: int) -> list[str]:
        served = []
        for j in range(50):
            raw = client.chat.completions.with_raw_response.create(
                model="smollm2", messages=[{"role": "user", "content": f"Client {i}: name a colour."}],
                max_tokens=2, temperature=0, seed=j)
            assert raw.parse().choices[0].finish_reason in ("length", "stop")
            served.append(raw.headers["llamapyz-replica"])
        return served

    with ThreadPoolExecutor(16) as pool:
        served = [name for names in pool.map(one_client, range(16)) for name in names]
    assert len(served) == 800 and len(set(served)) == 2
    time.sleep(3)  # replicas post their counters every 2 s
    after = metrics(server)
    assert after["requests_total"] - before >= 800 and after["replicas"] == 2  # /metrics: both replicas summed


def test_a_conversation_stays_on_its_replica_and_conversations_spread(server):
    def conversation(i: int) -> list[tuple[str, int]]:
        messages, seen = [{"role": "user", "content": f"Conversation {i}: tell me about the number {i}."}], []
        for turn in range(3):
            response = chat(server, messages)
            assert response.status_code == 200, response.text
            reply = response.json()
            seen.append((response.headers["llamapyz-replica"], reply["timings"]["cache_n"]))
            messages += [reply["choices"][0]["message"], {"role": "user", "content": f"And then {turn}?"}]
        return seen

    with ThreadPoolExecutor(6) as pool:
        conversations = list(pool.map(conversation, range(6)))
    for seen in conversations:
        assert len({replica for replica, _ in seen}) == 1, seen  # every turn on one replica
        assert all(cache_n > 0 for _, cache_n in seen[1:]), seen  # its earlier turns were cached there
    assert len({seen[0][0] for seen in conversations}) == 2  # and conversations spread over both


def stream_once(url: str, i: int) -> tuple[str, str | None]:
    """One streamed chat: ("done", replica), or ("error", what the client saw: a 503 or an error event)."""
    body = {"messages": [{"role": "user", "content": f"Stream {i}: count slowly."}], "max_tokens": 24,
            "stream": True, "temperature": 0.7}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=AUTH,
                      timeout=REQUEST_TIMEOUT_S) as response:
        if response.status_code != 200:
            error = json.loads(response.read())["error"]
            assert response.status_code == 503 and error["code"] == "replica_failed", error
            return "error", error["code"]
        replica = response.headers["llamapyz-replica"]
        for line in response.iter_lines():
            if line == "data: [DONE]":
                return "done", replica
            if line.startswith("data: ") and "error" in json.loads(line[6:]):
                assert json.loads(line[6:])["error"]["code"] == "replica_failed"
                return "error", replica
    raise AssertionError("the stream ended without [DONE] or an error event")


def test_a_killed_replica_ends_its_requests_cleanly_and_is_replaced(server):
    before = replica_pids()
    assert len(before) == 2
    results: list[tuple[float, float, str, str | None]] = []  # (started, ended, outcome, replica)
    stop = threading.Event()

    def load(i: int) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            outcome, replica = stream_once(server.url, i * 1000 + n)
            results.append((started, time.monotonic(), outcome, replica))
            n += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    killed_at = time.monotonic()
    os.kill(before[0], signal.SIGKILL)
    deadline = killed_at + REPLACED_TIMEOUT_S
    replaced = False
    while time.monotonic() < deadline and not replaced:
        time.sleep(1)
        now = set(replica_pids())
        names_after = {r for s, _, o, r in results if s > killed_at + 1 and o == "done"}
        replaced = len(now - set(before)) >= 1 and len(now) == 2 and len(names_after) == 2
    replaced_at = time.monotonic()
    time.sleep(3)  # load goes on over the new replica
    stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 5)
        assert not thread.is_alive(), "a request hung"
    assert replaced, f"no replacement within {REPLACED_TIMEOUT_S} s: replicas {replica_pids()}"
    assert all(ended - started < REQUEST_TIMEOUT_S for started, ended, _, _ in results)
    errors = [r for r in results if r[2] == "error"]
    assert len(errors) <= 6 * 2, errors  # only requests in flight at the kill (one more each if unlucky)
    late = [r for r in results if r[0] > replaced_at]  # (a replacement can take 3 s or 20: not a fixed time)
    assert late and all(outcome == "done" for _, _, outcome, _ in late)  # then every request succeeds
