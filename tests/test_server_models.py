"""Several models behind one server (llamapyz/server/pool.py), on two tiny synthetic models of different
architectures: each request's `model` picks one (alias, file name or stem), and each answers as it does served
alone; unknown names are a 404 naming the others; models load on first use, at most models_max at once, and a
request for a model that is loading waits for it; a model that cannot load hurts no other; with models_max
reached, a model that requests wait for gets its turn within the switch time however busy the others are,
and a client that gives up while it waits moves no model."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from llamapyz.server.config_file import ModelSpec
from llamapyz.server.pool import POLL_S
from tests.live_server import ServerProcess, ServerThread
from tests.synth import write_model

N_CTX = 256
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    llama, qwen = folder / "tiny-llama.gguf", folder / "tiny-qwen2.gguf"
    write_model(llama, "llama", "Q8_0")
    write_model(qwen, "qwen2", "Q4_0", seed=1)
    return llama, qwen


def specs(files) -> list[ModelSpec]:
    return [ModelSpec(str(files[0]), "llama-a"), ModelSpec(str(files[1]), "qwen-b")]


def chat(server, model: str | None, text: str = "Hello there", **fields) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], **GREEDY, **fields}
    if model is not None:
        body["model"] = model
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def states(server) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(server.url + "/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def alone(files) -> dict[str, list[str]]:
    """Each model's answers to two prompts, served alone."""
    answers = {}
    for alias, path in zip(["llama-a", "qwen-b"], files, strict=True):
        with ServerThread(path, n_ctx=N_CTX, n_slots=2) as live:
            answers[alias] = [answer(chat(live, None, text)) for text in ("Hello there", "Count to five")]
    return answers


def test_each_request_gets_the_model_it_names(files, alone):
    with ServerThread(None, models=specs(files), n_ctx=N_CTX, n_slots=2) as live:
        assert states(live) == {"llama-a": "loaded", "qwen-b": "not loaded"}  # the first loads at start
        for _ in range(2):  # alternating, by alias, file name and stem
            for alias, names in (("llama-a", ["llama-a", "tiny-llama.gguf"]), ("qwen-b", ["qwen-b", "tiny-qwen2"])):
                for name in names:
                    response = chat(live, name)
                    assert answer(response) == alone[alias][0]
                    assert response.json()["model"] == alias
        assert states(live) == {"llama-a": "loaded", "qwen-b": "loaded"}
        assert answer(chat(live, None)) == alone["llama-a"][0]  # no name: the first

        missing = chat(live, "gpt-4")
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "llama-a, qwen-b" in error["message"]

        # concurrent requests to both, each as it is alone
        asks = [("llama-a", "Hello there"), ("qwen-b", "Count to five"), ("qwen-b", "Hello there"),
                ("llama-a", "Count to five")] * 2
        with ThreadPoolExecutor(len(asks)) as pool:
            got = list(pool.map(lambda ask: answer(chat(live, *ask)), asks))
        prompts = {"Hello there": 0, "Count to five": 1}
        assert got == [alone[alias][prompts[text]] for alias, text in asks]

        props = httpx.get(live.url + "/props", params={"model": "qwen-b"}).json()
        assert props["model_alias"] == "qwen-b" and props["architecture"] == "qwen2"
        tokens = httpx.post(live.url + "/tokenize", json={"content": "hi", "model": "qwen-b"}).json()["tokens"]
        assert tokens and httpx.post(live.url + "/detokenize", json={"tokens": tokens, "model": "qwen-b"}
                                     ).json()["content"].endswith("hi")
        models = httpx.get(live.url + "/v1/models").json()["data"]
        assert [m["meta"]["architecture"] for m in models] == ["llama", "qwen2"]


