"""/v1/embeddings on a tiny synthetic model: the engine runs an embedding request a piece at a time between
decode steps (so generation goes on beside it), embedding requests give their slots to waiting requests
between inputs, a client that goes away cancels it, its limits are 400s before any work, and the pieces give
the same vectors, bit for bit, as one call."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from llamapyz import Model
from llamapyz.server import embeddings as embeddings_module
from tests.live_server import ServerThread

N_CTX = 64
NO_EOS = {"0": -100}  # the tiny model's end-of-generation token, barred so a completion runs its max_tokens


def post(url: str, path: str, body: object, timeout: float = 60) -> httpx.Response:
    return httpx.post(url + path, content=json.dumps(body), timeout=timeout,
                      headers={"Content-Type": "application/json"})


def vectors_of(response: httpx.Response) -> np.ndarray:
    """The float32 vectors of a base64 embeddings response, exactly as computed."""
    assert response.status_code == 200, response.text
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]])


def spy_decode(model: Model, before: Callable[[], None]) -> None:
    """Call `before` (in the engine's thread) ahead of each engine pass that decodes (`Model.step` with tokens;
    a pass may also carry prompts' chunks)."""
    real = model.step

    def recorded(chunks, tokens, contexts):
        if len(tokens):
            before()
        return real(chunks, tokens, contexts)

    model.step = recorded


def spy(model: Model, name: str, before: Callable[[], None]) -> None:
    """Call `before` (in the engine's thread) ahead of each call of model.<name>."""
    real = getattr(model, name)

    def recorded(*args, **kwargs):
        before()
        return real(*args, **kwargs)

    setattr(model, name, recorded)


def texts(n: int) -> list[str]:
    """n inputs of mixed lengths (4 to 40 bytes)."""
    return [f"input {i} " + "ab" * (i % 17) for i in range(n)]


def unchunked_reference(model: Model, inputs: list[list[int]]) -> np.ndarray:
    """The embedding as `Model.embed_tokens` computed it before it went piece by piece (kept verbatim)."""
    ctx = model.new_context()
    out = np.zeros((len(inputs), model.n_embd), np.float32)
    for i, tokens in enumerate(inputs):
        ids = model._check_tokens(tokens)
        ctx.tokens = []
        pooled = model._run(ids, 0, "hidden", ctx).mean(axis=0)
        ctx.tokens = ids.tolist()
        norm = float(np.linalg.norm(pooled))
        out[i] = pooled / norm if norm > 0 else pooled
    return out


# --- the pieces give the same bits ------------------------------------------------------------------------


def test_pieces_give_the_same_vectors_bit_for_bit(tiny_llama):
    """Inputs shorter than, equal to and longer than a chunk (batch_size 8), evaluated piece by piece with
    other work between the pieces, give the bits the one-call embedding gave."""
    model = Model.load(tiny_llama, n_ctx=N_CTX, batch_size=8)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(1, model.n_vocab, n).tolist() for n in (1, 7, 8, 9, 17, 3, 64, 24)]
    expected = unchunked_reference(model, inputs)
    assert model.embed_tokens(inputs).tobytes() == expected.tobytes()

    embedding = model.start_embedding(inputs, model.new_context())
    other, neighbour = model.new_context(), model.start_embedding(inputs[::-1], model.new_context())
    n_pieces = 0
    while not embedding.done:
        model.embed_chunk(embedding)
        n_pieces += 1
        if not neighbour.done:
            model.embed_chunk(neighbour)
        if len(other.tokens) < N_CTX:
            model.decode_batch([5], [other])
    assert n_pieces == sum(-(-len(ids) // 8) for ids in inputs)  # one piece per chunk of 8 of each input
    assert embedding.vectors.tobytes() == expected.tobytes()
    while not neighbour.done:
        model.embed_chunk(neighbour)
    assert neighbour.vectors.tobytes() == expected[::-1].tobytes()
    # and the chunk size does not change them either (each row depends only on its own sequence)
    whole = Model.load(tiny_llama, n_ctx=N_CTX)
    assert whole.embed_tokens(inputs).tobytes() == expected.tobytes()


# --- generation goes on beside an embedding -----------------------------------------------------------------


def test_generation_runs_between_the_pieces_of_a_big_embedding(tiny_llama):
    """A completion sent while a 200-input embedding runs gets its tokens between the embedding's pieces (one
    piece per engine turn) and finishes first; the embedding's vectors are those it gets alone."""
    inputs = texts(200)
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=2) as live:
        model, engine, log = live.state.model, live.state.engine, []

        def piece() -> None:
            if not log:  # hold the first piece until the completion has been submitted too
                deadline = time.monotonic() + 30
                while engine.n_running + engine.n_waiting < 2 and time.monotonic() < deadline:
                    time.sleep(0.001)
            log.append("embed")

        spy(model, "embed_chunk", piece)
        spy_decode(model, lambda: log.append("decode"))
        finished: dict[str, float] = {}

        def embed() -> None:
            finished["response"] = post(live.url, "/v1/embeddings", {"input": inputs, "encoding_format": "base64"})
            finished["embeddings"] = time.perf_counter()

        embedding = threading.Thread(target=embed)
        embedding.start()
        deadline = time.monotonic() + 30
        while engine.n_running == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        completion = post(live.url, "/v1/completions", {"prompt": "hello", "max_tokens": 4, "logit_bias": NO_EOS})
        finished["completion"] = time.perf_counter()
        embedding.join(60)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4
    assert finished["completion"] < finished["embeddings"]
    decodes = [i for i, kind in enumerate(log) if kind == "decode"]
    assert len(decodes) == 4 and log.count("embed") == 200
    assert decodes[0] <= 2  # the first token came after at most two of the 200 pieces
    assert all(b - a == 2 for a, b in zip(decodes, decodes[1:], strict=False))  # then one piece per token
    reference = Model.load(tiny_llama, n_ctx=N_CTX)
    alone = reference.embed_tokens([reference.tokenize(text) for text in inputs])
    assert vectors_of(finished["response"]).tobytes() == alone.tobytes()


def test_a_completion_gets_a_slot_promptly_behind_embeddings_that_hold_every_slot(tiny_llama):
    """Three embedding requests of 120 inputs each hold both slots (and the queue); a completion sent then
    takes the slot of the first one to finish an input (they share slots by turns: between two inputs, an
    embedding request gives its slot to whoever waits), so its first token comes a few pieces later, not
    after a whole embedding request. The embeddings, moved from slot to slot between inputs (never inside
    one: inputs of 1 to 20 tokens, in pieces of 8), give the vectors they give alone, bit for bit."""
    rng = np.random.default_rng(1)
    requests = [[rng.integers(2, 200, 1 + (i * 7 + r) % 20).tolist() for i in range(120)] for r in range(3)]
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=2, batch_size=8) as live:
        model, engine, log = live.state.model, live.state.engine, []
        contexts: dict[int, set[int]] = {}  # id(embedding) -> ids of the contexts its pieces ran in
        real_chunk = model.embed_chunk

        def piece(embedding):
            contexts.setdefault(id(embedding), set()).add(id(embedding.ctx))
            log.append("embed")
            return real_chunk(embedding)

        model.embed_chunk = piece
        spy_decode(model, lambda: log.append("decode"))
        real_submit = engine.submit
        engine.submit = lambda job: (log.append("submit") if job.generation is not None else None, real_submit(job))
        results: dict[int, httpx.Response] = {}
        threads = [threading.Thread(target=lambda r=r: results.setdefault(r, post(
            live.url, "/v1/embeddings", {"input": requests[r], "encoding_format": "base64"}))) for r in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while engine.n_running + engine.n_waiting < 3 or log.count("embed") < 10:
            assert time.monotonic() < deadline, "the embeddings did not start"
            time.sleep(0.001)
        completion = post(live.url, "/v1/completions", {"prompt": "hello", "max_tokens": 4, "logit_bias": NO_EOS})
        for thread in threads:
            thread.join(60)
    assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 4
    submitted, first_token = log.index("submit"), log.index("decode")
    # the pieces before its first token: the rest of a turn, one more turn's pieces, its own turn's (without
    # sharing it waited for a whole request: 120 inputs, 215 pieces at least)
    assert log[submitted:first_token].count("embed") <= 6, log[submitted:first_token]
    assert sum(len(ids) > 1 for ids in contexts.values()) >= 2  # requests did change slots
    reference = Model.load(tiny_llama, n_ctx=N_CTX)
    for r in range(3):
        assert vectors_of(results[r]).tobytes() == reference.embed_tokens(requests[r]).tobytes()


# --- a client that goes away cancels it -----------------------------------------------------------------------


def test_a_client_that_goes_away_cancels_its_embedding(tiny_llama):
    """An embedding whose client disconnects stops at its next piece; its slot (the only one) is free for
    the next request at once."""
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1) as live:
        model, engine, pieces = live.state.model, live.state.engine, []

        def slow_piece() -> None:  # 200 pieces: 10 s at least, if nothing stopped them
            pieces.append(time.perf_counter())
            time.sleep(0.05)

        spy(model, "embed_chunk", slow_piece)
        body = json.dumps({"input": texts(200)}).encode()
        host, port = live.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(body), body))
        deadline = time.monotonic() + 30
        while len(pieces) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.close()
        while "llamapyz:requests_processing 0" not in httpx.get(live.url + "/metrics").text:
            assert time.monotonic() < deadline, "the cancelled embedding still holds its slot"
            time.sleep(0.05)
        n_pieces = len(pieces)
        assert 3 <= n_pieces < 200
        assert engine.stats["requests_cancelled"] == 1 and engine.stats["requests"] == 0
        completion = post(live.url, "/v1/completions", {"prompt": "next", "max_tokens": 2, "logit_bias": NO_EOS})
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 2
        again = post(live.url, "/v1/embeddings", {"input": ["one", "two"], "encoding_format": "base64"})
        assert len(pieces) == n_pieces + 2  # the cancelled one ran no further
    reference = Model.load(tiny_llama, n_ctx=N_CTX)
    assert vectors_of(again).tobytes() == reference.embed(["one", "two"]).tobytes()


