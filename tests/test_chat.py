"""Chat templates (runtime/chat.py): the real templates of each model family rendered in our sandbox, the
fallback chosen by vocabulary, the end of turn as a stop sequence in the server and `llamapyz run --chat`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from runtime import Model
from runtime.chat import BUILTIN, ChatTemplate, ChatTemplateError
from runtime.cli import main
from runtime.gguf import load_gguf
from runtime.tokenizer import Tokenizer
from tests import synth
from tests.live_server import ServerThread

TEMPLATES = Path(__file__).parent / "data" / "templates"

SYSTEM_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
MULTI_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "Tell me a joke."}]

LLAMA3_SYSTEM = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n")
LLAMA3_SYSTEM_USER = (LLAMA3_SYSTEM + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA3_MULTI_TURN = (LLAMA3_SYSTEM + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n")
CHATML_MULTI_TURN = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                     "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n")
CHATML_SYSTEM_USER = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                      "<|im_start|>assistant\n")

# file: (bos, eos as in the model's GGUF, end of turn, SYSTEM_USER rendered, MULTI_TURN rendered); {today} is
# strftime_now's date (Llama 3.2 uses it when defined, as under transformers; 3.1 has a fixed date)
REAL = {
    "Qwen-Qwen2.5-7B-Instruct": (
        "<|endoftext|>", "<|im_end|>", "<|im_end|>", CHATML_SYSTEM_USER,
        # no system message: Qwen2.5 inserts its default one
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        + CHATML_MULTI_TURN),
    "Qwen-Qwen3-0.6B": (
        # an assistant turn before the last user message keeps no <think> block
        "<|endoftext|>", "<|im_end|>", "<|im_end|>", CHATML_SYSTEM_USER, CHATML_MULTI_TURN),
    "microsoft-Phi-3.5-mini-instruct": (
        "<s>", "<|endoftext|>", "<|end|>",
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n",
        "<|user|>\nHi<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\nTell me a joke.<|end|>\n"
        "<|assistant|>\n"),
    "meta-llama-Llama-3.1-8B-Instruct": (
        "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", LLAMA3_SYSTEM_USER.replace("{today}", "26 Jul 2024"),
        LLAMA3_MULTI_TURN.replace("{today}", "26 Jul 2024")),
    "meta-llama-Llama-3.2-3B-Instruct": (
        "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", LLAMA3_SYSTEM_USER, LLAMA3_MULTI_TURN),
    "google-gemma-2-2b-it": (
        # the template refuses a system role ("System role not supported"): it goes into the first user turn
        "<bos>", "<eos>", "<end_of_turn>",
        "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\n",
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"),
    "mistralai-Mistral-Nemo-Instruct-2407": (
        # no generation prompt to add: the reply follows [/INST]; the system message joins the last user turn
        "<s>", "</s>", "</s>", "<s>[INST]Be brief.\n\nHello[/INST]",
        "<s>[INST]Hi[/INST]Hello! How can I help?</s>[INST]Tell me a joke.[/INST]"),
}


def real_template(name: str) -> ChatTemplate:
    bos, eos = REAL[name][:2]
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), bos, eos)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_templates_render_in_the_sandbox(name):
    template = real_template(name)
    *_, system_user, multi_turn = REAL[name]
    for messages, expected in ((SYSTEM_USER, system_user), (MULTI_TURN, multi_turn)):
        today = datetime.now().strftime("%d %b %Y")
        assert template.render(messages, add_generation_prompt=True) == expected.replace("{today}", today)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_templates_end_of_turn(name):
    assert real_template(name).end_of_turn == REAL[name][2]


def test_a_system_message_alone_becomes_the_user_turn_where_the_template_refuses_it():
    template = real_template("google-gemma-2-2b-it")
    assert not template.supports_system and real_template("Qwen-Qwen3-0.6B").supports_system
    assert template.render([{"role": "system", "content": "Be brief."}]) == (
        "<bos><start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):  # its other checks still hold
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# name: (end of turn, MULTI_TURN rendered with bos "<bos>")
BUILTINS = {
    "chatml": ("<|im_end|>", CHATML_MULTI_TURN),
    "gemma": ("<end_of_turn>", REAL["google-gemma-2-2b-it"][4]),
    "llama3": ("<|eot_id|>", "<bos><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
                             "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "plain": ("User:", "User: Hi\nAssistant: Hello! How can I help?\nUser: Tell me a joke.\nAssistant:"),
}


def test_every_builtin_is_tested():
    assert set(BUILTINS) == set(BUILTIN)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_templates(name):
    template = ChatTemplate(BUILTIN[name], "<bos>", "<eos>")
    end_of_turn, multi_turn = BUILTINS[name]
    assert template.end_of_turn == end_of_turn
    assert template.render(MULTI_TURN) == multi_turn


def test_plain_template_with_a_system_message():
    template = ChatTemplate(BUILTIN["plain"])
    assert template.render(SYSTEM_USER) == "Be brief.\n\nUser: Hello\nAssistant:"
    assert template.render(SYSTEM_USER, add_generation_prompt=False) == "Be brief.\n\nUser: Hello\n"


@pytest.mark.parametrize("source", [
    "{% for m in messages %}{{ m.content }}{% endfor %}",                              # nothing follows
    "{% for m in messages %}{{ m.content }}\n\n{% endfor %}",                          # only whitespace
    "{% for m in messages %}{{ m.content | lower }}<end>{% endfor %}",                 # the reply is not kept
    "{% for m in messages %}{% if m.role == 'assistant' %}{{ raise_exception('no') }}{% endif %}{% endfor %}",
])
def test_no_end_of_turn_when_nothing_usable_follows_the_reply(source):
    assert ChatTemplate(source).end_of_turn is None


def test_the_environment_is_transformers_chat_template_environment():
    def render(source: str, **extra: Any) -> str:
        return ChatTemplate(source).render([{"role": "user", "content": "héllo <b>", **extra}])

    # loop controls
    assert render("{% for c in 'abcd' %}{% if c == 'c' %}{% break %}{% endif %}{{ c }}{% endfor %}") == "ab"
    assert render("{% for c in 'abcd' %}{% if c == 'b' %}{% continue %}{% endif %}{{ c }}{% endfor %}") == "acd"
    # tojson: json.dumps with ensure_ascii=False, no HTML escaping; indent as an option
    assert render("{{ messages[0] | tojson }}") == '{"role": "user", "content": "héllo <b>"}'
    assert render("{{ [1] | tojson(indent=2) }}") == "[\n  1\n]"
    assert render("{{ strftime_now('%Y') }}") == str(datetime.now().year)
    with pytest.raises(ChatTemplateError, match="refused the messages: no tools"):
        render("{{ raise_exception('no tools') }}")
    # still a sandbox: no mutation, no attribute tricks
    for source in ("{{ messages.append(1) }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}"):
        with pytest.raises(ChatTemplateError):
            render(source)
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for %}")


# --- the fallback for a model without a template ------------------------------------------------------

def tokenizer_metadata(extra_tokens: tuple[str, ...] = ()) -> dict[str, tuple[str, Any]]:
    """tests.synth's byte-level tokenizer (<|endoftext|>, <|im_end|>, bytes) with no chat template, plus
    `extra_tokens` as control tokens."""
    metadata = synth.byte_level_tokenizer()
    del metadata["tokenizer.chat_template"]
    metadata["tokenizer.ggml.tokens"] = ("array", [*metadata["tokenizer.ggml.tokens"][1], *extra_tokens])
    metadata["tokenizer.ggml.token_type"] = ("array", [*metadata["tokenizer.ggml.token_type"][1],
                                                       *[3] * len(extra_tokens)])
    return metadata


def write_tiny_model(path: Path, monkeypatch: pytest.MonkeyPatch, extra_tokens: tuple[str, ...] = ()) -> Path:
    """tests.synth's tiny llama with `tokenizer_metadata(extra_tokens)` as its tokenizer."""
    metadata = tokenizer_metadata(extra_tokens)
    with monkeypatch.context() as patch:
        patch.setattr(synth, "byte_level_tokenizer", lambda: metadata)
        synth.write_model(path)
    return path


