"""Texts measured before they are tokenized (llamapyz/server/text_bounds.py), on the tiny model (its longest
token is 13 characters): a prompt, chat messages, an embedding input or a /tokenize text whose length alone
shows it cannot fit in the context is refused (400 context_length_exceeded) without tokenizing it, quickly,
while a concurrent stream goes on unharmed; a text within the bound is tokenized and its real count decides."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.live_server import ServerThread

N_CTX = 256
NO_EOG = {"0": -100, "1": -100}  # the tiny model's end-of-generation tokens, barred: a completion runs its max_tokens


@pytest.fixture(scope="module")
def live(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=2) as server:
        yield server


@pytest.fixture
def tokenized(live) -> list[str]:
    """The model's tokenizing calls during the test (tokenize, chat_tokens), by name."""
    model, seen = live.state.model, []
    reals = {name: getattr(model, name) for name in ("tokenize", "chat_tokens")}
    for name, real in reals.items():
        setattr(model, name,
                lambda *args, _name=name, _real=real, **kwargs: seen.append(_name) or _real(*args, **kwargs))
    yield seen
    for name, real in reals.items():
        setattr(model, name, real)


def body(path: str, text: str) -> dict:
    return {"/v1/completions": {"prompt": text, "max_tokens": 1},
            "/v1/chat/completions": {"messages": [{"role": "system", "content": text[:10]},
                                                  {"role": "user", "content": text[10:]}], "max_tokens": 1},
            "/v1/embeddings": {"input": ["short", text]},
            "/tokenize": {"content": text}}[path]


PARAMS = {"/v1/completions": "prompt", "/v1/chat/completions": "messages", "/v1/embeddings": "input",
          "/tokenize": "content"}
MOST = {"/v1/completions": N_CTX - 1, "/v1/chat/completions": N_CTX - 1, "/v1/embeddings": N_CTX,
        "/tokenize": N_CTX}  # the most tokens each may have (a prompt leaves room for one answer token)


@pytest.mark.parametrize("path", list(PARAMS))
def test_a_text_too_long_to_fit_is_refused_untokenized_and_the_bound_is_exact(live, tokenized, path):
    longest = live.state.model.tokenizer.longest_token_chars
    assert longest == 13
    over = "x" * (MOST[path] * longest + 1)  # at least MOST + 1 tokens, whatever they are
    response = httpx.post(live.url + path, json=body(path, over), timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == PARAMS[path], error
    assert f"has {len(over)} characters, so at least {MOST[path] + 1} tokens" in error["message"], error
    assert error["n_ctx"] == N_CTX and error["n_prompt_tokens"] == MOST[path] + 1
    assert tokenized == []
    # one character less could fit (by its length): it is tokenized, and its real count decides
    within = httpx.post(live.url + path, json=body(path, over[:-1]), timeout=30)
    assert tokenized
    if path == "/tokenize":
        assert within.status_code == 200 and len(within.json()["tokens"]) > N_CTX
    else:
        assert within.status_code == 400 and within.json()["error"]["code"] == "context_length_exceeded"
        assert "at least" not in within.json()["error"]["message"]  # the tokenizer's count, not the bound


def test_big_texts_are_refused_fast_beside_an_unharmed_stream(live):
    """Four 15 MiB texts at once (a completion prompt, chat messages, an embedding input, a /tokenize
    text) are each refused within seconds (the bodies' transfer and JSON parsing), and a stream running
    meanwhile pauses briefly at most (when they were tokenized in full, they took 55 s and the stream paused
    11 s)."""
    engine = live.state.engine
    model = live.state.model
    step = model.step  # the engine's pass each turn
    model.step = lambda *args, **kwargs: time.sleep(0.01) or step(*args, **kwargs)  # 200 steps: 2 s at least
    try:
        arrivals: list[float] = []

        def stream() -> None:
            with httpx.stream("POST", live.url + "/v1/completions", timeout=60, json={
                    "prompt": "a", "max_tokens": 200, "logit_bias": NO_EOG, "stream": True}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        arrivals.append(time.monotonic())

        streaming = threading.Thread(target=stream)
        streaming.start()
        deadline = time.monotonic() + 30
        while len(arrivals) < 5:
            assert time.monotonic() < deadline, "the stream did not start"
            time.sleep(0.005)
        text = "x" * (15 << 20)
        payloads = {path: json.dumps(body(path, text)).encode() for path in PARAMS}  # encoded before the clock
        answers: dict[str, tuple[float, httpx.Response]] = {}

        def big(path: str) -> None:
            started = time.monotonic()
            response = httpx.post(live.url + path, content=payloads[path], timeout=60,
                                  headers={"Content-Type": "application/json"})
            answers[path] = (time.monotonic() - started, response)

        sent = time.monotonic()
        threads = [threading.Thread(target=big, args=(path,)) for path in PARAMS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        done = time.monotonic()
        assert streaming.is_alive() and engine.n_running == 1  # the stream outlasted them
        streaming.join(60)
    finally:
        model.step = step
    for path, (seconds, response) in answers.items():
        assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded", path
        assert seconds < 5, (path, seconds)  # when tokenized: 55 s each
    during = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False) if b > sent and a < done]
    print(f"refused in {[round(s, 3) for s, _ in answers.values()]} s; stream's longest pause "
          f"{max(during):.3f} s")
    assert max(during) < 3, max(during)  # when tokenized: 11 s (what is left is parsing 60 MiB of JSON)
