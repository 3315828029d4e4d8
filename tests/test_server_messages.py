"""POST /v1/messages and /v1/messages/count_tokens (llamapyz/server/messages.py): the anthropic SDK against
`llamapyz serve` on the real SmolLM2, streaming and not, a tool round trip (tool_use -> tool_result ->
answer), stop_sequences, count_tokens; on the tiny llama, the API key as `x-api-key` and Anthropic's error
shape; on the gpt-oss template, a harmony reply's reasoning coming out as a thinking block."""

from __future__ import annotations

import json
from types import SimpleNamespace

import anthropic
import httpx
import jsonschema
import pytest

from llamapyz.chat.tools import ToolRequest
from llamapyz.server.messages import MessageEvents
from tests.live_server import ServerThread
from tests.test_server_harmony import REASONED_CALL, streamed_data
from tests.test_server_harmony import TEMPLATE as GPT_OSS_TEMPLATE

WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                             "unit": {"enum": ["celsius", "fahrenheit"]}},
                            "required": ["city", "unit"], "additionalProperties": False}}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
GREEDY = {"temperature": 0}  # the SDK's create() no longer takes temperature: sent as an extra field


def client(server, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0)


@pytest.mark.slow
def test_create_streamed_and_not(smollm2_server):
    api = client(smollm2_server)
    message = api.messages.create(model="smollm2", max_tokens=24, messages=QUESTION, system="You are helpful.",
                                  extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text and message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 10 and message.usage.output_tokens >= 1

    with api.messages.stream(model="smollm2", max_tokens=24, messages=QUESTION, system="You are helpful.",
                             extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[kinds.index("content_block_start") + 1] == "content_block_delta" and "content_block_stop" in kinds
    assert streamed.content[0].text == block.text  # greedy: the same text
    assert streamed.stop_reason == message.stop_reason and streamed.usage.output_tokens == message.usage.output_tokens

    # the raw events: named, each data's type the event's name
    with httpx.stream("POST", smollm2_server.url + "/v1/messages", timeout=120,
                      json={"model": "smollm2", "max_tokens": 4, "messages": QUESTION, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in data] and names[0] == "message_start" and names[-1] == "message_stop"


@pytest.mark.slow
def test_a_tool_round_trip(smollm2_server):
    api = client(smollm2_server)
    first = api.messages.create(model="smollm2", max_tokens=60, messages=WEATHER_QUESTION, tools=[WEATHER],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    assert first.stop_reason == "tool_use"
    [use] = first.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id
    jsonschema.validate(use.input, WEATHER["input_schema"])  # an object, not JSON text

    with api.messages.stream(model="smollm2", max_tokens=60, messages=WEATHER_QUESTION, tools=[WEATHER],
                             tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
                             extra_body=GREEDY) as stream:
        pieces = [event.delta.partial_json for event in stream
                  if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
        streamed = stream.get_final_message()
    assert len(pieces) > 1 and json.loads("".join(pieces)) == use.input
    assert streamed.content[0].input == use.input and streamed.stop_reason == "tool_use"

    history = [*WEATHER_QUESTION, {"role": "assistant", "content": [
        {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": json.dumps({"temperature": 21, "sky": "sunny"})}]}]
    answer = api.messages.create(model="smollm2", max_tokens=40, messages=history, tools=[WEATHER],
                                 tool_choice={"type": "none"}, extra_body=GREEDY)
    assert [block.type for block in answer.content] == ["text"] and answer.content[0].text.strip()
    assert answer.stop_reason in ("end_turn", "max_tokens")
    question = api.messages.count_tokens(model="smollm2", messages=WEATHER_QUESTION).input_tokens
    assert answer.usage.input_tokens > question + 20  # the call and its result are in the prompt


@pytest.mark.slow
def test_stop_sequences_and_count_tokens(smollm2_server):
    api = client(smollm2_server)
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = api.messages.create(model="smollm2", max_tokens=40, messages=count, extra_body=GREEDY)
    assert "4, 5" in free.content[0].text
    stopped = api.messages.create(model="smollm2", max_tokens=40, messages=count, stop_sequences=["zebra", " 5"],
                                  extra_body=GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " 5"
    assert stopped.content[0].text == free.content[0].text.split(" 5")[0]
    assert api.messages.count_tokens(model="smollm2", messages=count).input_tokens == free.usage.input_tokens
    with_tools = api.messages.count_tokens(model="smollm2", messages=count, tools=[WEATHER], system="Be brief.")
    assert with_tools.input_tokens > free.usage.input_tokens + 40  # the tools are explained in the prompt


# --- the tiny llama: the key and the errors ---------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_server(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=256, n_slots=1, api_key="sesame") as live:
        yield live


def test_x_api_key_and_the_error_shape(keyed_server):
    message = client(keyed_server, "sesame").messages.create(model="any", max_tokens=3, messages=QUESTION,
                                                            extra_body=GREEDY)
    assert message.usage.output_tokens == 3 and message.stop_reason == "max_tokens"
    assert client(keyed_server, "sesame").messages.count_tokens(model="any", messages=QUESTION).input_tokens == \
        message.usage.input_tokens

    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(keyed_server, "wrong").messages.create(model="any", max_tokens=3, messages=QUESTION)
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "invalid API key"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(keyed_server, "sesame").messages.create(model="any", max_tokens=3, messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": ""}}]}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "invalid_request_error"
    assert "text only" in caught.value.body["error"]["message"]

    headers = {"x-api-key": "sesame"}
    for body in ({"messages": QUESTION}, {"max_tokens": 3, "messages": QUESTION, "tool_choice": {"type": "any"}},
                 {"max_tokens": 3, "messages": QUESTION, "stop_sequences": ["x"] * 17},
                 {"max_tokens": 3, "messages": [{"role": "system", "content": "x"}]},
                 {"max_tokens": 3, "messages": QUESTION, "tools": [{"type": "web_search_20250305", "name": "s"}]},
                 {"max_tokens": 3, "messages": QUESTION, "thinking": {"type": "sometimes"}}):
        response = httpx.post(keyed_server.url + "/v1/messages", json=body, headers=headers)
        assert response.status_code == 400, body
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error", error
        assert error["error"]["message"]
    # the other APIs' paths keep OpenAI's shape
    response = httpx.post(keyed_server.url + "/v1/chat/completions", json={"messages": []}, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_bad_and_cancelled_requests_hurt_no_other(keyed_server):
    """While a chat completion streams, bad Messages and Responses requests get their 400s and a Messages stream
    dropped by its client is cancelled: the first stream ends as it would have, and the server answers on."""
    headers, url = {"x-api-key": "sesame"}, keyed_server.url
    body = {"messages": QUESTION, "max_tokens": 24, "stream": True, **GREEDY}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as first:
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        assert httpx.post(url + "/v1/messages", json={"messages": QUESTION}, headers=headers).status_code == 400
        assert httpx.post(url + "/v1/responses", json={"input": "x", "previous_response_id": "r"},
                          headers=headers).status_code == 400
        with httpx.stream("POST", url + "/v1/messages", headers=headers, timeout=60, json={
                "max_tokens": 24, "messages": QUESTION, "stream": True}) as dropped:
            assert dropped.status_code == 200  # and closed unread: the client went away
        data = [json.loads(line[6:]) for line in lines if line.startswith("data: ") and line != "data: [DONE]"]
    assert data[-1]["choices"][0]["finish_reason"] == "length"
    assert data[-1]["timings"]["predicted_n"] == 24
    after = client(keyed_server, "sesame").messages.create(model="any", max_tokens=3, messages=QUESTION,
                                                          extra_body=GREEDY)
    assert after.usage.output_tokens == 3


# --- gpt-oss's template: thinking -------------------------------------------------------------------------



def test_a_harmony_reply_is_a_thinking_block_then_a_tool_use():
    chat_tool = {"type": "function", "function": {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}}
    tools = ToolRequest.from_fields([chat_tool], "auto", True, GPT_OSS_TEMPLATE)
    run = SimpleNamespace(served=SimpleNamespace(alias="gpt-oss"), tools=tools,
                          job=SimpleNamespace(prompt=[1, 2, 3], generation=None))
    answer = MessageEvents(run, [])
    data = streamed_data(answer, REASONED_CALL, 5)
    starts = [d["content_block"]["type"] for d in data if d["type"] == "content_block_start"]
    deltas = {d["delta"]["type"] for d in data if d["type"] == "content_block_delta"}
    assert starts == ["thinking", "tool_use"] and {"thinking_delta", "input_json_delta"} <= deltas
    thinking, use = answer.message["content"]
    assert thinking == {"type": "thinking", "thinking": "The user wants the weather.", "signature": ""}
    assert use["type"] == "tool_use" and use["input"] == {"city": "Paris"}
    assert answer.message["stop_reason"] == "tool_use" and data[-2]["delta"]["stop_reason"] == "tool_use"
    assert not any("<|" in json.dumps(d) for d in data)  # no markup anywhere
