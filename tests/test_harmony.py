"""gpt-oss's harmony format (llamapyz/chat/harmony.py, reply.py): its real template (tests/data/templates/
openai-gpt-oss-120b.jinja) renders plain chat, a system message, tools, a history of calls and results, and
reasoning as the template's text says it should; replies (reasoning, final answers, calls in both header
orders) are read into OpenAI's shape whole, streamed in any pieces, and cut short anywhere, never letting
markup into content; forced and lazy call grammars take harmony calls of the tools only, on a vocabulary with
gpt-oss's special tokens; a fixed token stream through `Generation` reaches the reader with its markers."""

from __future__ import annotations

import json
import re
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

TEMPLATE = (Path(__file__).resolve().parent / "data" / "templates" / "openai-gpt-oss-120b.jinja").read_text()
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city",
                                                             "maxLength": 20},
                                                    "unit": {"type": "string", "enum": ["C", "F"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                         "parameters": {"type": "object", "properties": {}}}}
HARMONY_TOKENS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"]

# the system message the template writes (build_system_message), its date replaced by DATE
SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
          "Knowledge cutoff: 2024-06\nCurrent date: DATE\n\nReasoning: medium\n\n"
          "# Valid channels: analysis, commentary, final. Channel must be included for every message.")
TOOLS_NOTE = "\nCalls to these tools must go to the commentary channel: 'functions'."
NAMESPACE = ("# Tools\n\n## functions\n\nnamespace functions {\n\n"
             "// The weather in a city.\ntype get_weather = (_: {\n// The city\ncity: string,\nunit?: \"C\" | \"F\",\n"
             "}) => any;\n\n"
             "// The time now.\ntype get_time = () => any;\n\n"
             "} // namespace functions")


def request(tools: list | None = None, choice: object = "auto") -> ToolRequest:
    return ToolRequest.from_fields(tools, choice, True, TEMPLATE)


def render(messages: list[dict], req: ToolRequest | None = None, add_generation_prompt: bool = True) -> str:
    req = req or request()
    prepared, context = prepare_messages(messages, req)
    text = ChatTemplate(TEMPLATE).render(prepared, add_generation_prompt, **context)
    return re.sub(r"Current date: \d{4}-\d{2}-\d{2}", "Current date: DATE", text)


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# --- the template -----------------------------------------------------------------------------------------

def test_plain_chat() -> None:
    assert request().syntax.name == "harmony" and request().reasoning == "harmony"
    assert render([{"role": "user", "content": "Hi"}]) == \
        SYSTEM + "<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant"


def test_a_system_message_becomes_the_developer_instructions() -> None:
    text = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == (SYSTEM + "<|end|><|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
                    "<|start|>user<|message|>Hi<|end|><|start|>assistant")


def test_tools_are_a_typescript_namespace() -> None:
    text = render([{"role": "user", "content": "Hi"}], request([WEATHER, TIME]))
    assert text == (SYSTEM + TOOLS_NOTE + "<|end|><|start|>developer<|message|>" + NAMESPACE + "<|end|>"
                    "<|start|>user<|message|>Hi<|end|><|start|>assistant")


def test_a_history_of_calls_and_results() -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "reasoning_content": "Need the weather.",
                 "tool_calls": [call("call_1", "get_weather", {"city": "Paris"})]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    text = render(messages, request([WEATHER, TIME]))
    assert text.endswith(
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        # no final answer follows: the call's analysis is kept
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"{\\"temp\\": 21}"<|end|>'
        "<|start|>assistant")
    # with a final answer after it, the analysis of the call is dropped
    later = render([*messages, {"role": "assistant", "content": "21 degrees."}, {"role": "user", "content": "Thanks"}],
                   request([WEATHER, TIME]))
    assert "Need the weather." not in later and "<|channel|>final<|message|>21 degrees.<|end|>" in later


def test_several_calls_become_one_message_each_followed_by_its_result() -> None:
    messages = [{"role": "user", "content": "Weather and time?"},
                {"role": "assistant", "content": "", "tool_calls": [call("a", "get_weather", {"city": "Oslo"}),
                                                                    call("b", "get_time", {})]},
                {"role": "tool", "tool_call_id": "b", "content": "noon"},  # results in the other order
                {"role": "tool", "tool_call_id": "a", "content": "cold"}]
    text = render(messages, request([WEATHER, TIME]))
    assert text.endswith(
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"cold"<|end|>'
        "<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{}<|call|>"
        '<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>"noon"<|end|>'
        "<|start|>assistant")


