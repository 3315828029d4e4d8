"""Tool calling (llamapyz/chat/tools.py) against the models' real chat templates (tests/data/templates): each
template's tool syntax is recognised; a conversation with tools, an assistant's calls and a tool's result
renders through it; the calls the template writes parse back into OpenAI's shape; streamed parsing equals
whole parsing; forced calls' grammars accept exactly calls of the named tools with schema-valid arguments."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from llamapyz.chat.template import ChatTemplate
from llamapyz.chat.tools import (
    SYNTAXES,
    ToolError,
    ToolRequest,
    call_grammar,
    call_stream,
    lazy_call_constraint,
    parse_calls,
    prepare_messages,
    render_call,
    syntax_of,
)
from llamapyz.decode.generation import Generation
from llamapyz.decode.sampling import SamplingParams
from llamapyz.model.model import Model
from llamapyz.tokenizer import Tokenizer

TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}},
                   "required": ["zone"]}}}
CALL = {"id": "call_abc123", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}
CONVERSATION = [{"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temp": 21}'}]

# template file -> the tool syntax the model writes (tests/data/templates/README.md)
NATIVE = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
    "Qwen-Qwen3-0.6B.jinja": "hermes",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    "mistralai-Mistral-Small-3.1-24B-Instruct-2503.jinja": "mistral",
    "llama-cpp-microsoft-Phi-4-mini-instruct.jinja": "phi4",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": "mistral3",
    "openai-gpt-oss-120b.jinja": "harmony",
}
NO_TOOLS = ["HuggingFaceTB-SmolLM2-135M-Instruct.jinja", "google-gemma-2-2b-it.jinja"]


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(), bos_token="<s>", eos_token="</s>")


def request(name: str, tools: list | None = None, choice: object = "auto", parallel: bool = True) -> ToolRequest:
    return ToolRequest.from_fields(tools or [WEATHER, TIME], choice, parallel, (TEMPLATES / name).read_text())


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_templates_with_tool_syntax_render_the_whole_round(name: str) -> None:
    req = request(name)
    assert req.native and req.syntax.name == NATIVE[name]
    messages, context = prepare_messages(CONVERSATION, req)
    text = template(name).render(messages, **context)
    assert "get_weather" in text and "get_time" in text  # the tools are described
    assert '"temp": 21' in text or '\\"temp\\": 21' in text  # the tool's result
    assert '\\"city\\"' not in text  # arguments rendered as an object, not a JSON string quoted again
    # the call as the template writes it into the history is what our parser reads from the model
    history = template(name).render(messages[:3], add_generation_prompt=False)
    prompt = template(name).render(messages[:2], add_generation_prompt=True)
    reply = history[len(prompt):] if history.startswith(prompt) else history[history.rindex("Paris?") + 6:]
    content, calls = parse_calls(reply, req.syntax, {"get_weather", "get_time"})
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"})]


@pytest.mark.parametrize("name", NO_TOOLS)
def test_templates_without_tool_syntax_are_taught_the_generic_one(name: str) -> None:
    req = request(name)
    assert syntax_of((TEMPLATES / name).read_text()) is None and not req.native
    messages, context = prepare_messages(CONVERSATION[1:], req)  # Gemma 2 refuses a system turn: none here
    assert context == {}
    text = template(name).render(messages)
    assert "<tool_call>" in text and '"name": "get_weather"' in text and "<tool_response>" in text
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user"]  # instructions, question, call, result


def test_mistral_ids_are_nine_characters() -> None:
    name = "mistralai-Mistral-Nemo-Instruct-2407.jinja"
    messages, context = prepare_messages(CONVERSATION, request(name))
    short = messages[2]["tool_calls"][0]["id"]
    assert len(short) == 9 and messages[3]["tool_call_id"] == short
    template(name).render(messages, **context)  # the template raises on any other length


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_streamed_parsing_equals_whole_parsing(syntax: str) -> None:
    s = SYNTAXES[syntax]
    calls = [render_call(s, "get_weather", {"city": "Paris", "unit": "C"}), render_call(s, "get_time", {"zone": "UTC"})]
    text = calls[0] if syntax == "llama3" else f"Let me check.\n{calls[0]}\n{calls[1]}"
    names = {"get_weather", "get_time"}
    content, whole = parse_calls(text, s, names)
    rng = np.random.default_rng(0)
    for _ in range(20):  # random piece boundaries, as tokens come
        cuts = sorted(rng.choice(np.arange(1, len(text)), size=8, replace=False))
        stream = call_stream(s, names)
        pieces = zip([0, *cuts], [*cuts, len(text)], strict=True)
        events = [e for a, b in pieces for e in stream.feed(text[a:b])] + stream.finish()
        streamed_content = "".join(e[1] for e in events if e[0] == "content")
        headers = [e for e in events if e[0] == "call"]
        arguments = ["".join(e[2] for e in events if e[0] == "arguments" and e[1] == i)
                     for i in range(len(headers))]
        assert streamed_content.strip() == content
        assert [(h[3], json.loads(a)) for h, a in zip(headers, arguments, strict=True)] == \
            [(c.name, json.loads(c.arguments)) for c in whole]
    assert len(whole) == (1 if syntax == "llama3" else 2)


def test_text_that_is_not_a_call_stays_text() -> None:
    hermes = SYNTAXES["hermes"]
    for text in ('I would call <tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call>',
                 "Half a call <tool_call>\n{\"name\": \"get_wea", "Use <tool_call> tags.", "Plain answer."):
        content, calls = parse_calls(text, hermes, {"get_weather"})
        assert calls == [] and content == text


def test_tool_requests_are_checked() -> None:
    source = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    for tools, choice in [([{"type": "function"}], "auto"), ([WEATHER, WEATHER], "auto"), ([WEATHER], "sometimes"),
                          ([WEATHER], {"type": "function", "function": {"name": "nope"}}), (None, "required"),
                          ([{"type": "function", "function": {"name": "bad name!"}}], "auto")]:
        with pytest.raises(ToolError):
            ToolRequest.from_fields(tools, choice, True, source)
    choice = {"type": "function", "function": {"name": "get_time"}}
    named = ToolRequest.from_fields([WEATHER, TIME], choice, True, source)
    assert [t["function"]["name"] for t in named.forced] == ["get_time"]
    assert ToolRequest.from_fields([WEATHER], "none", True, source).active is False


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_path)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_forced_call_grammars_take_calls_of_the_tools_only(tokenizer: Tokenizer, syntax: str) -> None:
    req = ToolRequest([WEATHER, TIME], "required", False, SYNTAXES[syntax], True)
    good = render_call(SYNTAXES[syntax], "get_weather", {"city": "Paris", "unit": "C"})
    bad_name = render_call(SYNTAXES[syntax], "get_wind", {"city": "Paris", "unit": "C"})
    bad_args = render_call(SYNTAXES[syntax], "get_weather", {"city": "Paris", "unit": "K"})
    assert accepts(call_grammar(req, tokenizer), tokenizer, good)
    assert not accepts(call_grammar(req, tokenizer), tokenizer, bad_name)
    assert not accepts(call_grammar(req, tokenizer), tokenizer, bad_args)


def accepts(grammar, tokenizer: Tokenizer, text: str) -> bool:
    """Whether the grammar takes text token by token and may end after it."""
    constraint = grammar.constraint(tokenizer)
    for token in tokenizer.encode(text, add_special=False, parse_special=False):
        if not constraint.allowed()[token]:
            return False
        constraint.advance(token)
    return constraint.complete or bool(constraint.allowed()[sorted(tokenizer.eog_ids)].any())


def test_the_real_model_forced_to_call_writes_schema_valid_arguments(smollm2_path: Path) -> None:
    model = Model.load(smollm2_path, n_ctx=512)
    req = request("HuggingFaceTB-SmolLM2-135M-Instruct.jinja", [WEATHER], "required", parallel=False)
    messages, context = prepare_messages([{"role": "user", "content": "What is the weather in Oslo?"}], req)
    tokens = model.chat_tokens(messages, **context)
    generation = Generation(model.tokenizer, tokens, 100, SamplingParams(temperature=0.0), model.n_ctx,
                            constraint=call_grammar(req, model.tokenizer).constraint(model.tokenizer))
    logits, text = model.prefill(tokens), ""
    while True:
        step = generation.step(logits)
        text += step.text
        if step.finish_reason:
            break
        logits = model.decode(step.token)
    assert step.finish_reason == "stop", text
    content, calls = parse_calls(text, req.syntax, {"get_weather"})
    assert content == "" and len(calls) == 1 and calls[0].name == "get_weather", text
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_with_auto_a_call_once_opened_follows_the_schemas(tokenizer: Tokenizer, syntax: str) -> None:
    s = SYNTAXES[syntax]
    req = ToolRequest([WEATHER, TIME], "auto", True, s, True)
    call = render_call(s, "get_weather", {"city": "Paris", "unit": "C"})
    prose = "" if syntax == "llama3" else "Let me look that up. "
    lazy = lazy_call_constraint(req, tokenizer)
    logits = np.zeros(tokenizer.n_vocab, np.float32)
    for token in tokenizer.encode(prose + call, add_special=False, parse_special=False):
        allowed = logits.copy()
        lazy.mask(allowed)
        assert np.isfinite(allowed[token]), tokenizer.token_bytes(token)
        lazy.advance(token)
    assert lazy.active is not None  # the call opened the grammar
    wrong = lazy_call_constraint(req, tokenizer)  # a call of an unknown tool cannot be written
    text = prose + render_call(s, "get_wind", {"city": "Paris"})
    tokens = tokenizer.encode(text, add_special=False, parse_special=False)
    refused = False
    for token in tokens:
        allowed = logits.copy()
        wrong.mask(allowed)
        if not np.isfinite(allowed[token]):
            refused = True
            break
        wrong.advance(token)
    assert refused
    free = lazy_call_constraint(req, tokenizer)  # plain prose stays free
    for token in tokenizer.encode("Paris is sunny {today}.", add_special=False):
        free.advance(token)
    assert free.active is None


@pytest.mark.parametrize("cut", ['<tool_call>\n{"', "<tool_call>", '<tool_call>\n{"name": "get_wea'])
def test_a_further_call_cut_short_is_not_content(cut: str) -> None:
    """tool_choice "required" with parallel calls: SmolLM2 repeats its call until max_tokens, and the last one,
    cut before its name, came back as the message's content ('<tool_call>\\n{"')."""
    hermes = SYNTAXES["hermes"]
    call = render_call(hermes, "get_weather", {"city": "Paris", "unit": "C"})
    content, calls = parse_calls(f"{call}\n{call}\n{cut}", hermes, {"get_weather"})
    assert content == "" and [c.name for c in calls] == ["get_weather", "get_weather"]
    stream = call_stream(hermes, {"get_weather"})
    events = [e for piece in (call, "\n", call, "\n", cut) for e in stream.feed(piece)] + stream.finish()
    assert "".join(e[1] for e in events if e[0] == "content").strip() == ""
