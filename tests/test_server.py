"""The HTTP API on a tiny synthetic model (fast): shapes, parameters, errors, auth, scheduling limits.
The same API on the real SmolLM2 through the official openai client is in test_server_openai.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from llamapyz.server.app import ServerState, create_app, load_webui
from llamapyz.server.config_file import ModelSpec
from llamapyz.server.engine import Engine, Job
from llamapyz.server.pool import ModelPool
from tests.live_server import ServerThread

N_CTX = 64


@pytest.fixture(scope="module")
def server(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=2) as live:
        yield live


def post(server, path: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server.url + path, content=content, timeout=30, headers=headers, **kwargs)


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.text.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_models_props_metrics_openapi(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-llama"
    props = httpx.get(server.url + "/props").json()
    assert props["n_ctx"] == N_CTX and props["total_slots"] == 2 and "<assistant>" in props["chat_template"]
    metrics = httpx.get(server.url + "/metrics").text
    assert "# TYPE llamapyz:prompt_tokens_total counter" in metrics and "llamapyz:requests_processing 0" in metrics
    spec = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/tokenize",
                 "/detokenize", "/props", "/metrics"):
        assert path in spec["paths"], path
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["required"] == ["messages"] and chat["properties"]["temperature"]["type"] == "number"


def test_chat_completion_shape_and_determinism(server):
    body = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 8}
    first = post(server, "/v1/chat/completions", body).json()
    assert first["object"] == "chat.completion"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = first["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert set(first["timings"]) >= {"cache_n", "prompt_n", "prompt_ms", "predicted_n", "predicted_per_second"}
    second = post(server, "/v1/chat/completions", body).json()
    assert second["choices"][0]["message"]["content"] == choice["message"]["content"]
    # the repeat reuses the cached prompt (all but the last token, which is evaluated anew)
    assert second["timings"]["cache_n"] == usage["prompt_tokens"] - 1 and second["timings"]["prompt_n"] == 1


def test_seeded_sampling_is_reproducible(server):
    body = {"prompt": "the cat", "temperature": 1.5, "top_k": 0, "top_p": 1, "min_p": 0, "seed": 7, "max_tokens": 12}
    texts = {post(server, "/v1/completions", body).json()["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1
    other = post(server, "/v1/completions", {**body, "seed": 8}).json()["choices"][0]["text"]
    assert other != texts.pop()  # 12 random bytes from a 259-token vocabulary: a collision is (nearly) impossible


def test_streaming_chunks_are_shaped_like_openai(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}
    response = post(server, "/v1/chat/completions", body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    final, usage = chunks[-2], chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length") and final["choices"][0]["delta"] == {}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    alone = post(server, "/v1/chat/completions", {**body, "stream": False}).json()
    assert text == alone["choices"][0]["message"]["content"]


def test_completions_logprobs_and_echo(server):
    body = {"prompt": "abc", "temperature": 0, "max_tokens": 4, "logprobs": 3, "echo": True}
    result = post(server, "/v1/completions", body).json()
    choice = result["choices"][0]
    assert choice["text"].startswith("abc")
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == result["usage"]["completion_tokens"]
    for chosen, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        # greedy: the chosen token is the best (entries are keyed by text, so byte tokens printed as U+FFFD collide)
        assert 1 <= len(top) <= 3 and chosen <= 0 and max(top.values()) <= chosen + 1e-6
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 0,
                                                 "max_tokens": 3, "logprobs": True, "top_logprobs": 2}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == chat["usage"]["completion_tokens"] and len(content[0]["top_logprobs"]) == 2
    assert content[0]["top_logprobs"][0]["logprob"] >= content[0]["top_logprobs"][1]["logprob"]


def test_json_object_response_format_gives_json(server):
    # a random tiny model left alone almost never writes JSON: the constraint must
    body = {"messages": [{"role": "user", "content": "json please"}], "response_format": {"type": "json_object"},
            "temperature": 1.0, "seed": 3, "max_tokens": 40}
    for seed in range(3):
        result = post(server, "/v1/chat/completions", {**body, "seed": seed}).json()
        content, finish = result["choices"][0]["message"]["content"], result["choices"][0]["finish_reason"]
        if finish == "stop":
            assert isinstance(json.loads(content), dict)
        else:  # cut by max_tokens: still a valid JSON prefix starting with '{'
            assert finish == "length" and content.lstrip().startswith("{")


def test_tokenize_detokenize_embeddings(server):
    tokens = post(server, "/tokenize", {"content": "hi there"}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": tokens}).json()["content"] == "hi there"
    pieces = post(server, "/tokenize", {"content": "ab", "with_pieces": True, "add_special": False}).json()["tokens"]
    assert [p["piece"] for p in pieces] == ["a", "b"]
    result = post(server, "/v1/embeddings", {"input": ["one", "two words"]}).json()
    vectors = np.array([d["embedding"] for d in result["data"]])
    assert vectors.shape == (2, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    single = post(server, "/v1/embeddings", {"input": "one"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(single, vectors[0], atol=1e-6)


@pytest.mark.parametrize("body, status, param, words", [
    (b"{not json", 400, None, "not valid JSON"),
    ([1, 2], 400, None, "JSON object"),
    ({}, 400, "messages", "required"),
    ({"messages": "hi"}, 400, "messages", "array"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages", "role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages", "content"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature", "number"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens", ">= 1"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n", "<= 1"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, 400, "stop", "string"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}, 400, "logit_bias", "token ids"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, 400, "response_format",
     "not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream", "boolean"),
])
def test_bad_requests_get_openai_errors(server, body, status, param, words):
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]


def test_prompt_longer_than_the_context(server):
    response = post(server, "/v1/completions", {"prompt": "x" * 100})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["n_ctx"] == N_CTX and error["n_prompt_tokens"] > N_CTX
    # a prompt that fits generates until the context is full, then says "length"
    result = post(server, "/v1/completions", {"prompt": "x" * 50, "temperature": 0, "logit_bias": {"2": -100}}).json()
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["total_tokens"] == N_CTX


def test_errors_never_wedge_the_server(server):
    for bad in (b"\xff\xfe", b"", b"null", b'{"prompt": [99999]}', b'{"prompt": []}'):
        assert post(server, "/v1/completions", bad).status_code == 400
    assert post(server, "/detokenize", {"tokens": [-1]}).status_code == 400
    assert httpx.get(server.url + "/v1/nothing").status_code == 404
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405
    ok = post(server, "/v1/completions", {"prompt": "still", "max_tokens": 2, "unknown_field": {"x": 1}})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert "llamapyz:requests_processing 0" in httpx.get(server.url + "/metrics").text


def test_api_key(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, api_key="sesame") as live:
        body = {"prompt": "a", "max_tokens": 1}
        assert httpx.get(live.url + "/health").status_code == 200  # stays open
        missing = post(live, "/v1/completions", body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert post(live, "/v1/completions", body, headers={"Authorization": "Bearer nope"}).status_code == 401
        for near in ("Bearer  sesame", "Bearer sesam", "Bearer sesamee"):  # taken as sent (HTTP itself trims ends)
            assert post(live, "/v1/completions", body, headers={"Authorization": near}).status_code == 401, near
        assert httpx.get(live.url + "/v1/models").status_code == 401
        assert post(live, "/v1/completions", body, headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert post(live, "/completions", body, headers={"X-Api-Key": "sesame"}).status_code == 200
        assert httpx.get(live.url + "/").status_code == 200  # the UI's files are open; its requests carry the key
        wrong_method = httpx.delete(live.url + "/v1/models", headers={"Authorization": "Bearer sesame"})
        assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["Allow"]


def test_server_sampling_defaults_apply_to_requests_that_do_not_set_them(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, sampling={"max_tokens": 3, "temperature": 0.0}) as live:
        settings = httpx.get(live.url + "/props").json()["default_generation_settings"]
        assert settings["temperature"] == 0.0 and settings["top_k"] == 40
        assert settings["n_ctx"] == N_CTX  # where llama.cpp's clients read the context size
        texts = set()
        for _ in range(2):
            reply = post(live, "/v1/completions", {"prompt": "defaults"}).json()
            assert reply["usage"]["completion_tokens"] == 3
            texts.add(reply["choices"][0]["text"])
        assert len(texts) == 1  # greedy by default
        assert post(live, "/v1/completions", {"prompt": "x", "max_tokens": 5}).json()["usage"]["completion_tokens"] == 5


def test_overloaded_is_503(tiny_llama):
    from llamapyz import Model

    engine = Engine(Model.load(tiny_llama, n_ctx=N_CTX), n_slots=1, max_queue=1)  # not started: nothing is admitted
    pool = ModelPool([ModelSpec(tiny_llama, "tiny")], load=lambda spec: engine)
    pool.load(pool.default)
    state = ServerState(pool=pool)

    async def scenario() -> httpx.Response:
        loop = asyncio.get_running_loop()
        engine.submit(Job(prompt=[1], generation=None, loop=loop))  # takes the free slot's place
        engine.submit(Job(prompt=[1], generation=None, loop=loop))  # the one queue place
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/completions", json={"prompt": "a"})

    response = asyncio.run(scenario())
    assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"


def test_health_is_503_while_loading():
    pool = ModelPool([ModelSpec("x.gguf", "x")], load=lambda spec: None, load_timeout_s=0.2)
    pool.default.loading = True  # and never done: a request waits its load_timeout_s, then gives up
    state = ServerState(pool=pool)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/health"), await client.post("/v1/completions", json={"prompt": "a"})

    health, completion = asyncio.run(scenario())
    assert health.status_code == 503 and completion.status_code == 503
    assert completion.json()["error"]["code"] == "loading"


def test_the_web_ui_serves_the_pages_files_not_its_docs_screenshots_or_licenses(tmp_path):
    for relative in ("index.html", "app.js", "vendor/katex/fonts/a.woff2", "vendor/katex/LICENSE",
                     "doc/screenshot.png", "README.md"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    state = ServerState(pool=ModelPool([ModelSpec("x.gguf", "x")], load=lambda spec: None), webui=load_webui(tmp_path))
    assert sorted(state.webui) == ["app.js", "index.html", "vendor/katex/fonts/a.woff2"]

    async def scenario() -> list[tuple[int, str]]:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            paths = ["/", "/app.js", "/vendor/katex/fonts/a.woff2", "/doc/screenshot.png", "/README.md"]
            responses = [await client.get(path) for path in paths]
            return [(r.status_code, r.headers["content-type"] if r.status_code == 200 else "") for r in responses]

    # ES modules load only as JavaScript: the media types are ours, never the platform's guess
    assert asyncio.run(scenario()) == [(200, "text/html; charset=utf-8"), (200, "text/javascript; charset=utf-8"),
                                       (200, "font/woff2"), (404, ""), (404, "")]


def test_numerically_extreme_sampling_works_and_disturbs_no_one(server):
    """temperature / repeat_penalty 1e-300 (allowed) once made NaN probabilities whose error ended every
    concurrent request: now a tiny temperature samples greedily (as llama.cpp) and a neighbour's stream is
    what it is alone."""
    from concurrent.futures import ThreadPoolExecutor

    normal = {"prompt": "the cat", "temperature": 0, "max_tokens": 12}
    extreme = {"prompt": "a dog", "temperature": 1e-300, "max_tokens": 12, "seed": 1}
    penalty = {"prompt": "a bird", "temperature": 0.8, "repeat_penalty": 1e-300, "max_tokens": 12, "seed": 1}
    text = lambda response: response.json()["choices"][0]["text"]  # noqa: E731
    alone = text(post(server, "/v1/completions", normal))
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda body: post(server, "/v1/completions", body), [normal, extreme, penalty]))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[2].json()["usage"]["completion_tokens"] > 0
    assert text(responses[0]) == alone
    assert text(responses[1]) == text(post(server, "/v1/completions", {**extreme, "temperature": 0}))
    assert post(server, "/v1/completions", {**normal, "temperature": float("inf")}).status_code == 400


@pytest.mark.parametrize("body", [
    '{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}",  # int() refuses 4,300+ digits: was a 500
    '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}",  # nesting past the recursion limit: was a 500
    '{"prompt": "\\ud800 lone surrogate"}',
])
def test_hostile_json_is_a_400(server, body):
    response = post(server, "/v1/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_seed_minus_one_means_random(server):
    body = {"prompt": "the", "temperature": 1.0, "max_tokens": 8, "seed": -1}
    assert post(server, "/v1/completions", body).status_code == 200


def test_a_request_whose_sampling_fails_ends_alone(tiny_llama):
    from llamapyz import Model
    from llamapyz.decode.generation import Generation
    from llamapyz.decode.sampling import SamplingParams

    model = Model.load(tiny_llama, n_ctx=N_CTX)
    engine = Engine(model, n_slots=2).start()

    class Failing(Generation):
        def step(self, logits):
            raise RuntimeError("this request's sampler broke")

    async def scenario() -> tuple[list, list]:
        loop = asyncio.get_running_loop()
        made = [cls(model.tokenizer, [1, 2, 3], 8, SamplingParams(), N_CTX) for cls in (Generation, Failing)]
        jobs = [Job(prompt=[1, 2, 3], generation=g, loop=loop) for g in made]
        for job in jobs:
            engine.submit(job)
        kinds = []
        for job in jobs:
            events = []
            while not events or events[-1][0] not in ("done", "error"):
                events.append(await asyncio.wait_for(job.events.get(), 30))
            kinds.append([kind for kind, _ in events])
        return kinds

    try:
        good, bad = asyncio.run(scenario())
    finally:
        engine.stop()
    assert good == ["step"] * 8 + ["done"]
    assert bad == ["error"]


def test_a_body_over_the_limit_is_413_declared_or_chunked(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1, max_body_bytes=1000) as live:
        small = post(live, "/v1/completions", {"prompt": "a", "max_tokens": 1})
        big = post(live, "/v1/completions", {"prompt": "a" * 2000, "max_tokens": 1})

        def chunks():
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"a" * 100
            yield b'", "max_tokens": 1}'

        chunked = httpx.post(live.url + "/v1/completions", content=chunks(), timeout=30,  # no Content-Length
                             headers={"Content-Type": "application/json"})
    assert small.status_code == 200
    for response in (big, chunked):
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_request_tokenizing_runs_off_the_event_loop(tiny_llama):
    """CPU-heavy request work (tokenizing, chat templates) runs in a worker thread, so a 10 MB text cannot
    stall /health and every other request (it used to run on the event loop's thread)."""
    import threading

    with ServerThread(tiny_llama, n_ctx=N_CTX, n_slots=1) as live:
        model, seen = live.state.model, []
        def spy(real):
            def recorded(*args, **kwargs):
                seen.append(threading.current_thread())
                return real(*args, **kwargs)
            return recorded

        for name in ("tokenize", "chat_tokens", "detokenize"):
            setattr(model, name, spy(getattr(model, name)))
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        for path, body in (("/tokenize", {"content": "hello"}), ("/detokenize", {"tokens": [5, 6]}),
                           ("/v1/completions", {"prompt": "hello", "max_tokens": 1}), ("/v1/chat/completions", chat),
                           ("/v1/embeddings", {"input": "hello"})):
            assert post(live, path, body).status_code == 200, path
    assert len(seen) >= 5 and live.thread not in seen


# --- issue 27: numbers and logit_bias keys no request may turn into a 500 ---------------------------------------

HUGE = "1" + "0" * 400  # an integer of 401 digits: float() overflows on it


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                                   "frequency_penalty"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_an_integer_too_large_for_a_float_is_a_400(server, field, sign):
    """A 400-digit integer in a number field was an OverflowError, a 500."""
    for path, head in (("/v1/completions", '{"prompt": "a", "max_tokens": 1, '),
                       ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a"}], "max_tokens": 1, ')):
        response = post(server, path, f'{head}"{field}": {sign}{HUGE}}}')
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and error["type"] == "invalid_request_error" and len(error["message"]) < 200


@pytest.mark.parametrize("field", ["top_k", "seed", "max_tokens", "repeat_last_n", "top_logprobs"])
def test_a_huge_integer_in_an_integer_field_is_never_a_500(server, field):
    body = '{"messages": [{"role": "user", "content": "a"}], "max_tokens": 1, "temperature": 0.5, '
    response = post(server, "/v1/chat/completions", body.replace(f'"{field}": 1, ', "") + f'"{field}": {HUGE}}}')
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize("key", ["1_0", "\u0661\u0660", " 5", "5 ", "+5", "-5", "0x5", "5\n", "", "1e1",
                                 "9" * 5000])
def test_logit_bias_keys_are_plain_decimal_token_ids(server, key):
    """int() took "1_0" as token 10, Arabic-Indic digits, " 5": a key is ASCII digits only."""
    body = {"prompt": "a", "max_tokens": 1, "logit_bias": {key: 5}}
    response = post(server, "/v1/completions", body)
    assert response.status_code == 400, (key, response.text)
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and len(error["message"]) < 200


def test_a_logit_bias_key_of_digits_is_its_token_and_its_bias_must_be_finite(server):
    body = {"prompt": "a", "max_tokens": 1, "temperature": 0}
    for key in ("10", "010"):
        forced = post(server, "/v1/completions", {**body, "logit_bias": {key: 100}, "logprobs": 1}).json()
        assert forced["choices"][0]["logprobs"]["tokens"] == [post(server, "/detokenize", {"tokens": [10]})
                                                                   .json()["content"]]
    nan = post(server, "/v1/completions", '{"prompt": "a", "max_tokens": 1, "logit_bias": {"10": NaN}}')
    assert nan.status_code == 400 and nan.json()["error"]["param"] == "logit_bias"


def test_top_p_zero_is_refused_by_the_schema_as_by_the_sampler(server):
    response = post(server, "/v1/completions", {"prompt": "a", "max_tokens": 1, "top_p": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_p"
    spec = httpx.get(server.url + "/openapi.json").json()
    top_p = spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert top_p["properties"]["top_p"]["exclusiveMinimum"] == 0


def test_v1_models_says_which_models_are_base_models(tiny_llama, tmp_path):
    """The registry's gemma3-270m is a base model, and the web UI offered it for chat without saying so: a model
    whose file has no chat template (base models have none; llama.cpp's converter writes an instruct model's)
    and that was given none is a `base_model` in /v1/models, loaded or not."""
    from tests.synth import write_model

    base = tmp_path / "tiny-base.gguf"
    write_model(base, "llama", "Q8_0", chat_template=False)
    specs = [ModelSpec(str(tiny_llama), "tiny-llama"), ModelSpec(str(base), "tiny-base"),
             ModelSpec(str(base), "tiny-base-chatml", chat_template="chatml")]
    with ServerThread(None, models=specs, n_ctx=N_CTX, n_slots=1) as live:
        models = httpx.get(live.url + "/v1/models").json()["data"]
    assert [(m["id"], m["status"], m["base_model"]) for m in models] == [
        ("tiny-llama", "loaded", False), ("tiny-base", "not loaded", True), ("tiny-base-chatml", "not loaded", False)]