def test_at_most_models_max_are_loaded(files, alone):
    with ServerThread(None, models=specs(files), n_ctx=N_CTX, n_slots=2, models_max=1) as live:
        assert answer(chat(live, "qwen-b")) == alone["qwen-b"][0]
        assert states(live) == {"llama-a": "not loaded", "qwen-b": "loaded"}  # llama-a made room
        first = live.state.pool.models[0]
        assert first.engine is None
        assert answer(chat(live, "llama-a", "Count to five")) == alone["llama-a"][1]  # loaded again
        assert states(live) == {"llama-a": "loaded", "qwen-b": "not loaded"}


def test_requests_wait_for_their_model_to_load(files, alone):
    with ServerThread(None, models=specs(files), n_ctx=N_CTX, n_slots=2) as live:
        loads = []
        load = live.state.pool.load_engine
        live.state.pool.load_engine = lambda spec: loads.append(spec.alias) or load(spec)
        with ThreadPoolExecutor(4) as pool:  # all arrive before it is loaded: one load, four answers
            got = list(pool.map(lambda _: answer(chat(live, "qwen-b")), range(4)))
        assert got == [alone["qwen-b"][0]] * 4 and loads == ["qwen-b"]


def test_a_model_that_cannot_load_hurts_no_other(files, tmp_path, alone):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    models = [*specs(files), ModelSpec(str(broken), "broken")]
    with ServerThread(None, models=models, n_ctx=N_CTX, n_slots=2) as live:
        failed = chat(live, "broken")
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "load_failed"
        assert "broken" in failed.json()["error"]["message"]
        assert states(live)["broken"] == "failed"
        assert answer(chat(live, "qwen-b")) == alone["qwen-b"][0]
        assert httpx.get(live.url + "/health").status_code == 200


def test_serve_takes_several_models_and_a_config(files, tmp_path, alone):
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"port": 1, "models": [{"model": str(files[1]), "model_alias": "qwen-b",
                                                           "n_ctx": N_CTX, "offload_kqv": True}]}))
    # the port given here overrides the config's; -m adds a model beside the config's
    with ServerProcess(None, "--config", str(config), "-m", str(files[0]), "-c", str(N_CTX), "-np", "2") as live:
        assert states(live) == {"qwen-b": "loaded", "tiny-llama": "not loaded"}
        assert answer(chat(live, "tiny-llama")) == alone["llama-a"][0]
        assert answer(chat(live, "qwen-b")) == alone["qwen-b"][0]


