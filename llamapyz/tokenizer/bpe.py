"""BPE (`tokenizer.ggml.model` gpt2 or gemma4), merging as llama.cpp's llm_tokenizer_bpe_session does.

Text is split into words by the pre-tokenizer (`pre_types`). Byte-level BPE (GPT-2's, most models) maps each
word's UTF-8 bytes to printable characters (GPT-2's byte-to-unicode table); SentencePiece-style BPE (Gemma 4)
keeps the characters and writes spaces as "▁". Each word is then merged pairwise, the pair of lowest merge
rank first (leftmost on a tie), until no adjacent pair has a rank. A symbol that is not a token falls back
to one token per byte: the byte's character (byte-level), or `<0xNN>`; a byte without a token is dropped.
"""

from __future__ import annotations

from functools import cache

from .merge import merge_pairs
from .pretokenize import PreTokenizer
from .spm import SPACE
from .vocab import Vocab


@cache
def byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible map of the 256 byte values onto printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


@cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_unicode())}


class BPEEncoder:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.pretokenizer = PreTokenizer(vocab.pre)
        spec = self.pretokenizer.spec
        # each merge's rank, keyed by the merge's own string "left right" (split at its first space after the
        # first character): no new objects per merge, a third of the memory of (left, right) keys (Llama 3's
        # 280k merges: ~20 MiB instead of ~70)
        self.ranks: dict[str, int] = {}
        for rank, merge in enumerate(vocab.merges):
            if merge.find(" ", 1) > 0:  # llama.cpp keeps a merge without a space as ("", ""), which never applies
                self.ranks.setdefault(merge, rank)
        self.ignore_merges = spec.ignore_merges
        self.escape_spaces = spec.escape_spaces
        self.newline_words_whole = spec.kind == "gemma4"  # llama.cpp's fix for Gemma 4 (its pull 21343)
        self._byte_chars = byte_to_unicode() if spec.byte_level else None
        # SentencePiece-style: the token of each byte of a symbol that is not a token; None: the byte is dropped
        self._byte_ids = [vocab.token_to_id.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        if self.escape_spaces:
            text = text.replace(" ", SPACE)
        out: list[int] = []
        for word in self.pretokenizer.split(text):
            ids = self._cache.get(word)
            if ids is None:
                ids = self._encode_word(word)
                if len(self._cache) < 100_000:
                    self._cache[word] = ids
            out.extend(ids)
        return out

    def _rank(self, left: str, right: str) -> int | None:
        if left.find(" ", 1) >= 0:  # no merge's left side has a space after its first character
            return None
        return self.ranks.get(f"{left} {right}")

    def _encode_word(self, word: str) -> tuple[int, ...]:
        if self._byte_chars is not None:
            chars = self._byte_chars
            word = "".join(chars[b] for b in word.encode("utf-8", "surrogateescape"))
        token_to_id = self.vocab.token_to_id
        if (self.ignore_merges or self.newline_words_whole and not word.strip("\n")) and word in token_to_id:
            return (token_to_id[word],)
        ids: list[int] = []
        for symbol in merge_pairs(list(word), self._rank):
            token = token_to_id.get(symbol)
            if token is not None:
                ids.append(token)
                continue
            # not a token: one token per byte. A byte the vocab has no token for is dropped, as llama.cpp
            # does (SmolLM2 lacks 0xF1, for one); the alternative, <unk>, is often EOS in BPE vocabs.
            if self._byte_chars is not None:  # a byte-level symbol's characters are its bytes
                ids.extend(token_to_id[c] for c in symbol if c in token_to_id)
            else:
                ids.extend(t for t in map(self._byte_ids.__getitem__, symbol.encode("utf-8", "surrogateescape"))
                           if t is not None)
        return tuple(ids)
