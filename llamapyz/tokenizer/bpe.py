"""GPT-2 byte-level BPE (`tokenizer.ggml.model = gpt2`), merging as llama.cpp does.

Text is split into words by the pre-tokenizer; each word's UTF-8 bytes are mapped to printable characters
(GPT-2's byte-to-unicode table) and merged pairwise, the pair of lowest merge rank first (leftmost on a
tie), until no adjacent pair has a rank. Symbols that are not tokens fall back to one token per byte.
"""

from __future__ import annotations

from functools import cache

from ..errors import TokenizerError
from .merge import merge_pairs
from .pretokenize import PreTokenizer
from .vocab import Vocab

# pre-tokenizers whose words are looked up whole before merging (llama.cpp's ignore_merges)
_IGNORE_MERGES = frozenset({"llama-bpe", "llama3"})


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
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(vocab.merges):
            cut = merge.find(" ", 1)
            if cut < 0:
                raise TokenizerError(f"tokenizer.ggml.merges[{rank}] = {merge!r} is not 'left right'")
            self.ranks.setdefault((merge[:cut], merge[cut + 1:]), rank)
        self.ignore_merges = vocab.pre in _IGNORE_MERGES
        self._byte_chars = byte_to_unicode()
        self._cache: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
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
        return self.ranks.get((left, right))

    def _encode_word(self, word: str) -> tuple[int, ...]:
        chars = self._byte_chars
        encoded = "".join(chars[b] for b in word.encode("utf-8", "surrogateescape"))
        token_to_id = self.vocab.token_to_id
        if self.ignore_merges and encoded in token_to_id:
            return (token_to_id[encoded],)
        ids: list[int] = []
        for symbol in merge_pairs(list(encoded), self._rank):
            token = token_to_id.get(symbol)
            if token is not None:
                ids.append(token)
                continue
            # not a token: one token per byte. A byte the vocab has no token for is dropped, as llama.cpp
            # does (SmolLM2 lacks 0xF1, for one); the alternative, <unk>, is often EOS in BPE vocabs.
            ids.extend(token_to_id[ch] for ch in symbol if ch in token_to_id)
        return tuple(ids)
