"""Tools and structured outputs through the server, driven by the official openai client on real weights:
a tool-calling round trip (call -> tool result -> answer), streamed and not, on SmolLM2 (whose ChatML
template knows no tools: the generic syntax) and on the qwen2-dressed SmolLM2 carrying Qwen 2.5's real
template (its own <tool_call> syntax); JSON-schema outputs; llama.cpp's grammar fields; the response's
model name; image parts refused."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.dress import derived_path
from tests.live_server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def qwen2_server():
    with ServerProcess(derived_path("qwen2", "Q8_0"), "-np", "2", "-c", "1024", "-t", "2") as server:
        yield server


def round_trip(server, stream: bool) -> None:
    api = client(server)
    first = api.chat.completions.create(model="any", messages=QUESTION, tools=[WEATHER], tool_choice="required",
                                        parallel_tool_calls=False, temperature=0, max_tokens=80, stream=stream)
    if stream:
        calls: dict[int, dict] = {}
        pieces, finish = 0, None
        for chunk in first:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
                    pieces += 1
        assert finish == "tool_calls" and len(calls) == 1 and pieces > 1  # the arguments came in pieces
        call = calls[0]
    else:
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert len(choice.message.tool_calls) == 1
        made = choice.message.tool_calls[0]
        call = {"id": made.id, "name": made.function.name, "arguments": made.function.arguments}
    assert call["name"] == "get_weather" and call["id"]
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])

    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    final = api.chat.completions.create(model="any", messages=history, tools=[WEATHER], tool_choice="none",
                                        temperature=0, max_tokens=40)
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length") and answer.message.content and not answer.message.tool_calls


def test_required_parallel_calls_end(smollm2_server) -> None:
    """tool_choice "required" with parallel calls allowed (the default): SmolLM2 repeated the same call until
    max_tokens, and the cut-off last one leaked into the content. The same call again now ends the reply."""
    made = client(smollm2_server).chat.completions.create(
        model="any", messages=QUESTION, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=200)
    choice = made.choices[0]
    calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert calls and len(set(calls)) == len(calls)  # no call twice


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_generic_template(smollm2_server, stream: bool) -> None:
    round_trip(smollm2_server, stream)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_qwen_template(qwen2_server, stream: bool) -> None:
    round_trip(qwen2_server, stream)


def test_a_named_function_is_called(qwen2_server) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}}, "required": ["zone"]}}}
    reply = client(qwen2_server).chat.completions.create(
        model="x", messages=QUESTION, tools=[WEATHER, other], temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False)
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    assert "zone" in json.loads(calls[0].function.arguments)


def test_json_schema_output(smollm2_server) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 100000000}},
              "required": ["city", "population"], "additionalProperties": False}
    api = client(smollm2_server)
    served = api.models.list().data[0].id
    reply = api.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "The largest city of France, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
        temperature=0, max_tokens=60)
    assert reply.model == served != "gpt-4o"  # the served model's name, whatever the request said
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_completions_take_llama_cpp_grammar_fields(smollm2_server) -> None:
    url = smollm2_server.url + "/v1/completions"
    reply = httpx.post(url, json={"prompt": "Is water wet? Answer:", "grammar": 'start: " yes" | " no"',
                                  "temperature": 0, "max_tokens": 5}, timeout=60).json()
    assert reply["choices"][0]["text"] in (" yes", " no")
    reply = httpx.post(url, json={"prompt": "A person as JSON:", "json_schema": {
        "type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["age"]},
        "temperature": 0, "max_tokens": 30}, timeout=60).json()
    assert 0 <= json.loads(reply["choices"][0]["text"])["age"] <= 120


def test_bad_tool_and_format_requests_are_400s(smollm2_server) -> None:
    url = smollm2_server.url + "/v1/chat/completions"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    cases = [
        ({"messages": [{"role": "user", "content": [image]}]}, "image_url parts are not supported"),
        ({"messages": QUESTION, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "not among the tools"),
        ({"messages": QUESTION, "tool_choice": "required"}, "needs tools"),
        ({"messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}, ""),
        ({"messages": QUESTION, "grammar": "start: undefined_rule"}, "unknown name"),
        ({"messages": QUESTION, "grammar": 'start: "a"', "response_format": {"type": "json_object"}}, "give one"),
        ({"messages": QUESTION, "chat_template_kwargs": {"messages": []}}, "may not set messages"),
        ({"messages": QUESTION, "chat_template_kwargs": {"add_generation_prompt": False}}, "add_generation_prompt"),
        ({"messages": QUESTION, "reasoning_format": "hidden"}, "reasoning_format"),
    ]
    for body, message in cases:
        reply = httpx.post(url, json={**body, "max_tokens": 4}, timeout=60)
        assert reply.status_code == 400, (body, reply.text)
        assert message in reply.json()["error"]["message"], reply.text


def test_auto_gives_text_or_valid_calls(qwen2_server) -> None:
    api = client(qwen2_server)
    for question in ("What is the weather like in Paris today?", "Say hello."):
        reply = api.chat.completions.create(model="x", messages=[{"role": "user", "content": question}],
                                            tools=[WEATHER], temperature=0, max_tokens=60)
        choice = reply.choices[0]
        if choice.message.tool_calls:  # once the model opens a call, the lazy grammar keeps it valid
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        else:
            assert choice.message.content and choice.finish_reason in ("stop", "length")
