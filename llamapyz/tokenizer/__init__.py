"""Tokenizers built from GGUF metadata alone, agreeing token for token with llama.cpp: byte-level BPE with
every pre-tokenizer llama.cpp knows, Gemma 4's BPE, SentencePiece and WordPiece (docs/architectures.md).

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello world")          # BOS added if the model asks for it, specials parsed
    ids = tok.encode_parts([("<|im_start|>user\n", True), ("<|im_end|>", False)])  # specials in some parts
    text = tok.decode(ids)                   # control tokens (BOS, EOS, …) left out
    stream = tok.stream()                    # incremental: never splits a UTF-8 character
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
"""

from __future__ import annotations

import bisect
import codecs
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import TokenizerError
from ..gguf.reader import GGUFFile, Source, load_gguf
from .bpe import BPEEncoder, unicode_to_byte
from .spm import SPACE, SPMEncoder
from .vocab import TokenType, Vocab, byte_token_value
from .wpm import WPMEncoder

__all__ = ["StreamDecoder", "Tokenizer", "TokenType", "Vocab"]

_SILENT_TYPES = (TokenType.CONTROL, TokenType.UNUSED, TokenType.UNDEFINED)


class Tokenizer:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._bpe = BPEEncoder(vocab) if vocab.model in ("gpt2", "gemma4") else None
        self._spm = SPMEncoder(vocab) if vocab.model == "llama" else None
        self._wpm = WPMEncoder(vocab) if vocab.model == "bert" else None
        self._byte_level = vocab.model == "gpt2"  # token texts spell bytes as GPT-2's characters
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

    @functools.cached_property
    def markup_texts(self) -> list[str]:
        """The texts that are one token only when special tokens are parsed (control and unknown tokens:
        "<|im_start|>", "<bos>", …), longest first; literal text spells them out. User-defined tokens are
        not among them: they match in any text."""
        literal = set(self._special_ids[False])
        return [self.vocab.tokens[t] for t in self._special_ids[True] if t not in literal]

    @functools.cached_property
    def longest_token_chars(self) -> int:
        """The most characters one token stands for, at most: its longest token text (a byte-level BPE
        token's text has a character per byte, a byte fallback "<0xNN>" six for one)."""
        return max(map(len, self.vocab.tokens))

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS/EOS where the model's metadata asks for them;
        `parse_special` turns special-token text such as "<|im_start|>" into that single token."""
        return self.encode_parts([(text, parse_special)], add_special)

    def encode_parts(self, parts: Iterable[tuple[str, bool]], add_special: bool = True) -> list[int]:
        """Token ids of the parts' texts joined, each part a (text, parse_special) pair: a control token's
        text becomes that token only where it lies within parse_special parts (adjacent ones count as one),
        while user-defined tokens match anywhere, as in `encode`. The text between special tokens is
        encoded as one piece whatever parts it spans, so `encode_parts([(text, p)])` is `encode(text,
        parse_special=p)`, and splitting a text into parts changes nothing but where control tokens are
        recognised. A chat prompt is the template's markup (parsed) around the client's text (literal)."""
        vocab = self.vocab
        out: list[int] = []
        wordpiece = self._wpm is not None  # BERT's [CLS] … [SEP] come with the special tokens, whatever the flags
        if add_special and (vocab.add_bos or wordpiece) and vocab.bos_id is not None:
            out.append(vocab.bos_id)
        prev_special = True  # SentencePiece prefixes a space to text at the start and after a special token
        for fragment in self._partition(parts):
            if isinstance(fragment, int):
                out.append(fragment)
                prev_special = True
            elif self._bpe is not None:
                out.extend(self._bpe.encode(fragment))
            elif self._wpm is not None:
                out.extend(self._wpm.encode(fragment))
            else:
                assert self._spm is not None
                out.extend(self._spm.encode(fragment, vocab.add_space_prefix and prev_special))
                prev_special = False
        if add_special and wordpiece and vocab.sep_id is not None:
            out.append(vocab.sep_id)
        elif add_special and vocab.add_eos and vocab.eos_id is not None:
            out.append(vocab.eos_id)
        return out

    def _partition(self, parts: Iterable[tuple[str, bool]]) -> list[str | int]:
        """The parts' joined text split at special-token texts, longest token first, each one's occurrences
        left to right (llama.cpp's tokenizer_st_partition); a control token only where `parts` parse
        specials. Fragments: text (str) or token id (int)."""
        text, parsed = _join_parts(parts)
        fragments: list[tuple[int, str] | int] = [(0, text)] if text else []  # text fragments with their offset
        tokens = self.vocab.tokens
        anywhere = self._literal_ids
        for token in self._specials_in(text, bool(parsed)):
            special = tokens[token]
            where = None if token in anywhere or parsed.whole(len(text)) else parsed
            split: list[tuple[int, str] | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment[1]:
                    split.append(fragment)
                else:
                    split.extend(_split_at(fragment, special, token, where, self.vocab.strips.get(token, "")))
            fragments = split
        return [fragment if isinstance(fragment, int) else fragment[1] for fragment in fragments]

    @functools.cached_property
    def _literal_ids(self) -> frozenset[int]:
        """Tokens matched in any text (user-defined ones)."""
        return frozenset(self._special_ids[False])

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
        if self._byte_level and kind == TokenType.NORMAL:
            to_byte = unicode_to_byte()
            return b"".join(bytes([to_byte[c]]) if c in to_byte else c.encode("utf-8", "surrogateescape")
                            for c in text)
        if kind == TokenType.BYTE:
            value = byte_token_value(text)
            if value is not None:
                return bytes([value])
        if kind == TokenType.UNKNOWN:
            return " \u2047 ".encode()  # SentencePiece's surface for an unknown piece
        if self._spm is not None or kind == TokenType.NORMAL:  # SentencePiece-style spaces (not GPT-2's)
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


class _Spans:
    """Sorted, disjoint [start, end) ranges of a text: where its parts parse special tokens."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def add(self, start: int, end: int) -> None:
        if self.ends and self.ends[-1] == start:  # adjacent parts that parse specials count as one
            self.ends[-1] = end
        elif end > start:
            self.starts.append(start)
            self.ends.append(end)

    def whole(self, length: int) -> bool:
        return self.starts == [0] and self.ends == [length]

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and end <= self.ends[i]


def _join_parts(parts: Iterable[tuple[str, bool]]) -> tuple[str, _Spans]:
    """The parts' text joined, and where in it specials are parsed."""
    texts, parsed, pos = [], _Spans(), 0
    for text, parse_special in parts:
        texts.append(text)
        if parse_special:
            parsed.add(pos, pos + len(text))
        pos += len(text)
    return "".join(texts), parsed


_ASCII_SPACE = " \t\n\x0b\x0c\r"  # C's isspace, what llama.cpp strips next to a token


def _split_at(fragment: tuple[int, str], special: str, token: int, where: _Spans | None, strip: str = ""
              ) -> list[tuple[int, str] | int]:
    """A text fragment (offset, text) split at the occurrences of `special`, left to right, each one that
    lies within `where` (anywhere if None) becoming `token`. `strip` ("l", "r" or both): the spaces before
    (l) or after (r) each occurrence go with the token (Phi-3's specials, some <mask>s)."""
    offset, text = fragment
    out: list[tuple[int, str] | int] = []
    pos = search = 0
    while (i := text.find(special, search)) >= 0:
        end = i + len(special)
        if where is not None and not where.covers(offset + i, offset + end):
            search = i + 1  # text here: a later, overlapping occurrence may still be a token
            continue
        left = i
        if "l" in strip:
            while left > pos and text[left - 1] in _ASCII_SPACE:
                left -= 1
        if left > pos:
            out.append((offset + pos, text[pos:left]))
        out.append(token)
        if "r" in strip:
            while end < len(text) and text[end] in _ASCII_SPACE:
                end += 1
        pos = search = end
    if pos < len(text):
        out.append((offset + pos, text[pos:]))
    return out


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
