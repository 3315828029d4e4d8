"""Mistral 3's tool calls and reasoning (llamapyz/chat/tools.py's "mistral3" syntax, think.py, reply.py) on the
real Ministral 3 Reasoning template (tests/data/templates/mistralai-Ministral-3-14B-Reasoning-2512.jinja):
the syntax is recognised; a conversation with tools, reasoning, calls and results renders as the template's
text says; `[THINK]…[/THINK]` and `[TOOL_CALLS]name[ARGS]{…}` replies are read whole, streamed and cut short;
forced and lazy grammars take such calls of the tools only, on a vocabulary where the markers are control
tokens, whose text reaches the reader through `Generation`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llamapyz.chat.reply import read_reply, reply_marker_tokens, reply_stream
from llamapyz.chat.template import ChatTemplate
from llamapyz.chat.tools import SYNTAXES, ToolRequest, call_grammar, lazy_call_constraint, prepare_messages, render_call
from llamapyz.decode.generation import Generation
from llamapyz.decode.sampling import SamplingParams
from llamapyz.server.completions import tool_delta
from llamapyz.tokenizer import Tokenizer
from tests.synth import byte_level_tokenizer, write_gguf

TEMPLATE = (Path(__file__).resolve().parent / "data" / "templates" /
            "mistralai-Ministral-3-14B-Reasoning-2512.jinja").read_text()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a zone.",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                        "required": ["zone"]}}}
MARKERS = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "[TOOL_CALLS]", "[ARGS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[THINK]", "[/THINK]"]


def request(tools: list | None = None, choice: object = "auto", parallel: bool = True) -> ToolRequest:
    return ToolRequest.from_fields(tools if tools is not None else [WEATHER, TIME], choice, parallel, TEMPLATE)


def render(messages: list[dict], req: ToolRequest) -> str:
    prepared, context = prepare_messages(messages, req)
    return ChatTemplate(TEMPLATE, bos_token="<s>", eos_token="</s>").render(prepared, **context)


# --- the template -----------------------------------------------------------------------------------------

def test_the_syntax_and_reasoning_are_recognised() -> None:
    req = request()
    assert (req.syntax.name, req.reasoning, req.native) == ("mistral3", "think", True)
    assert req.syntax.markers == ("[TOOL_CALLS]", "[ARGS]")


def test_a_conversation_with_tools_reasoning_calls_and_results() -> None:
    req = request()
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "reasoning_content": "Need the weather.",
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                                {"id": "call_2", "type": "function",
                                 "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
                {"role": "assistant", "content": "21 degrees at noon.", "reasoning_content": "Easy."},
                {"role": "user", "content": "Thanks"}]
    tools = json.dumps(req.tools, ensure_ascii=False)  # the template's `tools|tojson`
    assert render(messages, req) == (
        "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT]"
        f"[AVAILABLE_TOOLS]{tools}[/AVAILABLE_TOOLS]"
        "[INST]Weather in Paris?[/INST]"
        '[THINK]Need the weather.[/THINK][TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
        '[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}</s>'
        '[TOOL_RESULTS]{"temp": 21}[/TOOL_RESULTS][TOOL_RESULTS]noon[/TOOL_RESULTS]'
        "[THINK]Easy.[/THINK]21 degrees at noon.</s>"
        "[INST]Thanks[/INST]")


def test_without_a_system_message_the_default_one_asks_for_thinking() -> None:
    text = render([{"role": "user", "content": "Hi"}], request([], "none"))
    assert text.startswith("<s>[SYSTEM_PROMPT]# HOW YOU SHOULD THINK AND ANSWER\n\n")
    assert text.endswith("[/SYSTEM_PROMPT][INST]Hi[/INST]")
    assert "[AVAILABLE_TOOLS]" not in text


def test_the_calls_the_template_writes_read_back() -> None:
    req = request()
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = render(messages, req)
    history = render([*messages, {"role": "assistant", "content": "", "reasoning_content": "Hmm.", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}], req)
    reply = read_reply(history[len(prompt):].removesuffix("</s>"), req)
    assert reply.reasoning == "Hmm." and reply.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [("get_weather", {"city": "Paris"})]


# --- reading replies --------------------------------------------------------------------------------------

THOUGHT_CALLS = ('[THINK]Two lookups.[/THINK]Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
                 '[TOOL_CALLS]get_time[ARGS] {"zone": "CET"}')
REPLIES = [THOUGHT_CALLS, "[THINK]a [/ b[/THINK]The answer [is] 42.", "No thinking [THINK] here.",
           '[TOOL_CALLS]get_weather[ARGS]{"city": "[ARGS]"}']


def test_reasoning_content_and_calls() -> None:
    reply = read_reply(THOUGHT_CALLS, request())
    assert (reply.reasoning, reply.content) == ("Two lookups.", "Let me check.")
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == \
        [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    plain = read_reply("[THINK]a [/ b[/THINK]The answer [is] 42.", request([], "none"))  # no tools: no call reading
    assert plain.message() == {"role": "assistant", "content": "The answer [is] 42.", "reasoning_content": "a [/ b"}
    assert read_reply("No thinking [THINK] here.", request()).message() == \
        {"role": "assistant", "content": "No thinking [THINK] here."}


def test_text_that_is_not_a_call_stays_text() -> None:
    for text in ('[TOOL_CALLS]get_wind[ARGS]{"city": "Paris"}', "Use [TOOL_CALLS] to call.", "[TOOL_CALLS]get_wea"):
        reply = read_reply(text, request())
        assert (reply.content, reply.calls) == (text, [])


@pytest.mark.parametrize("text", REPLIES)
def test_streamed_reading_equals_whole_reading(text: str) -> None:
    whole = read_reply(text, request())
    rng = np.random.default_rng(1)
    for _ in range(30):
        cuts = sorted(rng.choice(np.arange(1, len(text)), size=8, replace=False))
        stream = reply_stream(request())
        events = [e for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) for e in stream.feed(text[a:b])]
        delta = tool_delta(events + stream.finish())
        assert delta.get("content", "").strip() == whole.content
        assert delta.get("reasoning_content", "") == whole.reasoning
        assert [(c["function"].get("name"), json.loads(c["function"]["arguments"])) for c in
                delta.get("tool_calls", [])] == [(c.name, json.loads(c.arguments)) for c in whole.calls]


@pytest.mark.parametrize("text", REPLIES)
def test_a_reply_cut_anywhere_keeps_markers_out(text: str) -> None:
    whole = read_reply(text, request())
    for end in range(len(text) + 1):
        cut = read_reply(text[:end], request())
        assert "[THINK]" not in cut.reasoning and "[/THINK" not in cut.reasoning
        assert whole.reasoning.startswith(cut.reasoning)
        if whole.calls and cut.calls:  # a call cut short: the arguments so far
            assert whole.calls[len(cut.calls) - 1].arguments.startswith(cut.calls[-1].arguments.strip())
        if not text[:end].startswith("[THINK]") or "[/THINK]" in text[:end]:
            continue
        assert cut.content == "" and cut.calls == []  # still thinking


# --- grammars and generation, on a vocabulary where Mistral's markers are control tokens -------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    metadata = byte_level_tokenizer()
    tokens, types = list(metadata["tokenizer.ggml.tokens"][1]), list(metadata["tokenizer.ggml.token_type"][1])
    metadata["tokenizer.ggml.tokens"] = ("array", tokens + MARKERS)
    metadata["tokenizer.ggml.token_type"] = ("array", types + [3] * len(MARKERS))
    path = tmp_path_factory.mktemp("mistral3") / "mistral3-vocab.gguf"
    write_gguf(path, None, metadata)
    return Tokenizer.from_gguf(path)


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special=False, parse_special=True)  # the markers as the model writes them


def accepts(grammar, tokenizer: Tokenizer, text: str) -> bool:
    constraint = grammar.constraint(tokenizer)
    for token in encode(tokenizer, text):
        if not constraint.allowed()[token]:
            return False
        constraint.advance(token)
    return constraint.complete or bool(constraint.allowed()[sorted(tokenizer.eog_ids)].any())


def test_the_markers_reach_the_reader(tokenizer: Tokenizer) -> None:
    ids = tokenizer.vocab.token_to_id
    markers = ("[TOOL_CALLS]", "[ARGS]", "[THINK]", "[/THINK]")
    assert reply_marker_tokens(request(), tokenizer) == {ids[m] for m in markers}
    assert reply_marker_tokens(request([], "none"), tokenizer) == {ids["[THINK]"], ids["[/THINK]"]}


def test_forced_calls(tokenizer: Tokenizer) -> None:
    s = SYNTAXES["mistral3"]
    one, two = render_call(s, "get_weather", {"city": "Paris"}), render_call(s, "get_time", {"zone": "CET"})
    assert one == '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
    parallel = call_grammar(request(choice="required"), tokenizer)
    assert accepts(parallel, tokenizer, one) and accepts(parallel, tokenizer, one + two)
    single = call_grammar(request(choice="required", parallel=False), tokenizer)
    assert accepts(single, tokenizer, two) and not accepts(single, tokenizer, one + two)
    assert not accepts(parallel, tokenizer, render_call(s, "get_wind", {"city": "Paris"}))
    assert not accepts(parallel, tokenizer, render_call(s, "get_weather", {"town": "Paris"}))
    assert not accepts(parallel, tokenizer, "Sure." + one)
    named = call_grammar(request(choice={"type": "function", "function": {"name": "get_time"}}), tokenizer)
    assert accepts(named, tokenizer, two) and not accepts(named, tokenizer, one)


def test_with_auto_a_call_once_opened_follows_the_schemas(tokenizer: Tokenizer) -> None:
    logits = np.zeros(tokenizer.n_vocab, np.float32)

    def write(text: str):
        lazy = lazy_call_constraint(request(), tokenizer)
        for token in encode(tokenizer, text):
            allowed = logits.copy()
            lazy.mask(allowed)
            if not np.isfinite(allowed[token]):
                return None
            lazy.advance(token)
        return lazy

    assert write("[THINK]ok[/THINK]Sure." + render_call(SYNTAXES["mistral3"], "get_weather", {"city": "Oslo"})).active
    assert write("Sure." + render_call(SYNTAXES["mistral3"], "get_wind", {"city": "Oslo"})) is None
    assert write("[THINK]no calls[/THINK]Just text.").active is None


def test_a_token_stream_reaches_the_reader_with_its_markers(tokenizer: Tokenizer) -> None:
    req = request()
    generation = Generation(tokenizer, [0], 200, SamplingParams(temperature=0.0), 1000,
                            keep_text=reply_marker_tokens(req, tokenizer))
    stream, events = reply_stream(req), []
    for token in [*encode(tokenizer, THOUGHT_CALLS), 0]:  # then </s> (here <|endoftext|>, the EOS)
        logits = np.full(tokenizer.n_vocab, -10.0, np.float32)
        logits[token] = 10.0
        step = generation.step(logits)
        events += stream.feed(step.text)
        if step.finish_reason:
            break
    delta = tool_delta(events + stream.finish())
    assert step.finish_reason == "stop" and delta["reasoning_content"] == "Two lookups."
    assert delta["content"] == "Let me check."
    names = [c["function"]["name"] for c in delta["tool_calls"] if "name" in c["function"]]
    assert names == ["get_weather", "get_time"]
