"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered sandboxed
(templates come from untrusted files: no attribute tricks, no mutation, no imports).

A model without a template (a base model) gets the built-in ChatML one; `--chat-template` overrides either
with a built-in name (`BUILTIN`) or a Jinja2 source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import LlamapyzError


class ChatTemplateError(LlamapyzError):
    """The model has no chat template, or its template failed on these messages."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the model's chat template refused the messages: {message}")


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
}
FALLBACK = "chatml"


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not parse: {exc}") from None
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.origin = "model"  # "model", "built-in <name>" or "override"

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tokens: Sequence[str], override: str | None = None
                      ) -> ChatTemplate:
        """The model's template, or `override` (a BUILTIN name or Jinja2 source), or the fallback."""
        source, origin = metadata.get("tokenizer.chat_template"), "model"
        if override:
            source, origin = BUILTIN.get(override, override), "override"
            if override in BUILTIN:
                origin = f"built-in {override}"
        elif not isinstance(source, str) or not source:
            source, origin = BUILTIN[FALLBACK], f"built-in {FALLBACK} (the model has none)"

        def token(key: str) -> str:
            index = metadata.get(key)
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

        template = cls(source, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
        template.origin = origin
        return template

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from None
