"""The vocabulary of a model as its GGUF metadata describes it (`tokenizer.ggml.*`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import TokenizerError


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Tokens that end a turn. llama.cpp treats them as end-of-generation and as control tokens even where a
# converter exported them as normal ones (Gemma's <end_of_turn>), so "parse special" governs them.
END_OF_TURN_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>", "<|eom_id|>", "<|return|>", "<|call|>",
})

_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str  # tokenizer.ggml.pre: the BPE pre-tokenizer
    tokens: list[str]
    types: np.ndarray  # (n_vocab,) TokenType values
    scores: np.ndarray | None  # (n_vocab,) float32, SentencePiece merge priorities
    merges: list[str]  # BPE merges "left right", best first
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset[int] = frozenset()
    token_to_id: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Vocab:
        model = md.get("tokenizer.ggml.model")
        if not isinstance(model, str) or model not in ("gpt2", "llama"):
            raise TokenizerError(f"unsupported tokenizer.ggml.model={model!r} "
                                 "(llamapyz supports 'gpt2' byte-level BPE and 'llama' SentencePiece)")
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError("tokenizer.ggml.tokens is missing or not a list of strings")
        n = len(tokens)
        types = _per_token(md, "tokenizer.ggml.token_type", n, np.int32, default=TokenType.NORMAL)
        scores = _per_token(md, "tokenizer.ggml.scores", n, np.float32, default=None)
        merges = md.get("tokenizer.ggml.merges", [])
        if model == "gpt2" and (not isinstance(merges, list) or not merges):
            raise TokenizerError("a gpt2 (BPE) tokenizer needs tokenizer.ggml.merges")
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise TokenizerError("tokenizer.ggml.merges must be a list of strings")
        if types.size and (types.min() < 0 or types.max() > max(TokenType)):
            raise TokenizerError(f"tokenizer.ggml.token_type has values outside 0..{int(max(TokenType))}")
        spm = model == "llama"
        vocab = cls(
            model=model,
            pre=str(md.get("tokenizer.ggml.pre", "default")),
            tokens=tokens,
            types=types,  # a fresh array (astype / np.full): END_OF_TURN_TEXTS may retype entries
            scores=scores,
            merges=merges,
            bos_id=_token_id(md, "bos", n),
            eos_id=_token_id(md, "eos", n),
            unk_id=_token_id(md, "unknown", n),
            pad_id=_token_id(md, "padding", n),
            add_bos=_flag(md, "add_bos_token", spm),
            add_eos=_flag(md, "add_eos_token", False),
            add_space_prefix=_flag(md, "add_space_prefix", spm),
        )
        vocab.token_to_id = {t: i for i, t in enumerate(tokens)}
        if vocab.add_bos and vocab.bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is set but the vocab has no BOS token")
        eog = {i for i in (vocab.eos_id,) if i is not None}
        for text in END_OF_TURN_TEXTS:
            i = vocab.token_to_id.get(text)
            if i is not None:
                eog.add(i)
                vocab.types[i] = TokenType.CONTROL
        vocab.eog_ids = frozenset(eog)
        return vocab

    def special_ids(self, parse_special: bool) -> list[int]:
        """Tokens matched as a whole in raw text, longest text first. User-defined ones always are;
        control and unknown tokens only when `parse_special` is on (as in llama.cpp)."""
        wanted = _SPECIAL_TYPES if parse_special else (TokenType.USER_DEFINED,)
        ids = [i for i in np.flatnonzero(np.isin(self.types, wanted)).tolist() if self.tokens[i]]
        return sorted(ids, key=lambda i: -len(self.tokens[i]))


def _per_token(md: Mapping[str, Any], key: str, n: int, dtype: type, default: Any) -> Any:
    values = md.get(key)
    if values is None:
        return None if default is None else np.full(n, default, dtype=dtype)
    if not isinstance(values, np.ndarray) or values.shape != (n,):
        raise TokenizerError(f"{key} must be a numeric array with one entry per token ({n})")
    return values.astype(dtype)


def _flag(md: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean key (llama.cpp reads it as a bool; a number is taken as one, as `bool()` would)."""
    value = md.get(f"tokenizer.ggml.{name}", default)
    if not isinstance(value, (bool, int, float)):
        raise TokenizerError(f"tokenizer.ggml.{name} = {str(value)[:40]} is not a boolean")
    return bool(value)


def _token_id(md: Mapping[str, Any], name: str, n: int) -> int | None:
    value = md.get(f"tokenizer.ggml.{name}_token_id")
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < n:
        raise TokenizerError(f"tokenizer.ggml.{name}_token_id={value!r} is not a token id (vocab has {n})")
    return value


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_token_value(text: str) -> int | None:
    """The byte a SentencePiece byte-fallback token `<0xNN>` stands for."""
    m = _BYTE_TOKEN.fullmatch(text)
    return int(m.group(1), 16) if m else None
