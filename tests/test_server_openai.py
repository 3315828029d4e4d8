"""`llamapyz serve` with the real SmolLM2, driven by the official openai client (sync and async, streaming
and not), then loaded by 8 concurrent streaming clients on 4 slots: all finish, outputs are identical to
running alone (batch invariance), no slot leaks, memory stays flat, a client that goes away frees its slot."""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

QUESTIONS = ["What is the capital of France?", "Name three colors.", "Write a haiku about rain.",
             "What is 2 + 2?", "Give me a tip for learning Python.", "Why is the sky blue?",
             "Say something nice about cats.", "What do bees make?"]


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return float(re.search(rf"^llamapyz:{name} (\S+)$", text, re.M).group(1))


def chat(server, question: str, max_tokens: int = 40) -> str:
    stream = client(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens,
        stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def test_chat_sync_and_streaming(smollm2_server):
    c = client(smollm2_server)
    # a question whose first greedy token leads by 1.56 logits ("What is the capital of France?" alone is a
    # near-tie that llama.cpp answers "L'..." by 0.35, and any rounding change may flip it)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    result = c.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24)
    text = result.choices[0].message.content
    assert "Paris" in text and result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.completion_tokens >= 1 and result.usage.prompt_tokens > 10
    chunks = list(c.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-1].usage.completion_tokens == result.usage.completion_tokens


def test_completions_and_stop(smollm2_server):
    c = client(smollm2_server)
    result = c.completions.create(model="smollm2", prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 7"])
    text = result.choices[0].text
    assert text.startswith(" 5, 6,") and " 7" not in text and result.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smollm2", prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 7"], stream=True) if ch.choices)
    assert streamed == text


def test_async_client_and_embeddings_and_models(smollm2_server):
    async def scenario():
        c = openai.AsyncOpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0)
        result = await c.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=8)
        pieces = [ch.choices[0].delta.content or "" async for ch in await c.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=8,
            stream=True) if ch.choices]
        embeddings = await c.embeddings.create(model="smollm2", input=["a cat", "a kitten", "tax law"])
        models = await c.models.list()
        return result, "".join(pieces), embeddings, models

    result, streamed, embeddings, models = asyncio.run(scenario())
    assert result.choices[0].message.content == streamed and streamed
    vectors = [e.embedding for e in embeddings.data]
    assert len(vectors) == 3 and len(vectors[0]) == 576
    similarity = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    assert similarity[0] > similarity[1]  # a cat is closer to a kitten than to tax law
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_errors_through_the_client(smollm2_server):
    c = client(smollm2_server)
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], temperature="hot")
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:
        c.completions.create(model="smollm2", prompt="word " * 3000)
    assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["n_ctx"] == 2048


def test_json_mode_gives_a_json_object(smollm2_server):
    result = client(smollm2_server).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the name and age of a fictional person as JSON with the keys "
                                              "name and age."}])
    assert result.choices[0].finish_reason == "stop"
    assert {"name", "age"} <= json.loads(result.choices[0].message.content).keys()


def test_next_chat_turn_reuses_the_prompt_cache(smollm2_server):
    c = client(smollm2_server)
    turn1 = [{"role": "user", "content": "My name is Ada. Remember it."}]
    first = c.chat.completions.create(model="smollm2", messages=turn1, temperature=0, max_tokens=20)
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "What is my name?"}]
    second = c.chat.completions.with_raw_response.create(model="smollm2", messages=turn2, temperature=0,
                                                         max_tokens=10)
    timings = json.loads(second.text)["timings"]
    assert timings["cache_n"] >= first.usage.prompt_tokens  # the whole first turn was reused
    assert timings["prompt_n"] < 20


def test_concurrent_streams_match_running_alone(smollm2_server):
    alone = [chat(smollm2_server, q) for q in QUESTIONS]
    steps_before = metric(smollm2_server, "n_decode_total")
    rows_before = metric(smollm2_server, "tokens_predicted_total")
    rss = []
    for _ in range(2):
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda q: chat(smollm2_server, q), QUESTIONS))
        assert together == alone  # batch invariance: identical bytes whatever the company
        rss.append(smollm2_server.rss_mib())
    steps = metric(smollm2_server, "n_decode_total") - steps_before
    tokens = metric(smollm2_server, "tokens_predicted_total") - rows_before
    assert tokens / steps > 2  # decode steps really were batched (4 slots busy most of the time)
    assert metric(smollm2_server, "requests_processing") == 0 and metric(smollm2_server, "requests_deferred") == 0
    assert rss[1] - rss[0] < 16, rss  # memory flat from one round of 8 requests to the next


def test_client_going_away_frees_its_slot(smollm2_server):
    cancelled = metric(smollm2_server, "requests_cancelled_total")
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", smollm2_server.url + "/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 5
    while metric(smollm2_server, "requests_processing") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(smollm2_server, "requests_processing") == 0
    assert metric(smollm2_server, "requests_cancelled_total") == cancelled + 1
