"""Client text in a chat prompt: the template's markup comes from the model; the messages, and any other
variable a caller passes (`tools=[…]`), come from clients. `ChatTemplate.render_parts` keeps the two apart for
the tokenizer (`Tokenizer.encode_parts`): before rendering, every special-token text in a client string
("<|im_end|>" typed by a user; dict keys, tool names and arguments included) is swapped for a placeholder of
private-use characters carrying a random per-render nonce, and so is a client string's end that could join a
neighbour into one (a trailing "<|im_", a leading "end|>"). The rendered text is then split at the
placeholders into (text, parse_special) parts, the client's special-token texts coming back as literal parts,
so a user cannot write control tokens. Not covered: a template that re-cases, cuts or reassembles client
strings (`| upper`, slicing, `replace`) can still make markup of them, and one that cuts a placeholder apart
renders its private-use characters instead of the text it stood for.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any

_OPEN, _CLOSE = "\ue000", "\ue001"  # a placeholder: _OPEN, the render's nonce, an index in _DIGITS, _CLOSE
_DIGITS = "".join(map(chr, range(0xE010, 0xE01A)))
_TO_DIGITS, _FROM_DIGITS = str.maketrans("0123456789", _DIGITS), str.maketrans(_DIGITS, "0123456789")
_NONCE_CHARS = 8  # each one of 256 private-use characters: 64 random bits


class SpecialTexts:
    """The texts a client string must not spell into markup (a tokenizer's `markup_texts`: "<|im_start|>",
    "<bos>", …), indexed once for `ChatTemplate.render_parts`."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = tuple(text for text in texts if text)
        self._full = set(self.texts)
        self._prefixes = {text[:k] for text in self.texts for k in range(1, len(text))}
        self._suffixes = {text[k:] for text in self.texts for k in range(1, len(text))}
        self._longest = max(map(len, self.texts), default=0)
        # Where one may start: at its first three characters (Gemma's 6,249 share 7 of them), or at its first
        # one for the rare shorter text; and the lengths to try there, longest first.
        self._lengths: dict[str, list[int]] = {}
        for text in self.texts:
            self._lengths.setdefault(text[:3] if len(text) >= 3 else text[0], []).append(len(text))
        for head, lengths in self._lengths.items():
            self._lengths[head] = sorted(set(lengths), reverse=True)
        heads = sorted(self._lengths, key=lambda head: (-len(head), head))
        self._starts = re.compile(f"(?=({'|'.join(map(re.escape, heads))}))") if heads else None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where `text` spells one of the texts (leftmost, longest), or ends in a piece of one that a
        neighbour could complete: a proper prefix of one at its end, a proper suffix at its start, also once
        its whitespace is stripped. Sorted, overlaps merged. Every occurrence of a text, in `text` or across
        its ends, overlaps one of them."""
        if self._starts is None:
            return []
        spans: list[tuple[int, int]] = []
        for match in self._starts.finditer(text):
            start = match.start()
            end = self._match_at(text, start, match.group(1)) if not spans or start >= spans[-1][1] else 0
            if end:
                spans.append((start, end))
        for end in {len(text), len(text.rstrip())}:
            k = self._longest_piece(text, end, self._prefixes, at_end=True)
            if k:
                spans.append((end - k, end))
        for start in {0, len(text) - len(text.lstrip())}:
            k = self._longest_piece(text, start, self._suffixes, at_end=False)
            if k:
                spans.append((start, start + k))
        return _merged(spans)

    def _match_at(self, text: str, start: int, head: str) -> int:
        """The end of the longest of the texts at `start` (where `head` begins), 0 if none."""
        lengths = self._lengths[head] + (self._lengths.get(head[0], []) if len(head) == 3 else [])
        return next((start + n for n in lengths if text[start:start + n] in self._full), 0)

    def _longest_piece(self, text: str, edge: int, pieces: set[str], at_end: bool) -> int:
        """The length of the longest of `pieces` ending (at_end) or starting at `edge`, 0 if none."""
        room = edge if at_end else len(text) - edge
        for k in range(min(room, self._longest - 1), 0, -1):
            if (text[edge - k:edge] if at_end else text[edge:edge + k]) in pieces:
                return k
        return 0


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class Shield:
    """One render's placeholders: `protect` swaps client strings' special texts for them, `split` turns the
    rendered text back into (text, parse_special) parts. The nonce is random per render, so neither a client
    nor an earlier render can write a placeholder; one a template forges from a protected string it was given
    can only stand for literal text."""

    def __init__(self, special_texts: SpecialTexts) -> None:
        self._specials = special_texts
        self._texts: list[str] = []  # by index: the client text each placeholder stands for
        nonce = "".join(chr(0xE100 + byte) for byte in secrets.token_bytes(_NONCE_CHARS))
        self._prefix = _OPEN + nonce
        self._placeholder = re.compile(re.escape(self._prefix) + f"([{_DIGITS}]+)" + re.escape(_CLOSE))

    def protect(self, value: Any) -> Any:
        """`value` with every string in it (dict keys too) protected; lists, tuples and dicts are copied where
        something in them changed, other objects passed as they are."""
        if isinstance(value, str):
            return self._protect_text(value)
        if isinstance(value, dict):
            items = [(self.protect(key), self.protect(item)) for key, item in value.items()]
            same = all(new[0] is old[0] and new[1] is old[1] for new, old in zip(items, value.items(), strict=True))
            return value if same else dict(items)
        if isinstance(value, (list, tuple)):
            items = [self.protect(item) for item in value]
            same = all(new is old for new, old in zip(items, value, strict=True))
            return value if same else (items if isinstance(value, list) else tuple(items))
        return value

    def _protect_text(self, text: str) -> str:
        spans = self._specials.spans(text)
        if not spans:
            return text
        pieces, pos = [], 0
        for start, end in spans:
            self._texts.append(text[start:end])
            index = str(len(self._texts) - 1).translate(_TO_DIGITS)
            pieces += [text[pos:start], self._prefix, index, _CLOSE]
            pos = end
        pieces.append(text[pos:])
        return "".join(pieces)

    def split(self, rendered: str) -> list[tuple[str, bool]]:
        """The rendered text as parts: the template's text (special tokens parsed) between the client texts
        the placeholders stand for (literal)."""
        pieces = self._placeholder.split(rendered)
        parts = [(pieces[0], True)] if pieces[0] else []
        for digits, text in zip(pieces[1::2], pieces[2::2], strict=True):
            index = int(digits.translate(_FROM_DIGITS))
            parts.append((self._texts[index], False) if index < len(self._texts) else ("", True))
            if text:
                parts.append((text, True))
        return [part for part in parts if part[0]]