def test_reasoning_is_rendered_only_where_the_template_keeps_it() -> None:
    turn = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet."}]
    # the last message, no generation prompt (training layout): analysis then the final answer
    assert render(turn, add_generation_prompt=False).endswith(
        "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>analysis<|message|>Greet.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>")
    # an earlier turn: its reasoning is dropped
    assert render([*turn, {"role": "user", "content": "Bye"}]).endswith(
        "<|start|>assistant<|channel|>final<|message|>Hello!<|end|><|start|>user<|message|>Bye<|end|>"
        "<|start|>assistant")


def test_end_of_turn_is_return() -> None:
    assert ChatTemplate(TEMPLATE).end_of_turn == "<|return|>"


# --- reading replies --------------------------------------------------------------------------------------

ANSWER = "<|channel|>analysis<|message|>The user greets.<|end|><|start|>assistant<|channel|>final<|message|>Hello!"
CALL_IN_CHANNEL = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
                   'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')
CALL_IN_ROLE = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}'


def read(text: str, tools: list | None = None, choice: str = "auto"):
    return read_reply(text, request(tools if tools is not None else [WEATHER, TIME], choice))


def test_reasoning_and_answer() -> None:
    for ending in ("", "<|return|>", "<|end|>"):
        reply = read(ANSWER + ending)
        assert (reply.reasoning, reply.content, reply.calls) == ("The user greets.", "Hello!", [])
        assert reply.message() == {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets."}


@pytest.mark.parametrize("text", [CALL_IN_CHANNEL, CALL_IN_ROLE, CALL_IN_CHANNEL + "<|call|>",
                                  CALL_IN_CHANNEL.replace(" <|constrain|>json", "")])
def test_a_call_in_either_header_order(text: str) -> None:
    reply = read(text)
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [("get_weather", {"city": "Paris"})]
    assert reply.content == "" and reply.message()["content"] is None
    assert reply.reasoning == ("Need weather." if "analysis" in text else "")


def test_a_preamble_is_content_and_unknown_recipients_are_dropped() -> None:
    text = ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>commentary "
            'to=browser.search <|constrain|>json<|message|>{"query": "x"}<|call|>')
    reply = read(text)
    assert (reply.content, reply.calls) == ("Checking.", [])
    # with no tools (or tool_choice none), a call is dropped, the rest kept
    reply = read(CALL_IN_CHANNEL, tools=[WEATHER], choice="none")
    assert (reply.reasoning, reply.content, reply.calls) == ("Need weather.", "", [])


def test_a_reply_without_harmony_markup_is_content() -> None:
    for text in ("Just text.", "{\"a\": 1}", "Hello <b>"):
        reply = read(text)
        assert (reply.content, reply.reasoning, reply.calls) == (text, "", [])


REPLIES = [ANSWER, CALL_IN_CHANNEL, CALL_IN_ROLE,
           "<|channel|>analysis<|message|>a < b<|end|><|start|>assistant<|channel|>final<|message|>x <| y"]


@pytest.mark.parametrize("text", REPLIES)
def test_streamed_reading_equals_whole_reading(text: str) -> None:
    whole = read(text)
    rng = np.random.default_rng(0)
    for _ in range(30):
        cuts = sorted(rng.choice(np.arange(1, len(text)), size=10, replace=False))
        stream = reply_stream(request([WEATHER, TIME]))
        events = [e for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) for e in stream.feed(text[a:b])]
        delta = tool_delta(events + stream.finish())
        assert delta.get("content", "") == whole.content
        assert delta.get("reasoning_content", "") == whole.reasoning
        calls = delta.get("tool_calls", [])
        assert [(c["function"].get("name"), json.loads(c["function"]["arguments"])) for c in calls] == \
            [(c.name, json.loads(c.arguments)) for c in whole.calls]
    assert stream.n_calls == len(whole.calls)


@pytest.mark.parametrize("text", REPLIES)
def test_a_reply_cut_anywhere_shows_no_markup(text: str) -> None:
    whole = read(text)
    for end in range(len(text) + 1):
        cut = read(text[:end])
        assert not any(marker in cut.content + cut.reasoning for marker in HARMONY_TOKENS)
        assert whole.content.startswith(cut.content) and whole.reasoning.startswith(cut.reasoning)
        assert [c.name for c in cut.calls] in ([], [c.name for c in whole.calls])
        for part, full in zip(cut.calls, whole.calls, strict=False):
            assert full.arguments.startswith(part.arguments) or part.arguments == "{}"