def test_props_and_metrics_of_a_model_not_loaded_load_nothing(files, tmp_path):
    """/props and /metrics answer for a model that is not loaded from what is known (its spec and state; zero
    counters), and never load it, nor unload another to make room for it (models_max 1 here)."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    models = [*specs(files), ModelSpec(str(broken), "broken")]
    with ServerThread(None, models=models, n_ctx=N_CTX, n_slots=2, models_max=1) as live:
        pool, loads = live.state.pool, []
        load = pool.load_engine
        pool.load_engine = lambda spec: loads.append(spec.alias) or load(spec)
        assert answer(chat(live, "llama-a"))  # llama-a has counts of its own

        for _ in range(2):
            props = httpx.get(live.url + "/props", params={"model": "qwen-b"})
            assert props.status_code == 200, props.text
            body = props.json()
            assert (body["model_alias"], body["loaded"], body["status"]) == ("qwen-b", False, "not loaded")
            assert body["model_path"] == str(files[1]) and body["n_ctx"] == N_CTX and body["load_error"] is None
            assert body["default_generation_settings"]["temperature"] == 0.8
            counters = metric_values(httpx.get(live.url + "/metrics", params={"model": "qwen-b"}))
            assert counters["requests_total"] == 0 and set(counters.values()) == {0}
            time.sleep(4 * POLL_S)
        assert metric_values(httpx.get(live.url + "/metrics", params={"model": "llama-a"}))["requests_total"] >= 1
        loaded = httpx.get(live.url + "/props", params={"model": "llama-a"}).json()
        assert loaded["loaded"] is True and loaded["status"] == "loaded" and loaded["architecture"] == "llama"
        assert states(live) == {"llama-a": "loaded", "qwen-b": "not loaded", "broken": "not loaded"}
        assert loads == [] and not [t for t in threading.enumerate() if t.name.startswith("llamapyz-load")]

        assert chat(live, "broken").status_code == 503  # a request loads it, and it fails
        failed = httpx.get(live.url + "/props", params={"model": "broken"}).json()
        assert failed["loaded"] is False and failed["status"] == "failed" and failed["load_error"]
        assert httpx.get(live.url + "/props", params={"model": "gpt-4"}).status_code == 404


def metric_values(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {name.removeprefix("llamapyz:"): float(value)
            for name, value in (line.split() for line in response.text.splitlines() if line and line[0] != "#")}


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]


@pytest.mark.slow
@pytest.mark.real_model
def test_two_real_models_behind_one_server(smollm2_path, gemma3_path, smollm2_server, tmp_path):
    """SmolLM2 and Gemma 3 behind one server answer as each does served alone (greedy), alternately and at
    once; with --models-max 1 each switch unloads the other, and the memory goes with it."""
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": [{"model": str(smollm2_path), "model_alias": "smollm2"},
                                             {"model": str(gemma3_path), "model_alias": "gemma"}]}))
    asks = [(alias, text) for text in PROMPTS for alias in ("gemma", "smollm2")]
    alone = {("smollm2", text): answer(chat(smollm2_server, None, text, max_tokens=24)) for text in PROMPTS}
    with ServerProcess(gemma3_path, "-c", "2048", "-t", "2") as gemma:
        alone |= {("gemma", text): answer(chat(gemma, None, text, max_tokens=24)) for text in PROMPTS}

    with ServerProcess(None, "--config", str(config), "-c", "2048", "-t", "2", "--models-max", "1") as live:
        file_mib = {}  # (round, alias) -> resident MiB of mapped files
        for i, (alias, text) in enumerate(asks):  # alternating: every request switches models
            assert answer(chat(live, alias, text, max_tokens=24)) == alone[alias, text]
            file_mib[i // 2, alias] = live.rss_mib("RssFile")
            assert states(live) == {"smollm2": "loaded" if alias == "smollm2" else "not loaded",
                                    "gemma": "loaded" if alias == "gemma" else "not loaded"}
        # the mapping goes with the model: Gemma's weights (241 MiB, every page read by a forward pass) leave
        # the process's memory when SmolLM2's (94 MiB) come in, each round (measured: 334 -> 186 MiB)
        for round_ in (0, 1):
            assert file_mib[round_, "gemma"] - file_mib[round_, "smollm2"] > 100, file_mib

    with ServerProcess(None, "--config", str(config), "-c", "2048", "-t", "2", "--preload") as live:
        assert states(live) == {"smollm2": "loaded", "gemma": "loaded"}
        with ThreadPoolExecutor(len(asks)) as pool:  # both at once
            got = list(pool.map(lambda ask: answer(chat(live, ask[0], ask[1], max_tokens=24)), asks))
        assert got == [alone[ask] for ask in asks]


# --- fairness with --models-max reached: a waiting model's turn comes, and a client that leaves moves nothing ---

SWITCH_S = 0.5  # model_switch_s of these tests
NO_EOG = {"0": -100, "1": -100}  # the tiny models' end-of-generation tokens, barred: a completion runs its max_tokens


def slow_down(served, step_s: float) -> None:
    """Each decode step of `served`'s engine takes `step_s` more: its requests stay in the engine (not in
    HTTP) most of their time, as a real model's do."""
    model = served.engine.model
    step = model.step  # the engine's pass each turn

    def slow_step(*args, **kwargs):
        time.sleep(step_s)
        return step(*args, **kwargs)

    model.step = slow_step