@pytest.mark.parametrize("extra_tokens, name", [
    ((), "plain"),                                                    # <|im_end|> alone is not ChatML
    (("<|im_start|>",), "chatml"),
    (("<start_of_turn>", "<end_of_turn>"), "gemma"),
    (("<start_of_turn>", "<end_of_turn>", "<|im_start|>"), "gemma"),
    (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama3"),
    (("<|start_header_id|>", "<|end_header_id|>"), "plain"),
])
def test_the_fallback_fits_the_vocabulary(tmp_path, monkeypatch, extra_tokens, name):
    path = write_tiny_model(tmp_path / "base.gguf", monkeypatch, extra_tokens)
    with load_gguf(path) as gguf:
        template = ChatTemplate.from_metadata(gguf.metadata, Tokenizer.from_gguf(gguf).vocab.tokens)
    assert template.origin == f"built-in {name} (the model has none)" and template.source == BUILTIN[name]
    assert template.bos_token == "<|endoftext|>"


def test_overrides_and_the_models_own_template():
    metadata = {key: value for key, (_, value) in synth.byte_level_tokenizer().items()}
    tokens = metadata["tokenizer.ggml.tokens"]
    own = ChatTemplate.from_metadata(metadata, tokens)
    assert own.origin == "model" and own.end_of_turn == "|"
    gemma = ChatTemplate.from_metadata(metadata, tokens, override="gemma")
    assert gemma.origin == "built-in gemma" and gemma.end_of_turn == "<end_of_turn>"
    jinja = ChatTemplate.from_metadata(metadata, tokens, override="{{ messages[0].content }}[END]")
    assert jinja.origin == "override" and jinja.render(MULTI_TURN) == "Hi[END]"


def test_a_base_model_chats_in_plain_text(tmp_path, monkeypatch):
    model = Model.load(write_tiny_model(tmp_path / "base.gguf", monkeypatch), n_ctx=64, n_threads=1)
    assert model.chat_template.origin == "built-in plain (the model has none)"
    tokens = model.chat_tokens([{"role": "user", "content": "Hello"}])
    assert model.detokenize(tokens) == "User: Hello\nAssistant:"


# --- the end of turn stops chat generation ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    """tests.synth's tiny llama: its template ("<user>hi|<assistant>") ends a turn with "|"."""
    path = tmp_path_factory.mktemp("chat") / "tiny.gguf"
    synth.write_model(path)
    return path


def test_server_chat_stops_at_the_end_of_turn_and_completions_do_not(tiny_path):
    bar = Tokenizer.from_gguf(tiny_path).encode("|", add_special=False)
    assert len(bar) == 1
    biased = {"temperature": 0, "max_tokens": 4, "logit_bias": {str(bar[0]): 100}}  # the model says "|||…"
    with ServerThread(tiny_path, n_ctx=64, n_slots=1) as server:
        chat = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            **biased, "messages": [{"role": "user", "content": "hi"}], "stop": [f"s{i}" for i in range(16)]})
        assert chat.status_code == 200, chat.text  # the end of turn does not count against the 16 stops
        choice = chat.json()["choices"][0]
        assert choice["message"]["content"] == "" and choice["finish_reason"] == "stop"
        text = httpx.post(server.url + "/v1/completions", json={**biased, "prompt": "hi"}, timeout=30).json()
        assert text["choices"][0]["text"] == "||||" and text["choices"][0]["finish_reason"] == "length"


