"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered sandboxed
(templates come from untrusted files: no attribute tricks, no mutation, no imports).

The environment is the one Hugging Face transformers renders chat templates in (`_compile_jinja_template`
in transformers' chat_template_utils), so a model's template means here what it means there: trim_blocks
and lstrip_blocks, the loop-controls extension (`{% break %}`, `{% continue %}`), the globals
`raise_exception(message)` and `strftime_now(format)` (the local time, e.g. Llama 3.2's "Today Date"), and a
`tojson` filter that is `json.dumps` with ensure_ascii=False (Jinja's own escapes <, >, & and ' for HTML).

A model without a template (a base model) gets the built-in one that fits its vocabulary (`FALLBACKS`):
Gemma's turn markup, ChatML or Llama 3's headers where their markup tokens are in the vocabulary, else
plain "User: …\\nAssistant:" text. `--chat-template` overrides either with a built-in name (`BUILTIN`) or a
Jinja2 source.

Every template has an end of turn (`ChatTemplate.end_of_turn`): the markup it writes right after an
assistant's message, found by rendering one. Chat generation stops at it, so a model that spells the markup
out as text (rather than as its end-of-generation token) never shows it to the user.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import LlamapyzError


class ChatTemplateError(LlamapyzError):
    """The model has no chat template, or its template failed on these messages."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the model's chat template refused the messages: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


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
# What a template may fail with on messages it does not expect (None content, a missing key, …).
_RENDER_ERRORS = (TemplateError, TypeError, ValueError, LookupError)


def fallback_for(tokens: Sequence[str]) -> str:
    """The built-in template that fits a vocabulary (`FALLBACKS`), else the plain-text one."""
    vocab = set(tokens)
    return next((name for name, markup in FALLBACKS if vocab.issuperset(markup)), PLAIN)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        env.filters["tojson"] = _tojson
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not parse: {exc}") from None
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

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        messages = list(messages)
        if messages and messages[0].get("role") == "system" and not self.supports_system:
            messages = _system_into_first_user(messages)
        return self._render(messages, add_generation_prompt)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise
        except _RENDER_ERRORS as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from None

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
