"""Chat templates: the Jinja2 template a GGUF carries in `tokenizer.chat_template`, rendered sandboxed."""

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


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self.template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not parse: {exc}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tokens: Sequence[str]) -> ChatTemplate:
        source = metadata.get("tokenizer.chat_template")
        if not source:
            raise ChatTemplateError("this model has no chat template (it is probably a base model)",
                                    hint="give it a plain prompt instead of a chat message")

        def token(key: str) -> str:
            index = metadata.get(key)
            return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else ""

        return cls(source, token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from None
