"""Pre-tokenizers of the BPE tokenizers: split text into words before merging, exactly as llama.cpp does.

A pre-tokenizer (`pre_types.PRE_TOKENIZERS`) is a list of llama.cpp's regexes applied one after the other,
each splitting every piece left by the previous one; text between matches stays a piece of its own, and
lookarounds see only the piece they run in.

llama.cpp runs its regexes in a dialect of its own, and so do we, by translating them to Python's `re`:
- it collapses every non-ASCII character to its category before matching, so `\\p{L}`, `\\p{Lu}`, `\\p{Ll}`,
  `\\p{Lt}`, `\\p{Lm}` and `\\p{Lo}` all mean "a letter" (upper and lower case are told apart in ASCII only,
  by explicit ranges such as `[^a-z]`), and `\\p{N}`, `\\p{P}`, `\\p{M}`, `\\p{S}` their general categories;
- `\\s` is Unicode's White_Space (not Python's `\\s`, which also takes the separators U+001C..U+001F);
  `\\d`, `\\w` and `\\b` are ASCII-only (ECMAScript's); `$` is the end of the piece, `.` anything but CR, LF;
- an unassigned code point is neither letter, number nor space, so `[^\\s\\p{L}\\p{N}]` takes it;
- non-ASCII spaces are matched as "\\v": only `\\s` and negated classes take them, never a literal range.
For some regexes llama.cpp runs hand-written matchers instead (GPT-2, Llama 3, Qwen 2, Qwen 3.5: the same
words as their regexes, which is what runs here; Kimi-K2 and the AFMoE digit groups: see `_SUBSTITUTES`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from ..errors import TokenizerError
from . import pre_types
from .pre_types import PRE_TOKENIZERS, PreTokenizerSpec
from .unicode_data import CLASSES_FILE, HAN_RANGES, WHITESPACE, category_classes, save_category_classes

__all__ = ["CLASSES_FILE", "PreTokenizer", "save_category_classes", "translate"]

Splitter = Callable[[str], list[str]]

# Kimi-K2's hand-written matcher, as a regex: runs of Han (llama.cpp's CJK blocks), then Llama 3's words with
# Han taken out of their letters and a contraction allowed after a word (no contraction alone)
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_KIMI_K2 = (r"\p{Han}+|[^\r\n\p{L}\p{N}]?\p{L_not_han}+" + _CONTRACTIONS + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# regexes llama.cpp does not run as written -> what it runs instead
_SUBSTITUTES = {pre_types.KIMI_K2: _KIMI_K2}


class PreTokenizer:
    """Splits text into the words that BPE merges within."""

    def __init__(self, name: str | PreTokenizerSpec) -> None:
        if isinstance(name, str):
            try:
                name = PRE_TOKENIZERS[name]
            except KeyError:
                known = ", ".join(sorted(PRE_TOKENIZERS))
                raise TokenizerError(f"unknown BPE pre-tokenizer tokenizer.ggml.pre={name!r} (known, as in "
                                     f"llama.cpp: {known})") from None
        self.spec = name
        self.name = name.name
        self.splitters = [_splitter(regex) for regex in name.regexes]

    def split(self, text: str) -> list[str]:
        pieces = [text] if text else []
        for splitter in self.splitters:
            pieces = [word for piece in pieces for word in splitter(piece)]
        return pieces


@cache
def _splitter(regex: str) -> Splitter:
    if regex in (pre_types.AFMOE_DIGITS, "\\d{1,3}(?=(?:\\d{3})*\\b)"):
        return _group_digits  # llama.cpp's digit grouping, for both
    pattern = re.compile(translate(_SUBSTITUTES.get(regex, regex)), re.ASCII)
    if regex.isascii():
        def split(text: str) -> list[str]:
            return _split_one(pattern, text, text)
    else:  # llama.cpp matches such a regex on the text with its non-ASCII spaces turned into "\v" (U+3000 is
        # in the range ࠀ-一, yet no such range matches it)
        def split(text: str) -> list[str]:
            return _split_one(pattern, text, text.translate(_MASK_SPACES))
    return split


_MASK_SPACES = str.maketrans({c: "\x0b" for c in WHITESPACE if not c.isascii()})


def _split_one(pattern: re.Pattern[str], text: str, subject: str) -> list[str]:
    """Matches of `pattern` in `subject` (`text` or a same-length mask of it), as pieces of `text`; text
    between matches is kept as pieces too."""
    out: list[str] = []
    pos = 0
    for m in pattern.finditer(subject):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        if m.end() > m.start():
            out.append(text[m.start():m.end()])
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


@cache
def _numbers() -> re.Pattern[str]:
    return re.compile(translate("\\p{N}+"))


def _group_digits(text: str) -> list[str]:
    """llama.cpp's AFMoE digit split: each run of numbers in groups of three counted from its end (the first
    group 1 or 2 long); the text before a run is not a piece of its own but the start of the run's first one."""
    out: list[str] = []
    start = 0
    for m in _numbers().finditer(text):
        cut = m.start() + (len(m.group()) % 3 or 3)
        while cut <= m.end():
            out.append(text[start:cut])
            start, cut = cut, cut + 3
    if start < len(text):
        out.append(text[start:])
    return out


# --- llama.cpp's regex dialect -> Python's ---------------------------------------------------------------

_CATEGORY = {"L": "L", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L", "N": "N", "P": "P", "M": "M", "S": "S",
             "L_not_han": "L_not_han"}
_HAN = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in HAN_RANGES)
_SPACE = re.escape(WHITESPACE)


def translate(regex: str) -> str:
    """A regex of llama.cpp's dialect (module docstring) as a Python regex, compiled with re.ASCII."""
    classes = category_classes()
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == "\\" and regex.startswith("\\p{", i):
            end = regex.index("}", i)
            name = regex[i + 3:end]
            if name == "Han":
                body = _HAN
            elif name in _CATEGORY:
                body = classes[_CATEGORY[name]]
            else:
                raise TokenizerError(f"regex {regex!r}: unknown class \\p{{{name}}}")
            out.append(body if in_class else f"[{body}]")
            i = end + 1
            continue
        if c == "\\":
            escaped = regex[i + 1]
            if escaped == "s":
                out.append(_SPACE if in_class else f"[{_SPACE}]")
            elif escaped == "S":
                if in_class:
                    raise TokenizerError(f"regex {regex!r}: \\S within a class is not supported")
                out.append(f"[^{_SPACE}]")
            else:
                out.append(regex[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = "\\Z"
        elif c == ".":
            c = "[^\\n\\r]"
        out.append(c)
        i += 1
    return "".join(out)
