from __future__ import annotations

import numpy as np
import pytest

from llamapyz.errors import TokenizerError
from llamapyz.tokenizer import Tokenizer, TokenType


def bert_metadata(**keys: object) -> dict:
    """A WordPiece vocabulary as llama.cpp's converter writes one: word-initial pieces with "▁", continuations
    ("##ing") without; [CLS] is 101 and [SEP] 102 by llama.cpp's defaults."""
    tokens = [f"[unused{i}]" for i in range(110)]
    tokens[0], tokens[100], tokens[101], tokens[102], tokens[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    tokens += ["▁hello", "▁world", "▁play", "ing", "▁cafe", "▁,", "▁!", "▁$", "▁日", "▁本", "▁un", "▁€", "▁i", "▁'",
               "▁s", "▁ok"]
    types = [TokenType.NORMAL] * len(tokens)
    for i in (0, 100, 101, 102, 103):
        types[i] = TokenType.CONTROL
    return {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32), "tokenizer.ggml.unknown_token_id": 100} | keys


def pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.vocab.tokens[i] for i in ids]


def test_wordpiece_lowercases_strips_accents_and_splits_punctuation():
    tok = Tokenizer.from_gguf(bert_metadata())
    ids = tok.encode("Hello, WORLD! Playing at the Café", add_special=False)
    assert pieces(tok, ids) == ["▁hello", "▁,", "▁world", "▁!", "▁play", "ing", "[UNK]", "[UNK]", "▁cafe"]


def test_wordpiece_adds_cls_and_sep_with_the_special_tokens():
    tok = Tokenizer.from_gguf(bert_metadata())
    assert pieces(tok, tok.encode("hello")) == ["[CLS]", "▁hello", "[SEP]"]
    assert pieces(tok, tok.encode("hello", add_special=False)) == ["▁hello"]


def test_wordpiece_cjk_symbols_and_controls():
    tok = Tokenizer.from_gguf(bert_metadata())
    # each CJK ideograph a word; an ASCII symbol a word, a non-ASCII one ("€") part of its word; controls dropped
    assert pieces(tok, tok.encode("日本 $ok €ok \x00\u200bok", add_special=False)) == \
        ["▁日", "▁本", "▁$", "▁ok", "[UNK]", "▁ok"]
    assert pieces(tok, tok.encode("İ's", add_special=False)) == ["▁i", "▁'", "▁s"]  # İ lower-cases to i


def test_wordpiece_normalizer_flags_follow_the_file():
    tok = Tokenizer.from_gguf(bert_metadata(**{"tokenizer.ggml.normalizer.lowercase": False}))
    assert pieces(tok, tok.encode("hello Hello", add_special=False)) == ["▁hello", "[UNK]"]
    assert tok.vocab.strip_accents is False  # follows lowercase unless the file says otherwise


def test_wordpiece_needs_an_unknown_token():
    md = bert_metadata(**{"tokenizer.ggml.add_bos_token": False})
    del md["tokenizer.ggml.unknown_token_id"]
    md["tokenizer.ggml.tokens"] = md["tokenizer.ggml.tokens"][:100]  # llama.cpp's default, 100, is out of range
    md["tokenizer.ggml.token_type"] = md["tokenizer.ggml.token_type"][:100]
    with pytest.raises(TokenizerError, match="needs an unknown token"):
        Tokenizer.from_gguf(md)