# --- grammars, on a vocabulary with gpt-oss's special tokens ----------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """The byte-level test vocabulary plus gpt-oss's markers (written as control tokens, as its GGUF has them:
    the loader retypes them as llama.cpp does)."""
    metadata = byte_level_tokenizer()
    tokens, types = list(metadata["tokenizer.ggml.tokens"][1]), list(metadata["tokenizer.ggml.token_type"][1])
    metadata["tokenizer.ggml.tokens"] = ("array", tokens + HARMONY_TOKENS)
    metadata["tokenizer.ggml.token_type"] = ("array", types + [3] * len(HARMONY_TOKENS))
    path = tmp_path_factory.mktemp("harmony") / "harmony-vocab.gguf"
    write_gguf(path, None, metadata)
    return Tokenizer.from_gguf(path)


def test_the_vocabulary_is_typed_as_llama_cpp_does(tokenizer: Tokenizer) -> None:
    ids = tokenizer.vocab.token_to_id
    assert ids["<|return|>"] in tokenizer.eog_ids and ids["<|call|>"] in tokenizer.eog_ids
    assert ids["<|end|>"] not in tokenizer.eog_ids  # ends a message, not the reply
    assert reply_marker_tokens(request(), tokenizer) == frozenset()  # the markers are rendered text


def accepts(grammar, tokenizer: Tokenizer, text: str) -> bool:
    constraint = grammar.constraint(tokenizer)
    for token in tokenizer.encode(text, add_special=False, parse_special=False):
        if not constraint.allowed()[token]:
            return False
        constraint.advance(token)
    return constraint.complete or bool(constraint.allowed()[sorted(tokenizer.eog_ids)].any())


def test_a_forced_call_may_reason_first_then_must_call_a_tool(tokenizer: Tokenizer) -> None:
    grammar = call_grammar(request([WEATHER, TIME], "required"), tokenizer)
    good = render_call(SYNTAXES["harmony"], "get_weather", {"city": "Paris"})
    assert good == '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
    assert accepts(grammar, tokenizer, good)
    assert accepts(grammar, tokenizer, "<|channel|>analysis<|message|>Paris, so <|start|> is fine.<|end|>"
                                       "<|start|>assistant" + good)
    assert accepts(grammar, tokenizer, render_call(SYNTAXES["harmony"], "get_time", {}))
    assert not accepts(grammar, tokenizer, render_call(SYNTAXES["harmony"], "get_wind", {"city": "Paris"}))
    assert not accepts(grammar, tokenizer, render_call(SYNTAXES["harmony"], "get_weather", {"town": "Paris"}))
    assert not accepts(grammar, tokenizer, "<|channel|>final<|message|>Sunny.")
    named = call_grammar(request([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}), tokenizer)
    assert not accepts(named, tokenizer, good)


def test_with_auto_a_call_once_addressed_follows_the_schemas(tokenizer: Tokenizer) -> None:
    logits = np.zeros(tokenizer.n_vocab, np.float32)

    def write(text: str):
        lazy = lazy_call_constraint(request([WEATHER, TIME]), tokenizer)
        for token in tokenizer.encode(text, add_special=False, parse_special=False):
            allowed = logits.copy()
            lazy.mask(allowed)
            if not np.isfinite(allowed[token]):
                return None
            lazy.advance(token)
        return lazy

    for text in (CALL_IN_CHANNEL, CALL_IN_ROLE):
        lazy = write(text)
        assert lazy is not None and lazy.active is not None and lazy.complete
    assert write(CALL_IN_CHANNEL.replace("get_weather", "get_wind")) is None
    assert write(CALL_IN_CHANNEL.replace('"city"', '"town"')) is None
    assert write(ANSWER).active is None  # an answer stays free


def test_a_token_stream_reaches_the_reader_with_its_markers(tokenizer: Tokenizer) -> None:
    """Generation on fixed tokens (the layer under the model): the markers are text, <|call|> ends it."""
    tokens = tokenizer.encode(CALL_IN_CHANNEL, add_special=False, parse_special=False)
    tokens.append(tokenizer.vocab.token_to_id["<|call|>"])
    req = request([WEATHER, TIME])
    generation = Generation(tokenizer, [0], 100, SamplingParams(temperature=0.0), 1000,
                            stop=["<|return|>"], keep_text=reply_marker_tokens(req, tokenizer))
    stream, events, finish = reply_stream(req), [], None
    for token in tokens:
        logits = np.full(tokenizer.n_vocab, -10.0, np.float32)
        logits[token] = 10.0
        step = generation.step(logits)
        events += stream.feed(step.text)
        finish = step.finish_reason
        if finish:
            break
    delta = tool_delta(events + stream.finish())
    assert finish == "stop" and delta["reasoning_content"] == "Need weather." and "content" not in delta
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in delta["tool_calls"]] == \
        [("get_weather", {"city": "Paris"})]