def test_run_chat_stops_at_the_end_of_turn(tiny_path, monkeypatch):
    command = ["run", "-m", str(tiny_path), "-p", "hi", "-n", "16", "--chat", "--temp", "0", "-t", "1", "-c", "64"]

    def reply(end_of_turn: str | None) -> str:
        monkeypatch.setattr(ChatTemplate, "end_of_turn", end_of_turn)
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
        return result.stdout.removesuffix("\n")

    free = reply(None)
    assert len(free) >= 3
    end_of_turn = free[-3:]  # a text the model writes (maybe earlier too): the reply ends before it
    assert reply(end_of_turn) == free[:free.index(end_of_turn)]


@pytest.mark.real_model
@pytest.mark.slow
def test_gemma3_base_model_chats_without_markup(gemma3_path):
    with load_gguf(gemma3_path) as gguf:
        template = ChatTemplate.from_metadata(gguf.metadata, Tokenizer.from_gguf(gguf).vocab.tokens)
    assert template.origin == "built-in gemma (the model has none)" and template.end_of_turn == "<end_of_turn>"
    result = CliRunner().invoke(main, ["run", "-m", str(gemma3_path), "--chat", "-p", "Hello", "-n", "40",
                                       "--temp", "0"])
    assert result.exit_code == 0, result.output
    for markup in ("<start_of_turn>", "<end_of_turn>", "<|im_end|>", "<|im_start|>"):
        assert markup not in result.stdout, result.stdout
