"""Token types (`tokenizer.ggml.token_type`), and the tokens llama.cpp retypes by their text alone.

Converters export some special tokens with the wrong type (Gemma's <end_of_turn> as normal, FIM markers as
user-defined), so llama.cpp's vocabulary loader retypes them by text, in this order: the end-of-turn and
fill-in-the-middle markers become control tokens; the end-of-generation set is those markers, FIM pad/repo/
file-separator and EOS; gpt-oss's harmony markers become user-defined (always rendered, matched in any text),
and so does its <|end|>, which then no longer ends a generation; Gemma 4's </s> is a normal token. The type
decides how a text is split (user-defined tokens match in any text, control ones only where special tokens
are parsed) and what decoding shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import numpy as np


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# every end-of-generation text of llama.cpp's loader (EOT, EOM and the EOG list)
END_OF_GENERATION_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
)
# fill-in-the-middle markers (prefix, suffix, middle, pad, repo, file separator): control tokens
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
            "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
            "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
            "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_FIM_ENDS = ("pad", "rep", "sep")  # FIM markers that end a generation
_HARMONY_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def retype_specials(token_to_id: dict[str, int], types: np.ndarray, eos_id: int | None,
                    fim_ids: dict[str, int]) -> frozenset[int]:
    """Retype `types` in place as llama.cpp does (module docstring); returns the end-of-generation ids.
    `fim_ids`: the FIM token ids the file names (tokenizer.ggml.fim_pre_token_id, …), by kind."""
    def ids(texts: tuple[str, ...]) -> list[int]:
        return [token_to_id[t] for t in texts if t in token_to_id]

    fim: dict[str, int] = {}
    for kind, texts in _FIM_TEXTS.items():
        found = ids(texts)
        if kind in fim_ids:
            fim[kind] = fim_ids[kind]
        elif found:  # llama.cpp takes the first it meets; a vocabulary has one spelling
            fim[kind] = found[0]
            types[found[0]] = TokenType.CONTROL
    eog = {fim[kind] for kind in _FIM_ENDS if kind in fim}
    marked = ids(END_OF_GENERATION_TEXTS)
    eog.update(marked)
    types[marked] = TokenType.CONTROL
    types[ids(_HARMONY_RENDERED)] = TokenType.USER_DEFINED
    if eos_id is not None:
        eog.add(eos_id)
    texts = {token: text for text, token in token_to_id.items() if token in eog}
    present = set(texts.values())
    end = token_to_id.get("<|end|>")
    if end in eog and ({"<|return|>", "<|call|>"} <= present or {"<|calls|>", "<|flush|>"} <= present):
        eog.discard(end)  # harmony (gpt-oss, Solar Open): <|end|> ends a message, not the generation
        types[end] = TokenType.USER_DEFINED
    end_s = token_to_id.get("</s>")
    if end_s in eog and present & {"<|tool_response>", "<|plamo:eos|>"}:
        eog.discard(end_s)  # Gemma 4, PLaMo: </s> is text
        types[end_s] = TokenType.NORMAL
    return frozenset(eog)


def strip_attributes(md: Mapping[str, Any], token_to_id: dict[str, int], types: np.ndarray) -> dict[int, str]:
    """Tokens that take the spaces before ("l") or after ("r") them along, which llama.cpp decides by the
    model's name, pre-tokenizer or architecture (GGUF files do not say): Phi-3's special tokens but <unk>, <s>
    and <|endoftext|> (so "<|user|>\\n" is two tokens, not three), some encoders' mask token."""
    name = str(md.get("general.name", "")).lower()
    pre = str(md.get("tokenizer.ggml.pre", ""))
    arch = str(md.get("general.architecture", ""))
    if any(n in pre for n in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(n in arch for n in ("nomic-bert-moe", "jina-bert-v3")):
        return {token_to_id["<mask>"]: "l"} if "<mask>" in token_to_id else {}
    if "phi-3" in name or "phi3" in name:
        special = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
        strips = {int(i): "r" for i in np.flatnonzero(np.isin(types, special))}
        strips.update({token_to_id[t]: "r" for t in ("</s>",) if t in token_to_id})
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            strips.pop(token_to_id.get(text, -1), None)
        return strips
    if "modern-bert" in name:
        return {token_to_id["[MASK]"]: "l"} if "[MASK]" in token_to_id else {}
    return {}
