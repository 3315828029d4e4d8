"""WordPiece (`tokenizer.ggml.model = bert`, embedding models), as llama.cpp's llm_tokenizer_wpm_session.

The text is normalized and split into words like BERT's basic tokenizer: accents stripped (each character
replaced by the first of its NFD decomposition, marks dropped) and lower-cased where the vocabulary asks
(`tokenizer.ggml.normalizer.*`, both on by default), control characters dropped, whitespace separating
words, and every punctuation mark, ASCII symbol and CJK ideograph a word of its own. Each word, with "▁"
before it (llama.cpp's converter writes a word-initial piece as "▁piece" and a continuation "##piece" as
"piece"), is cut greedily into the longest tokens from the left; a word with a part no token covers becomes
the unknown token.
"""

from __future__ import annotations

import unicodedata

from ..errors import TokenizerError
from .spm import SPACE
from .unicode_data import WHITESPACE, is_chinese_char, nfd_first, simple_lower
from .vocab import Vocab

_SPACES = frozenset(WHITESPACE)


class WPMEncoder:
    def __init__(self, vocab: Vocab) -> None:
        if vocab.unk_id is None:
            raise TokenizerError("a WordPiece (bert) tokenizer needs an unknown token "
                                 "(tokenizer.ggml.unknown_token_id)")
        self.vocab = vocab
        # no token is longer than its bytes; llama.cpp tries one byte more than the longest token
        self.max_chars = max(len(t.encode("utf-8", "surrogateescape")) for t in vocab.tokens) + 1

    def encode(self, text: str) -> list[int]:
        token_to_id = self.vocab.token_to_id
        out: list[int] = []
        for word in self.words(text):
            word = SPACE + word
            pieces: list[int] = []
            i, n = 0, len(word)
            while i < n:
                for j in range(min(n, i + self.max_chars), i, -1):
                    token = token_to_id.get(word[i:j])
                    if token is not None:
                        pieces.append(token)
                        i = j
                        break
                else:  # no token starts here: the whole word is unknown
                    pieces = []
                    break
            out.extend(pieces or [self.vocab.unk_id])
        return out

    def words(self, text: str) -> list[str]:
        """The normalized words of `text` (module docstring)."""
        lowercase, strip_accents = self.vocab.lowercase, self.vocab.strip_accents
        words: list[str] = []
        word: list[str] = []
        for ch in text:
            if strip_accents:
                ch = nfd_first(ch)
            if ch in _SPACES:
                if word:
                    words.append("".join(word))
                    word = []
                continue
            category, cp = unicodedata.category(ch), ord(ch)
            if ch in "\x00\ufffd" or category[0] == "C" and category != "Cn" or strip_accents and category[0] == "M":
                continue
            if lowercase:
                ch = simple_lower(ch)
            if category[0] == "P" or category[0] == "S" and cp < 0x7F or is_chinese_char(cp):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(ch)
            else:
                word.append(ch)
        if word:
            words.append("".join(word))
        return words
