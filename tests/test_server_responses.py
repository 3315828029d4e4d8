"""POST /v1/responses (llamapyz/server/responses.py): the official openai client's `responses.create` against
`llamapyz serve` on the real SmolLM2, streaming and not, a function tool round trip, a json_schema text
format, and the OpenAI Agents SDK's default model (Responses) running a function tool; on the tiny llama, what
a stateless server refuses and how; on the gpt-oss template, reasoning.effort reaching the template and a
harmony reply's reasoning coming out as a reasoning item."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import jsonschema
import openai
import pytest

from llamapyz.chat.tools import ToolRequest
from llamapyz.server.responses import ResponseEvents
from tests.live_server import ServerThread
from tests.test_server_harmony import REASONED_CALL, streamed_data
from tests.test_server_harmony import TEMPLATE as GPT_OSS_TEMPLATE
from tests.test_server_harmony import server as harmony_server  # noqa: F401 (a fixture)

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}
QUESTION = "What is the capital of France? Answer in one sentence."
WEATHER_QUESTION = "What is the weather like in Paris today?"


def client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, **kwargs)


@pytest.mark.slow
def test_create_streamed_and_not(smollm2_server):
    api = client(smollm2_server)
    response = api.responses.create(model="smollm2", input=QUESTION, instructions="You are a helpful assistant.",
                                    temperature=0, max_output_tokens=24)
    assert response.object == "response" and response.status == "completed" and "Paris" in response.output_text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens > 10 and usage.output_tokens >= 1 and usage.output_tokens_details.reasoning_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens and response.store is False

    events = list(api.responses.create(model="smollm2", input=QUESTION, instructions="You are a helpful assistant.",
                                       temperature=0, max_output_tokens=24, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds) > 9
    assert [event.sequence_number for event in events] == list(range(len(events)))
    streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert streamed == response.output_text == events[-4].text  # greedy: the same text
    final = events[-1].response
    assert final.output_text == streamed and final.usage.output_tokens == usage.output_tokens
    assert events[2].item.id == final.output[0].id


@pytest.mark.slow
def test_a_function_tool_round_trip(smollm2_server):
    api = client(smollm2_server)
    first = api.responses.create(model="smollm2", input=WEATHER_QUESTION, tools=[WEATHER], tool_choice="required",
                                 parallel_tool_calls=False, temperature=0, max_output_tokens=60)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])

    # streamed: the same call, its arguments in pieces
    events = list(api.responses.create(model="smollm2", input=WEATHER_QUESTION, tools=[WEATHER],
                                       tool_choice={"type": "function", "name": "get_weather"},
                                       parallel_tool_calls=False, temperature=0, max_output_tokens=60, stream=True))
    pieces = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    [done] = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert len(pieces) > 1 and "".join(pieces) == done.arguments == call.arguments
    assert events[2].type == "response.output_item.added" and events[2].item.type == "function_call"
    assert events[-1].type == "response.completed" and events[-1].response.output[0].name == "get_weather"

    history = [{"role": "user", "content": WEATHER_QUESTION},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "sky": "sunny"})}]
    answer = api.responses.create(model="smollm2", input=history, tools=[WEATHER], tool_choice="none",
                                  temperature=0, max_output_tokens=40)
    assert [item.type for item in answer.output] == ["message"] and answer.output_text.strip()
    question = api.responses.create(model="smollm2", input=WEATHER_QUESTION, max_output_tokens=1)
    assert answer.usage.input_tokens > question.usage.input_tokens + 20  # the call and its result are in the prompt


@pytest.mark.slow
def test_json_schema_text_format(smollm2_server):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = client(smollm2_server).responses.create(
        model="smollm2", input="Give the name and age of a fictional person.", temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(response.output_text), schema)


@pytest.mark.slow
def test_the_agents_sdk_default_model_runs_a_function_tool(smollm2_server):
    """The OpenAI Agents SDK's default model speaks Responses (streamed): the agent's loop calls the tool, sends
    its output back and ends with the model's answer."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    cities = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"Sunny and 21 degrees in {city}."

    api = openai.AsyncOpenAI(base_url=smollm2_server.url + "/v1", api_key="unused", max_retries=0)
    agent = Agent(name="assistant", instructions="You are a helpful assistant.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="smollm2", openai_client=api),
                  # required: SmolLM2 would rather answer at once; the SDK resets it to auto after the call
                  model_settings=ModelSettings(temperature=0, tool_choice="required", parallel_tool_calls=False,
                                               max_tokens=60))
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    assert cities == ["Paris"]
    assert [type(item).__name__ for item in result.new_items] == ["ToolCallItem", "ToolCallOutputItem",
                                                                  "MessageOutputItem"]
    assert "Sunny" in result.final_output  # SmolLM2 repeats the tool's answer


