"""The vocabulary of a model as its GGUF metadata describes it (`tokenizer.ggml.*`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TokenizerError
from .pre_types import PRE_TOKENIZERS
from .token_types import TokenType, retype_specials, strip_attributes

__all__ = ["MODELS", "TokenType", "Vocab", "byte_token_value"]

# tokenizer.ggml.model -> what it is; the special-token ids llama.cpp assumes where the file names none
MODELS = {
    "gpt2": "byte-level BPE",
    "gemma4": "SentencePiece-style BPE",
    "llama": "SentencePiece",
    "bert": "WordPiece",
}
_DEFAULT_IDS: dict[str, dict[str, int]] = {
    "gpt2": {"bos": 11, "eos": 11},
    "gemma4": {},
    "llama": {"bos": 1, "eos": 2, "unknown": 0},
    "bert": {"bos": 101, "unknown": 100, "seperator": 102, "padding": 0},
}
_FIM_KEYS = {"pre": ("fim_pre", "prefix"), "suf": ("fim_suf", "suffix"), "mid": ("fim_mid", "middle"),
             "pad": ("fim_pad",), "rep": ("fim_rep",), "sep": ("fim_sep",)}

_SPECIAL_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: a key of MODELS
    pre: str  # tokenizer.ggml.pre: the BPE pre-tokenizer ("default" where the file names none)
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
    sep_id: int | None = None  # WordPiece's [SEP], added at the end with the special tokens
    lowercase: bool = True  # WordPiece's normalizer: lower-case, and strip accents
    strip_accents: bool = True
    eog_ids: frozenset[int] = frozenset()
    strips: dict[int, str] = field(default_factory=dict)  # token -> "l"/"r": spaces it takes (token_types.py)
    token_to_id: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Vocab:
        model = md.get("tokenizer.ggml.model")
        if not isinstance(model, str) or model not in MODELS:
            known = ", ".join(f"{name!r} {what}" for name, what in MODELS.items())
            raise TokenizerError(f"unsupported tokenizer.ggml.model={model!r} (llamapyz supports {known})")
        tokens = md.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError("tokenizer.ggml.tokens is missing or not a list of strings")
        n = len(tokens)
        pre = md.get("tokenizer.ggml.pre", "")
        if not isinstance(pre, str):
            raise TokenizerError(f"tokenizer.ggml.pre must be a string, not {type(pre).__name__}")
        pre = "gemma4" if model == "gemma4" else pre or "default"  # llama.cpp: none means "default"
        spec = PRE_TOKENIZERS.get(pre) if model in ("gpt2", "gemma4") else None
        types = _per_token(md, "tokenizer.ggml.token_type", n, np.int32, default=TokenType.NORMAL)
        scores = _per_token(md, "tokenizer.ggml.scores", n, np.float32, default=None)
        merges = md.get("tokenizer.ggml.merges", [])
        if model in ("gpt2", "gemma4") and (not isinstance(merges, list) or not merges) and pre != "kimi-k2":
            raise TokenizerError(f"a {model} (BPE) tokenizer needs tokenizer.ggml.merges")
        if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
            raise TokenizerError("tokenizer.ggml.merges must be a list of strings")
        if types.size and (types.min() < 0 or types.max() > max(TokenType)):
            raise TokenizerError(f"tokenizer.ggml.token_type has values outside 0..{int(max(TokenType))}")
        defaults = {} if spec is not None and spec.no_bos else _DEFAULT_IDS[model]
        spm = model == "llama"
        add_bos = _flag(md, "add_bos_token", spm or model == "bert" or spec is not None and spec.add_bos)
        lowercase = _flag(md, "normalizer.lowercase", pre != "whitespace")
        vocab = cls(
            model=model,
            pre=pre,
            tokens=tokens,
            types=types,  # a fresh array (astype / np.full): retype_specials changes entries
            scores=scores,
            merges=merges,
            bos_id=_token_id(md, "bos", n, defaults),
            eos_id=_token_id(md, "eos", n, defaults),
            unk_id=_token_id(md, "unknown", n, defaults),
            pad_id=_token_id(md, "padding", n, defaults),
            sep_id=_token_id(md, "seperator", n, defaults),  # sic: llama.cpp's key
            add_bos=add_bos or model == "gemma4",  # llama.cpp turns it on for Gemma 4 whatever the file says
            add_eos=_flag(md, "add_eos_token", False),
            add_space_prefix=_flag(md, "add_space_prefix", spm),
            lowercase=lowercase,
            strip_accents=_flag(md, "normalizer.strip_accents", lowercase),
        )
        vocab.token_to_id = {t: i for i, t in enumerate(tokens)}
        if vocab.add_bos and vocab.bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is set but the vocab has no BOS token")
        fim_ids = {kind: i for kind, names in _FIM_KEYS.items() for name in names
                   if (i := _token_id(md, name, n, {})) is not None}
        ends = {i for name in ("eot", "eom") if (i := _token_id(md, name, n, {})) is not None}
        vocab.eog_ids = retype_specials(vocab.token_to_id, vocab.types, vocab.eos_id, fim_ids) | ends
        vocab.strips = strip_attributes(md, vocab.token_to_id, vocab.types)
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


def _token_id(md: Mapping[str, Any], name: str, n: int, defaults: Mapping[str, int]) -> int | None:
    """A special token's id: the file's, else llama.cpp's default for the model (if the vocab has it)."""
    value = md.get(f"tokenizer.ggml.{name}_token_id")
    if value is None:
        default = defaults.get(name)
        return default if default is not None and default < n else None
    if not isinstance(value, int) or not 0 <= value < n:
        raise TokenizerError(f"tokenizer.ggml.{name}_token_id={value!r} is not a token id (vocab has {n})")
    return value


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_token_value(text: str) -> int | None:
    """The byte a SentencePiece byte-fallback token `<0xNN>` stands for."""
    m = _BYTE_TOKEN.fullmatch(text)
    return int(m.group(1), 16) if m else None