def keep_busy(live, alias: str, n_clients: int, stop: threading.Event, answers: list) -> list[threading.Thread]:
    """`n_clients` clients asking `alias` one chat after another until `stop`: twice its slots, so it is never
    idle; each answer (its end time, its text or status) goes to `answers`."""

    def client() -> None:
        while not stop.is_set():
            response = chat(live, alias)
            answers.append((time.monotonic(), response.json()["choices"][0]["message"]["content"]
                            if response.status_code == 200 else response.status_code))

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(answers) < 2 * n_clients:
        assert time.monotonic() < deadline, "the stream did not start"
        time.sleep(0.01)
    return threads


def test_a_waiting_model_is_served_within_the_switch_time_under_a_steady_stream(files, alone):
    """With models_max 1 and a steady stream for llama-a (it is never idle), a request for qwen-b waits at
    most SWITCH_S before llama-a is drained: its running requests finish, it unloads, qwen-b loads and
    answers. Then llama-a's requests wait their turn the same way, and its stream goes on."""
    with ServerThread(None, models=specs(files), n_ctx=N_CTX, n_slots=2, models_max=1, model_switch_s=SWITCH_S,
                      load_timeout_s=20) as live:
        slow_down(live.state.pool.models[0], 0.02)  # 8 tokens: 160 ms at least
        stop, answers = threading.Event(), []
        threads = keep_busy(live, "llama-a", 4, stop, answers)
        started = time.monotonic()
        other = chat(live, "qwen-b")
        waited = time.monotonic() - started
        deadline = time.monotonic() + 20
        while not any(end > started + waited for end, _ in answers):  # llama-a's turn again
            assert time.monotonic() < deadline, "llama-a was not served again"
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert answer(other) == alone["qwen-b"][0]
    # the bound: SWITCH_S, then llama-a's last 8-token chats finish and qwen-b loads (a tiny model: well
    # under a second; without the switch it waited for its load_timeout_s, 20 s, and got a 503)
    assert waited < SWITCH_S + 5, waited
    assert {text for _, text in answers} == {alone["llama-a"][0]}  # every one answered, as alone


def test_a_client_that_gives_up_while_waiting_moves_no_model(files):
    """A client for qwen-b gives up while llama-a is busy (after llama-a's drain for it began): the drain is
    dropped, llama-a takes requests again at once, and qwen-b is never loaded, not even once llama-a is idle."""
    with ServerThread(None, models=specs(files), n_ctx=N_CTX, n_slots=2, models_max=1, model_switch_s=SWITCH_S,
                      load_timeout_s=20) as live:
        pool = live.state.pool
        first, loads = pool.models[0], []
        load = pool.load_engine
        pool.load_engine = lambda spec: loads.append(spec.alias) or load(spec)
        slow_down(first, 0.05)  # an 80-token reply holds llama-a for 4 s at least
        long_reply: dict = {}
        busy = threading.Thread(target=lambda: long_reply.setdefault("response", httpx.post(
            live.url + "/v1/completions", timeout=60,
            json={"model": "llama-a", "prompt": "Once", "max_tokens": 80, "logit_bias": NO_EOG})))
        busy.start()
        deadline = time.monotonic() + 30
        while first.engine.n_running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1.5 s: past SWITCH_S
            httpx.post(live.url + "/v1/chat/completions", timeout=1.5,
                       json={"model": "qwen-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        drained_at_give_up = first.draining
        deadline = time.monotonic() + 5
        while first.draining or any(m.waits for m in pool.models):  # the gone client is noticed at its next poll
            assert time.monotonic() < deadline, "the abandoned wait still counts"
            time.sleep(0.01)
        quick = chat(live, "llama-a", max_tokens=2)  # llama-a takes requests again, beside the long one
        assert quick.status_code == 200 and busy.is_alive()
        busy.join(60)
        time.sleep(4 * POLL_S)  # llama-a is idle now: a wait that still counted would load qwen-b here
        assert states(live) == {"llama-a": "loaded", "qwen-b": "not loaded"} and loads == []
    assert drained_at_give_up  # the switch had begun (and was dropped)
    assert long_reply["response"].json()["usage"]["completion_tokens"] == 80
