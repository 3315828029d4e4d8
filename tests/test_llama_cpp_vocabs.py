"""llama.cpp's own tokenizer test set, token for token, and its pre-tokenizer table, verbatim.

The vocabularies and their cases come from the llama.cpp sources vendored in llama-cpp-python 0.3.36's
sdist (tests/llama_cpp_vocabs.py fetches it from PyPI once per machine, hence `real_model`).
"""

from __future__ import annotations

import pytest

from llamapyz.errors import TokenizerError
from llamapyz.gguf.reader import load_gguf
from llamapyz.tokenizer import Tokenizer
from llamapyz.tokenizer.pre_types import PRE_TOKENIZERS
from tests.llama_cpp_vocabs import bpe_pre_types, pre_names, sources_dir, vocab_names, vocab_tests

# every vocabulary of llama.cpp's test set (test-tokenizer-0's), with its tokenizer: all must agree
VOCABS = {
    "bert-bge": "bert (WordPiece)",
    "command-r": "gpt2, pre command-r",
    "deepseek-coder": "gpt2, pre deepseek-coder",
    "deepseek-llm": "gpt2, pre deepseek-llm",
    "falcon": "gpt2, pre falcon",
    "gemma-4": "gemma4 (SentencePiece-style BPE)",
    "gpt-2": "gpt2, pre gpt-2",
    "llama-bpe": "gpt2, pre llama-bpe",
    "llama-spm": "llama (SentencePiece)",
    "mpt": "gpt2, pre mpt",
    "phi-3": "llama (SentencePiece)",
    "qwen2": "gpt2, pre qwen2",
    "qwen35": "gpt2, pre qwen35",
    "refact": "gpt2, pre refact",
    "starcoder": "gpt2, pre starcoder",
}


@pytest.mark.real_model
def test_the_test_set_is_the_listed_vocabularies():
    assert vocab_names() == sorted(VOCABS)


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(VOCABS))
def test_llama_cpp_vocabulary_tests_token_for_token(name):
    tests = vocab_tests(name)
    tok = Tokenizer.from_gguf(tests.path)  # a vocabulary-only file: no tensors, no data section
    assert len(tests.cases) >= 40
    wrong = {text: (expected, got) for text, expected in tests.cases.items()
             if (got := tok.encode(text, add_special=False, parse_special=False)) != expected}
    assert not wrong, f"{len(wrong)} of {len(tests.cases)} cases differ from llama.cpp: {wrong}"


@pytest.mark.real_model
def test_vocabularies_without_cases_load_or_are_refused_by_name():
    models = sources_dir() / "models"
    for name in ("aquila", "baichuan", "gpt-neox"):  # gpt2 without a pre-tokenizer (default), SentencePiece
        tok = Tokenizer.from_gguf(models / f"ggml-vocab-{name}.gguf")
        assert tok.decode(tok.encode("Hello world", add_special=False)) == "Hello world"
    with load_gguf(models / "ggml-vocab-nomic-bert-moe.gguf") as gguf:
        assert not gguf.tensors
        with pytest.raises(TokenizerError, match="unsupported tokenizer.ggml.model='t5'"):
            Tokenizer.from_gguf(gguf)


@pytest.mark.real_model
def test_pre_tokenizers_are_llama_cpps_verbatim():
    """Every name llama.cpp's loader knows, with its type's regexes (as written in llama-vocab.cpp), whether
    words are GPT-2 byte-encoded, and the options it sets for that name."""
    types, names = bpe_pre_types(), pre_names()
    assert set(PRE_TOKENIZERS) == set(names)
    for name, (pre_type, options) in names.items():
        spec = PRE_TOKENIZERS[name]
        regexes, byte_encode = types[pre_type]
        assert spec.regexes == regexes, name
        assert spec.byte_level == byte_encode, name
        assert (spec.kind == "gemma4") == (pre_type == "gemma4"), name  # llama.cpp's newline-run rule
        assert spec.ignore_merges == ("ignore_merges" in options), name
        assert spec.add_bos == ("add_bos" in options), name
        assert spec.no_bos == ("no_bos" in options), name
        assert spec.escape_spaces == ("escape_whitespaces" in options), name


# chat-like texts with special tokens parsed and added, and what llama.cpp 0.3.36 makes of them
# (llama_tokenize with add_special and parse_special on): BOS defaults, [CLS]…[SEP], Phi-3's specials taking
# the newline after them, Gemma 4's forced BOS
WITH_SPECIALS = {
    "phi-3": ("<|user|>\nHi there<|end|>\n<|assistant|>\n", [1, 32010, 6324, 727, 32007, 32001]),
    "gemma-4": ("<|turn>user\nHi  there<turn|>\n<|turn>model\n",
                [2, 105, 2364, 107, 10979, 138, 13534, 106, 107, 105, 4368, 107]),
    "bert-bge": ("Hello, World! [SEP] naïve", [101, 7592, 1010, 2088, 999, 102, 15743, 102]),
    "llama-bpe": ("<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
                  [128000, 128006, 882, 128007, 271, 13347, 1070, 128009]),
    "qwen35": ("<|im_start|>user\nHi there<|im_end|>\n", [151644, 872, 198, 13048, 1052, 151645, 198]),
    "command-r": ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>",
                  [5, 255000, 255006, 37535, 2782, 255001]),
}


@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(WITH_SPECIALS))
def test_special_tokens_parsed_and_added_like_llama_cpp(name):
    text, expected = WITH_SPECIALS[name]
    assert Tokenizer.from_gguf(vocab_tests(name).path).encode(text) == expected