# --- limits ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1) as live:
        yield live


@pytest.fixture
def tokenized(server) -> list[threading.Thread]:
    """The thread of every model.tokenize call during the test."""
    model, seen = server.state.model, []
    real = model.tokenize
    spy(model, "tokenize", lambda: seen.append(threading.current_thread()))
    yield seen
    model.tokenize = real


def refused(response: httpx.Response, code: str | None, words: str) -> bool:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "input", error
    assert error["code"] == code and words in error["message"], error
    return True


def test_too_many_inputs_is_a_400_before_any_tokenizing(server, tokenized):
    limit = embeddings_module.MAX_INPUTS
    assert limit == 2048
    assert refused(post(server.url, "/v1/embeddings", {"input": ["x"] * (limit + 1)}), "too_many_inputs",
                   f"at most {limit}")
    assert refused(post(server.url, "/v1/embeddings", {"input": [[5]] * (limit + 1)}), "too_many_inputs",
                   f"{limit + 1} items")
    assert tokenized == []


def test_the_input_count_limit_is_inclusive(server, monkeypatch):
    monkeypatch.setattr(embeddings_module, "MAX_INPUTS", 3)
    assert post(server.url, "/v1/embeddings", {"input": ["a", "b", "c"]}).status_code == 200
    assert refused(post(server.url, "/v1/embeddings", {"input": ["a", "b", "c", "d"]}), "too_many_inputs",
                   "at most 3")