# --- the tiny llama: what is refused ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_server(tiny_llama):
    with ServerThread(tiny_llama, n_ctx=256, n_slots=1) as live:
        yield live


def test_stateless_refusals_and_bad_items(tiny_server):
    api = client(tiny_server)
    with pytest.raises(openai.BadRequestError) as caught:
        api.responses.create(model="any", input="hi", previous_response_id="resp_123", max_output_tokens=2)
    assert caught.value.body["param"] == "previous_response_id" and "whole conversation" in caught.value.message
    stored = api.responses.create(model="any", input="hi", store=True, max_output_tokens=2, temperature=0)
    assert stored.store is False and stored.status == "incomplete"
    assert stored.incomplete_details.reason == "max_output_tokens" and stored.usage.output_tokens == 2
    for bad, param in (({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
                       ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
                       ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
                       ({"input": "hi", "tool_choice": {"type": "function"}}, "tool_choice"),
                       ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text"),
                       ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning"),
                       ({"input": []}, "input"), ({"input": 5}, "input")):
        response = httpx.post(tiny_server.url + "/v1/responses", json={"max_output_tokens": 2, **bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == param, response.json()


def test_input_items_become_the_conversation(tiny_server):
    """A function call and its output in `input` render as an assistant's call and a tool result: the prompt
    is longer than the question alone by what they add; a reasoning item is accepted."""
    def tokens(items) -> int:
        body = {"input": items, "max_output_tokens": 1, "temperature": 0}
        return httpx.post(tiny_server.url + "/v1/responses", json=body, timeout=60).json()["usage"]["input_tokens"]

    question = [{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]}]
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}]}
    alone, with_call = tokens(question), tokens([*question, reasoning, call, output])
    assert with_call > alone + len("sunny") and tokens("weather?") == alone


# --- gpt-oss's template: reasoning ------------------------------------------------------------------------

def test_reasoning_effort_reaches_the_template(harmony_server):  # noqa: F811 (the fixture)
    """gpt-oss's template writes "Reasoning: <effort>" in its system message (the tiny vocabulary is bytes)."""
    def input_tokens(effort: str) -> int:
        body = {"input": "hi", "reasoning": {"effort": effort}, "max_output_tokens": 1, "temperature": 0}
        return httpx.post(harmony_server.url + "/v1/responses", json=body, timeout=60).json()["usage"]["input_tokens"]

    lengths = {effort: input_tokens(effort) for effort in ("low", "medium", "high")}
    assert lengths["high"] - lengths["low"] == 1 and lengths["medium"] - lengths["low"] == 3




def fake_run(tools: ToolRequest, generation=None) -> SimpleNamespace:
    """What `ResponseEvents` reads of a chat job: the model's alias and tokenizer, the prompt."""
    model = SimpleNamespace(tokenize=lambda text, add_special: list(text.encode()))
    return SimpleNamespace(served=SimpleNamespace(alias="gpt-oss"), model=model, tools=tools,
                           job=SimpleNamespace(prompt=[1, 2, 3], generation=generation))


def test_a_harmony_reply_is_a_reasoning_item_then_a_call():
    chat_tool = {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
    tools = ToolRequest.from_fields([chat_tool], "auto", True, GPT_OSS_TEMPLATE)
    fields = {"instructions": None, "max_output_tokens": None, "text": None, "tool_choice": None, "tools": [WEATHER],
              "metadata": None}
    answer = ResponseEvents(fake_run(tools), fields, {"parallel_tool_calls": True, "temperature": 0.0,
                                                      "top_p": 1.0}, "low")
    data = streamed_data(answer, REASONED_CALL, 7)
    kinds = [event["type"] for event in data]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.reasoning_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    reasoning, call = answer.response["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [
        {"type": "reasoning_text", "text": "The user wants the weather."}]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert answer.response["usage"]["output_tokens_details"]["reasoning_tokens"] == len("The user wants the weather.")
    assert kinds[-1] == "response.completed" and answer.response["reasoning"]["effort"] == "low"
    assert not any("<|" in json.dumps(event) for event in data)  # no markup anywhere
