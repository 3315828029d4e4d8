"""The error types of llamapyz.

Errors are specific inside the runtime and translated once at the edge: the CLI turns a `LlamapyzError`
into one line plus a hint and a non-zero exit; the server (later) into OpenAI-shaped JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_MESSAGE_CHARS = 400  # an error line's length before "…(N more characters)": a corrupt file can name a
# 3.7 MB key or value, and no one reads past a few hundred characters


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text) - limit} more characters)"


class LlamapyzError(Exception):
    """Base of every error llamapyz raises on purpose. `hint` says what the user can do about it. The message
    is clipped (`clip`) once, here, so that every place that prints or answers it (the CLI's error line, the
    server's log, /health, a 503) gets a line of bounded length."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(clip(message))
        if hint:
            self.hint = hint


class GGUFError(LlamapyzError):
    """The file is not a GGUF file llamapyz can read: the message names the offset, key or tensor."""

    hint = "the file may be truncated or corrupt; download or copy it again"


class UnsupportedQuantError(LlamapyzError):
    """A tensor uses a ggml type that llamapyz cannot decode (IQ*, TQ*, …)."""

    hint = "re-quantize the model to a supported type (Q4_0, Q4_1, Q5_*, Q8_0, Q2_K…Q6_K, F16, BF16, F32)"


class TokenizerError(LlamapyzError):
    """The GGUF metadata does not describe a tokenizer llamapyz can build, or a token id is out of range."""


class ModelFetchError(LlamapyzError):
    """A model from the registry could not be fetched or failed its checksum."""

    hint = "check the network access to the package index, or pass a local GGUF file with --model"


class UnsupportedModelError(LlamapyzError):
    """The GGUF holds a model llamapyz cannot run: an unknown architecture, a missing tensor or key."""


class NonFiniteError(LlamapyzError):
    """The model computed NaN or infinite values (logits, an embedding): its weights hold some, which only a
    corrupt file does. Found at load by the server's warm-up, else by the request that meets them."""

    hint = "the model file is corrupt; download or copy it again"


def require_finite(values: Any, what: str = "logits") -> None:
    """A `NonFiniteError` if `values` (a numpy array out of the model) hold NaN or infinite values: its weights
    hold some (a corrupt file), and the request must end saying so, not with a token drawn from nonsense, an
    IndexError, or NaN in JSON."""
    if not values.size or not (np.isfinite(values.min()) and np.isfinite(values.max())):  # NaN: both NaN
        raise NonFiniteError(f"the model computed NaN or infinite {what}: its weights hold NaN or infinite values")


class ContextOverflowError(LlamapyzError):
    """The tokens do not fit in the context window (n_ctx)."""

    hint = "shorten the prompt, lower max tokens, or raise the context size with -c"
