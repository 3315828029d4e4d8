"""gpt-oss's harmony format through the server (llamapyz/server/completions.py with chat/reply.py): a tiny random
llama whose vocabulary has gpt-oss's special tokens, serving gpt-oss's real template. A forced call comes back
as OpenAI `tool_calls` with schema-valid arguments and finish_reason "tool_calls", whole and streamed; no reply
lets harmony markup into content or reasoning_content. (The text of a random model means nothing: what is
tested is the path from its tokens to the response.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest

from llamapyz.decode.generation import Step
from llamapyz.server.engine import Timings
from tests.live_server import ServerThread
from tests.synth import STRING, read_layout, write_model

TEMPLATE = (Path(__file__).resolve().parent / "data" / "templates" / "openai-gpt-oss-120b.jinja").read_text()
HARMONY_TOKENS = ["<|return|>", "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|constrain|>"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
# a reply that reasons, then calls get_weather (what the other APIs' event builders are fed)
REASONED_CALL = ("<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant<|channel|>"
                 "commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}")


def streamed_data(answer, reply: str, piece: int) -> list[dict]:
    """The data of every server-sent event an API's event builder (`answer`: opening, step, done) makes for
    `reply` streamed `piece` characters at a time (so markers are cut anywhere), then a stop."""
    events = answer.opening()
    for i in range(0, len(reply), piece):
        events += answer.step(Step(0, reply[i:i + piece]))
    events += answer.step(Step(0, "", finish_reason="stop"))
    events += answer.done(Timings(predicted_n=30))
    return [json.loads(line[6:]) for event in events for line in event.decode().splitlines()
            if line.startswith("data: ")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The tiny llama (tests/synth.py) with `<|im_end|>` and the tokens of bytes 1-6 swapped for gpt-oss's
    seven markers (written as control tokens; the loader retypes them), a 2,048-token context."""
    folder = tmp_path_factory.mktemp("harmony")
    write_model(folder / "plain.gguf", small=True)
    layout = read_layout(folder / "plain.gguf")
    tokens = list(layout.entry("tokenizer.ggml.tokens").value[1])
    tokens[1:2], tokens[3:9] = HARMONY_TOKENS[:1], HARMONY_TOKENS[1:]  # token 2 + b is byte b
    types = np.array(layout.entry("tokenizer.ggml.token_type").value[1])
    types[1], types[3:9] = 3, 3
    layout.entry("tokenizer.ggml.tokens").value = (STRING, tokens)
    layout.entry("tokenizer.ggml.token_type").value = (layout.entry("tokenizer.ggml.token_type").value[0], types)
    layout.entry("llama.context_length").value = 2048
    path = folder / "tiny-harmony.gguf"
    path.write_bytes(b"".join(layout.encode()))
    with ServerThread(path, n_ctx=1024, n_slots=1, chat_template=TEMPLATE) as live:
        yield live


def chat(server, **fields) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                      json={"model": "any", "messages": QUESTION, "temperature": 0, **fields})


def no_markup(text: str | None) -> bool:
    return not any(marker in (text or "") for marker in HARMONY_TOKENS)


def test_a_forced_call_is_a_tool_call(server) -> None:
    # "analysis" starts with "a", "commentary" with "c": byte "a" (token 2 + 97) made unlikely, so the random
    # model goes straight to the call instead of reasoning at length (the grammar still lets it write "a")
    bias = {str(2 + ord("a")): -50}
    reply = chat(server, tools=[WEATHER], tool_choice="required", max_tokens=150, logit_bias=bias).json()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls", json.dumps(reply)
    message = choice["message"]
    assert message["content"] is None and no_markup(message.get("reasoning_content"))
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])

    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=120,
                      json={"model": "any", "messages": QUESTION, "temperature": 0, "tools": [WEATHER],
                            "tool_choice": "required", "max_tokens": 150, "logit_bias": bias, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(no_markup(d.get("content")) and no_markup(d.get("reasoning_content")) for d in deltas)
    pieces = [p for d in deltas for p in d.get("tool_calls", [])]
    assert pieces[0]["function"]["name"] == "get_weather"
    assert "".join(p["function"]["arguments"] for p in pieces) == call["function"]["arguments"]  # greedy: the same


def test_free_replies_never_show_markup(server) -> None:
    for fields in ({}, {"tools": [WEATHER]}, {"stream": False, "logit_bias": {str(2 + ord("c")): 5}}):
        message = chat(server, max_tokens=40, **fields).json()["choices"][0]["message"]
        assert no_markup(message["content"]) and no_markup(message.get("reasoning_content"))
