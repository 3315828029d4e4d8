"""The Unicode facts llama.cpp's tokenizers use, from `unicodedata`: character classes and per-character rules.

llama.cpp gives every code point one category flag (letter, number, mark, punctuation, symbol, separator,
control, undefined) from its general category's first letter, a White_Space flag, a simple lowercase
mapping and the first code point of its NFD decomposition. The same facts come from Python's `unicodedata`
here; where the two Unicode versions differ (llama.cpp's tables are newer than Python 3.11's 14.0), the
characters assigned in between are unassigned to us, so they may split differently. No test text uses them.

Scanning Unicode for the classes takes ~0.2 s, so archives carry the result (`CLASSES_FILE`, written by
the bundler for the Python it targets), used when its Unicode version is this Python's.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from functools import cache
from pathlib import Path

# Unicode White_Space, the set llama.cpp's `\s` stands for
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"

# llama.cpp's unicode_cpt_is_han: the CJK ideograph blocks, whole (unassigned code points in them included)
HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

CLASSES_FILE = Path(__file__).with_name("unicode_classes.json")

# the classes `category_classes` returns: a general category's first letter, unassigned code points (Cn),
# and letters that are not Han (Kimi-K2's words)
CLASS_NAMES = ("L", "N", "P", "M", "S", "Cn", "L_not_han")


def _ranges_to_class(ranges: list[tuple[int, int]]) -> str:
    def esc(cp: int) -> str:
        return f"\\U{cp:08x}"
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


@cache
def category_classes() -> dict[str, str]:
    """Regex character-class bodies (without brackets) for each of CLASS_NAMES."""
    try:
        saved = json.loads(CLASSES_FILE.read_text())
        if saved["unidata_version"] == unicodedata.unidata_version and set(CLASS_NAMES) <= set(saved["classes"]):
            return saved["classes"]
    except (OSError, ValueError, KeyError):
        pass
    return _scan_categories()


def save_category_classes(path: Path = CLASSES_FILE) -> None:
    """Write the classes of this Python's Unicode version for `category_classes` to read (the bundler)."""
    path.write_text(json.dumps({"unidata_version": unicodedata.unidata_version, "classes": _scan_categories()}))


def is_han(cp: int) -> bool:
    return any(a <= cp <= b for a, b in HAN_RANGES)


def _scan_categories() -> dict[str, str]:
    ranges: dict[str, list[tuple[int, int]]] = {name: [] for name in CLASS_NAMES}
    category = unicodedata.category
    current: tuple[str, ...] = ()
    start = 0
    for cp in range(sys.maxunicode + 2):
        if cp > sys.maxunicode:
            keys: tuple[str, ...] = ()
        else:
            cat = category(chr(cp))
            keys = ("Cn",) if cat == "Cn" else (cat[0], "L_not_han") if cat[0] == "L" and not is_han(cp) else (cat[0],)
        if keys != current:
            for key in current:
                if key in ranges:
                    ranges[key].append((start, cp - 1))
            current, start = keys, cp
    return {k: _ranges_to_class(v) for k, v in ranges.items()}


# --- per-character rules (the WordPiece normalizer) --------------------------------------------------------


def simple_lower(ch: str) -> str:
    """UnicodeData's one-to-one lowercase mapping (llama.cpp's unicode_tolower): `str.lower` except where
    that gives several characters (U+0130 "İ" -> "i̇" there, "i" here)."""
    lower = ch.lower()
    return lower if len(lower) == 1 else ch if ch != "\u0130" else "i"


def nfd_first(ch: str) -> str:
    """The first character of `ch`'s NFD decomposition (llama.cpp keeps only that one: "é" -> "e")."""
    return unicodedata.normalize("NFD", ch)[0]


def is_chinese_char(cp: int) -> bool:
    """BERT's CJK ranges (llama.cpp's copy, with the Hugging Face start 0x2B920 where Unicode has 0x2B820)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B920 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)
