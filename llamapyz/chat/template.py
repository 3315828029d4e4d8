"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered in a sandbox
(`template_sandbox`: transformers' environment, each render bounded in output and time).

A model without a template (a base model) gets the built-in one that fits its vocabulary (`FALLBACKS`):
Gemma's turn markup, ChatML or Llama 3's headers where their markup tokens are in the vocabulary, else
plain "User: …\\nAssistant:" text. `--chat-template` overrides either with a built-in name (`BUILTIN`) or a
Jinja2 source.

Every template has an end of turn (`ChatTemplate.end_of_turn`): the markup it writes right after an
assistant's message, found by rendering one. Chat generation stops at it, so a model that spells the markup
out as text (rather than as its end-of-generation token) never shows it to the user.

Client text. The template's markup comes from the model; the messages, and any other variable a caller
passes, come from clients: `render_parts` keeps a client's special-token texts literal (`chat_text`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from .client_text import Shield, SpecialTexts
from .sandbox import (
    DEFAULT_MAX_CHARS,
    DEFAULT_TIMEOUT_S,
    MAX_CHARS_SLACK,
    Budget,
    ChatTemplateError,
    compile_template,
    max_chars_for,
    render_template,
)

__all__ = ["BUILTIN", "DEFAULT_MAX_CHARS", "DEFAULT_TIMEOUT_S", "FALLBACKS", "MAX_CHARS_SLACK", "PLAIN",
           "ChatTemplate", "ChatTemplateError", "SpecialTexts", "fallback_for", "max_chars_for"]


BUILTIN = {
    "chatml": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
        "else 'user' %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
        "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
    # A transcript for a vocabulary with no markup tokens: "User: Hi\nAssistant: Hello!\nUser: …". The
    # assistant's turn ends with the next "User:" label (a user message right after it does not repeat
    # it), so "User:", what a base model writes to go on with the dialogue, is this template's end of turn.
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}\nUser:"
        "{% elif message['role'] == 'user' %}"
        "{% if not (loop.previtem and loop.previtem['role'] == 'assistant') %}User:{% endif %}"
        " {{ message['content'] | trim }}\n"
        "{% else %}{{ message['content'] | trim }}\n\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"),
}

# The built-in template for a model without one: the first whose markup tokens are all in the vocabulary.
FALLBACKS = (
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
)
PLAIN = "plain"

# Probe texts: rendered as message contents to see what a template writes around them.
_SENTINEL = "LLAMAPYZ-PROBE-REPLY"
_SYSTEM_SENTINEL = "LLAMAPYZ-PROBE-SYSTEM"


def fallback_for(tokens: Sequence[str]) -> str:
    """The built-in template that fits a vocabulary (`FALLBACKS`), else the plain-text one."""
    vocab = set(tokens)
    return next((name for name, markup in FALLBACKS if vocab.issuperset(markup)), PLAIN)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.template = compile_template(source)
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.origin = "model"  # "model", "built-in <name>", "built-in <name> (the model has none)" or "override"

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tokens: Sequence[str], override: str | None = None
                      ) -> ChatTemplate:
        """The model's template, or `override` (a BUILTIN name or Jinja2 source), or the fallback that fits
        the vocabulary `tokens`."""
        source, origin = metadata.get("tokenizer.chat_template"), "model"
        if override:
            source, origin = BUILTIN.get(override, override), "override"
            if override in BUILTIN:
                origin = f"built-in {override}"
        elif not isinstance(source, str) or not source:
            name = fallback_for(tokens)
            source, origin = BUILTIN[name], f"built-in {name} (the model has none)"

        def token(key: str) -> str:
            index = metadata.get(key)
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

        template = cls(source, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
        template.origin = origin
        return template

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, *,
               max_chars: int = DEFAULT_MAX_CHARS, timeout_s: float = DEFAULT_TIMEOUT_S, **context: Any) -> str:
        """The conversation as the template writes it. `context`: further template variables (tools=[…],
        documents, …); bos_token and eos_token default to the model's. Client strings are rendered as they
        are (see `render_parts`); the render is bounded by `max_chars` and `timeout_s` (`template_sandbox`)."""
        return self._render(self._fold_system(messages), add_generation_prompt, Budget.start(max_chars, timeout_s),
                            context)

    def render_parts(self, messages: Sequence[dict[str, Any]], special_texts: SpecialTexts,
                     add_generation_prompt: bool = True, *, max_chars: int = DEFAULT_MAX_CHARS,
                     timeout_s: float = DEFAULT_TIMEOUT_S, **context: Any) -> list[tuple[str, bool]]:
        """`render`, as (text, parse_special) parts for `Tokenizer.encode_parts`: the template's own text
        parses special tokens; where a client string (in `messages` or `context`) spells one of
        `special_texts`, or ends in a piece of one, that text comes as a literal part (`chat_text`).
        Without such text in client strings, the one part is (render(...), True)."""
        budget = Budget.start(max_chars, timeout_s)
        shield = Shield(special_texts)
        try:
            messages, context = shield.protect((self._fold_system(messages), context))
        except RecursionError:
            raise ChatTemplateError("the messages are nested too deeply to render") from None
        return shield.split(self._render(messages, add_generation_prompt, budget, context))

    def _fold_system(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        messages = list(messages)
        if messages and messages[0].get("role") == "system" and not self.supports_system:
            messages = _system_into_first_user(messages)
        return messages

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, budget: Budget | None = None,
                context: Mapping[str, Any] | None = None) -> str:
        budget = budget or Budget.start(DEFAULT_MAX_CHARS, DEFAULT_TIMEOUT_S)
        context = context or {}
        variables = {"bos_token": self.bos_token, "eos_token": self.eos_token, **context, "messages": messages,
                     "add_generation_prompt": add_generation_prompt}
        return render_template(self.template, variables, budget)

    @functools.cached_property
    def end_of_turn(self) -> str | None:
        """The markup right after an assistant's message (ChatML "<|im_end|>", Gemma "<end_of_turn>", Llama 3
        "<|eot_id|>"): its first whitespace-separated word. None if nothing follows or the probe fails."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = self._render(probe, add_generation_prompt=False)
        except ChatTemplateError:
            return None
        _, found, after = text.rpartition(_SENTINEL)
        words = after.split()
        return words[0] if found and words else None

    @functools.cached_property
    def supports_system(self) -> bool:
        """Whether a system message survives rendering. Some templates refuse one (Gemma 2's raises "System
        role not supported"); then `render` folds it into the first user message, as llama.cpp does."""
        probe = [{"role": "system", "content": _SYSTEM_SENTINEL}, {"role": "user", "content": "Hi"}]
        try:
            return _SYSTEM_SENTINEL in self._render(probe, add_generation_prompt=True)
        except ChatTemplateError:
            return False


def _system_into_first_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading system message's text put before the first user message's, a blank line between."""
    system, rest = messages[0].get("content") or "", messages[1:]
    for i, message in enumerate(rest):
        if message.get("role") == "user":
            content = message.get("content") or ""
            return [*rest[:i], {**message, "content": f"{system}\n\n{content}" if content else system}, *rest[i + 1:]]
    return [{**messages[0], "role": "user"}, *rest]
