"""Pre-tokenizers of the byte-level BPE tokenizers: split text into words before merging.

`tokenizer.ggml.pre` names one of llama.cpp's pre-tokenizers: a list of regexes applied one after the other,
each splitting every piece left by the previous one (text between matches stays a piece of its own). The
regexes use Unicode classes (\\p{L}, \\p{N}, \\p{P}) that Python's `re` lacks, so the classes are built from
`unicodedata` once and written into the patterns as explicit ranges. Whitespace is Unicode's White_Space
set (as llama.cpp has it), not Python's `\\s`, which also takes the separators U+001C..U+001F.

Scanning Unicode for the classes takes ~0.2 s, so archives carry the result (`CLASSES_FILE`, written by
the bundler for the Python it targets), used when its Unicode version is this Python's.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from functools import cache
from pathlib import Path

from ..errors import TokenizerError

# Unicode White_Space, the set llama.cpp's `\s` stands for
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"


def _ranges_to_class(ranges: list[tuple[int, int]]) -> str:
    def esc(cp: int) -> str:
        return f"\\U{cp:08x}"
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


CLASSES_FILE = Path(__file__).with_name("unicode_classes.json")


@cache
def _category_classes() -> dict[str, str]:
    """Character-class bodies (without brackets) for the general categories L, N, P and unassigned Cn."""
    try:
        saved = json.loads(CLASSES_FILE.read_text())
        if saved["unidata_version"] == unicodedata.unidata_version:
            return saved["classes"]
    except (OSError, ValueError, KeyError):
        pass
    return _scan_categories()


def save_category_classes(path: Path = CLASSES_FILE) -> None:
    """Write the classes of this Python's Unicode version for `_category_classes` to read (the bundler)."""
    path.write_text(json.dumps({"unidata_version": unicodedata.unidata_version, "classes": _scan_categories()}))


def _scan_categories() -> dict[str, str]:
    ranges: dict[str, list[tuple[int, int]]] = {"L": [], "N": [], "P": [], "Cn": []}
    category = unicodedata.category
    current, start = None, 0
    for cp in range(sys.maxunicode + 2):
        cat = category(chr(cp)) if cp <= sys.maxunicode else None
        key = "Cn" if cat == "Cn" else cat[0] if cat else None
        if key != current:
            if current in ranges:
                ranges[current].append((start, cp - 1))
            current, start = key, cp
    return {k: _ranges_to_class(v) for k, v in ranges.items()}


@cache
def _classes() -> dict[str, str]:
    """Placeholders of the pattern table -> regex fragments."""
    c = _category_classes()
    ws = re.escape(WHITESPACE)
    return {
        "L": f"[{c['L']}]",
        "N": f"[{c['N']}]",
        "P": f"[{c['P']}]",
        "S": f"[{ws}]",  # \s
        "NS": f"[^{ws}]",  # \S
        "O": f"[^{ws}{c['L']}{c['N']}{c['Cn']}]",  # [^\s\p{L}\p{N}], unassigned code points excluded
        "NLN": f"[^\\r\\n{c['L']}{c['N']}]",  # [^\r\n\p{L}\p{N}]
    }


# `|.` at the end takes what no alternative does (unassigned code points) one character at a time, as
# llama.cpp's hand-written matchers for these two patterns do
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?{O}+|{S}+(?!{NS})|{S}+|."
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|{NLN}?{L}+|{N}{{1,3}}| ?{O}+[\r\n]*|{S}*[\r\n]+|{S}+(?!{NS})|{S}+|."
_QWEN2 = _CONTRACTIONS + r"|{NLN}?{L}+|{N}| ?{O}+[\r\n]*|{S}*[\r\n]+|{S}+(?!{NS})|{S}+"

# tokenizer.ggml.pre -> regexes applied in order (as llama.cpp's llm_tokenizer_bpe does)
PRETOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (_GPT2,),
    "gpt2": (_GPT2,),
    "smollm": (r"{N}", _GPT2),
    "starcoder": (r"{N}", _GPT2),
    "llama-bpe": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "default": (r"(?:{P}|[$+<=>^~|])+", _GPT2, r"{N}+", r"[0-9][0-9][0-9]"),
}


class PreTokenizer:
    """Splits text into the words that BPE merges within."""

    def __init__(self, name: str) -> None:
        try:
            templates = PRETOKENIZERS[name]
        except KeyError:
            known = ", ".join(sorted(PRETOKENIZERS))
            raise TokenizerError(f"unknown BPE pre-tokenizer tokenizer.ggml.pre={name!r} (known: {known})") from None
        self.name = name
        self.patterns = [re.compile(t.format(**_classes()), re.DOTALL) for t in templates]

    def split(self, text: str) -> list[str]:
        pieces = [text] if text else []
        for pattern in self.patterns:
            pieces = [word for piece in pieces for word in _split_one(pattern, piece)]
        return pieces


def _split_one(pattern: re.Pattern[str], text: str) -> list[str]:
    """Matches of `pattern` in `text`; text between matches is kept as pieces too."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out
