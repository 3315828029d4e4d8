"""Tokenizers built from GGUF metadata alone, agreeing token for token with llama.cpp.

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello world")          # BOS added if the model asks for it, specials parsed
    text = tok.decode(ids)                   # control tokens (BOS, EOS, …) left out
    stream = tok.stream()                    # incremental: never splits a UTF-8 character
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import TokenizerError
from ..gguf import GGUFFile, Source, load_gguf
from .bpe import BPEEncoder, unicode_to_byte
from .spm import SPACE, SPMEncoder
from .vocab import TokenType, Vocab, byte_token_value

__all__ = ["StreamDecoder", "Tokenizer", "TokenType", "Vocab"]

_SILENT_TYPES = (TokenType.CONTROL, TokenType.UNUSED, TokenType.UNDEFINED)


class Tokenizer:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._bpe = BPEEncoder(vocab) if vocab.model == "gpt2" else None
        self._spm = SPMEncoder(vocab) if vocab.model == "llama" else None
        self._special_ids = {flag: vocab.special_ids(flag) for flag in (False, True)}
        self._types: list[int] = vocab.types.tolist()
        self._pieces: dict[int, bytes] = {}

    @classmethod
    def from_gguf(cls, source: GGUFFile | Source | Mapping[str, Any]) -> Tokenizer:
        """From an open GGUFFile, its metadata, a path, or a (path, offset, length) range."""
        if isinstance(source, GGUFFile):
            return cls(Vocab.from_metadata(source.metadata))
        if isinstance(source, Mapping):
            return cls(Vocab.from_metadata(source))
        with load_gguf(source) as gguf:
            return cls(Vocab.from_metadata(gguf.metadata))

    # --- properties ----------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end a generation (EOS, <|im_end|>, <end_of_turn>, …)."""
        return self.vocab.eog_ids

    # --- encoding ------------------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS/EOS where the model's metadata asks for them;
        `parse_special` turns special-token text such as "<|im_start|>" into that single token."""
        vocab = self.vocab
        out: list[int] = []
        if add_special and vocab.add_bos and vocab.bos_id is not None:
            out.append(vocab.bos_id)
        prev_special = True  # SentencePiece prefixes a space to text at the start and after a special token
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
            elif self._bpe is not None:
                out.extend(self._bpe.encode(fragment))
            else:
                assert self._spm is not None
                out.extend(self._spm.encode(fragment, vocab.add_space_prefix and prev_special))
                prev_special = False
        if add_special and vocab.add_eos and vocab.eos_id is not None:
            out.append(vocab.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split text at special-token texts, longest token first (llama.cpp's tokenizer_st_partition)."""
        fragments: list[str | int] = [text] if text else []
        tokens = self.vocab.tokens
        for token in self._specials_in(text, parse_special):
            special = tokens[token]
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    split.append(fragment)
                    continue
                for i, part in enumerate(fragment.split(special)):
                    if i:
                        split.append(token)
                    if part:
                        split.append(part)
            fragments = split
        return fragments

    def _specials_in(self, text: str, parse_special: bool) -> list[int]:
        """The special tokens whose text occurs in `text`, longest first. Gemma has 6,400 of them: looking
        up their first three characters in the text's set of trigrams spares most of the substring scans."""
        tokens = self.vocab.tokens
        trigrams = {text[i:i + 3] for i in range(len(text) - 2)}
        return [t for t in self._special_ids[parse_special]
                if (len(tokens[t]) < 3 or tokens[t][:3] in trigrams) and tokens[t] in text]

    # --- decoding ------------------------------------------------------------------------------------

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` stands for. Control tokens are empty unless `special`."""
        piece = self._pieces.get(token)
        if piece is not None:
            return piece
        if not 0 <= token < self.vocab.n_vocab:
            raise TokenizerError(f"token id {token} is out of range (vocab has {self.vocab.n_vocab} tokens)")
        kind = TokenType(self._types[token])
        if kind in _SILENT_TYPES:
            return self.vocab.tokens[token].encode("utf-8", "surrogateescape") if special else b""
        piece = self._pieces[token] = self._piece(token, kind)
        return piece

    def _piece(self, token: int, kind: TokenType) -> bytes:
        text = self.vocab.tokens[token]
        if self._bpe is not None and kind == TokenType.NORMAL:
            to_byte = unicode_to_byte()
            return b"".join(bytes([to_byte[c]]) if c in to_byte else c.encode("utf-8", "surrogateescape")
                            for c in text)
        if kind == TokenType.BYTE:
            value = byte_token_value(text)
            if value is not None:
                return bytes([value])
        if kind == TokenType.UNKNOWN:
            return " \u2047 ".encode()  # SentencePiece's surface for an unknown piece
        if self._spm is not None:
            text = text.replace(SPACE, " ")
        return text.encode("utf-8", "surrogateescape")

    def decode(self, tokens: Iterable[int], special: bool = False) -> str:
        """Text of `tokens`; bytes that do not form valid UTF-8 become U+FFFD."""
        data = b"".join(self.token_bytes(t, special) for t in tokens)
        if self._spm is not None and self.vocab.add_space_prefix and data.startswith(b" "):
            data = data[1:]  # the space the encoder prefixed
        return data.decode("utf-8", "replace")

    def stream(self, special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, special)


class StreamDecoder:
    """Turns tokens into text as they come, holding back an incomplete UTF-8 character until it is whole."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token, self._special))

    def flush(self) -> str:
        """What is left at the end (an incomplete character comes out as U+FFFD)."""
        return self._utf8.decode(b"", final=True)