def test_too_many_tokens_in_all_is_a_400_and_tokenizing_stops_there(server, tokenized, monkeypatch):
    assert embeddings_module.MAX_TOTAL_TOKENS == 300_000
    monkeypatch.setattr(embeddings_module, "MAX_TOTAL_TOKENS", 50)
    assert post(server.url, "/v1/embeddings", {"input": [[5] * 25, [6] * 25]}).status_code == 200  # 50: fits
    assert refused(post(server.url, "/v1/embeddings", {"input": [[5] * 25, [6] * 26]}), "too_many_tokens",
                   "more than 50 tokens")
    del tokenized[:]
    assert refused(post(server.url, "/v1/embeddings", {"input": ["ten bytes!"] * 1000}), "too_many_tokens",
                   "more than 50 tokens")
    assert 1 <= len(tokenized) <= 6  # 11 tokens each: it stopped at the fifth, not the thousandth
    assert len(set(tokenized)) == 1 and server.thread not in tokenized  # one worker-thread call for all


def test_an_input_longer_than_the_context_is_a_400(server):
    response = post(server.url, "/v1/embeddings", {"input": ["short", "x" * (N_CTX + 10)]})
    assert refused(response, "context_length_exceeded", f"the context of {N_CTX}")
    assert response.json()["error"]["n_ctx"] == N_CTX
    assert refused(post(server.url, "/v1/embeddings", {"input": [[5] * (N_CTX + 1)]}), "context_length_exceeded",
                   f"{N_CTX + 1} tokens")
    assert post(server.url, "/v1/embeddings", {"input": [[5] * N_CTX]}).status_code == 200
