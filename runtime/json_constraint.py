"""Constrained sampling for `response_format: {"type": "json_object"}`: the output is one JSON object.

`JsonPrefix` is an incremental byte-level JSON recognizer: it accepts bytes while they can still be the
start of a valid JSON text whose top level is an object, and says when the object is complete. The
constraint checks each sampled token's bytes against it; a token that would break the JSON is masked out
and another one is sampled (cheap, because a reasonable model mostly proposes valid tokens). End-of-
generation is only allowed once the object is complete, and generation stops as soon as it is.

Whitespace outside strings is limited to `MAX_WHITESPACE` bytes in a row, so a model cannot loop on
newlines forever.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_WHITESPACE = 16
_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrtu')

# states (what the next byte may be)
VALUE = 0  # a value (after '[', ',' in an array, ':' in an object)
VALUE_OR_CLOSE = 1  # a value or ']' (just after '[')
KEY = 2  # a key string (after ',' in an object)
KEY_OR_CLOSE = 3  # a key string or '}' (just after '{')
COLON = 4  # ':' after a key
AFTER_VALUE = 5  # ',' or the closing bracket of the container
STRING = 6  # inside a string
ESCAPE = 7  # after a backslash in a string
UNICODE = 8  # inside \uXXXX (self.count hex digits to go)
NUMBER = 9  # inside a number (self.number: its sub-state)
LITERAL = 10  # inside true/false/null (self.literal: the bytes still to come)
DONE = 11  # the top-level object is complete
START = 12  # nothing yet: whitespace, then '{'

# number sub-states; the ones in _NUMBER_END may end the number
_N_SIGN, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_NUMBER_END = frozenset({_N_ZERO, _N_INT, _N_FRAC, _N_EXP})


class JsonPrefix:
    __slots__ = ("state", "stack", "count", "number", "literal", "is_key", "whitespace")

    def __init__(self) -> None:
        self.state = START
        self.stack: list[int] = []  # open containers: ord("{") or ord("[")
        self.count = 0
        self.number = 0
        self.literal = b""
        self.is_key = False  # the string being read is an object key
        self.whitespace = 0

    def copy(self) -> JsonPrefix:
        other = JsonPrefix.__new__(JsonPrefix)
        other.state, other.stack, other.count = self.state, list(self.stack), self.count
        other.number, other.literal = self.number, self.literal
        other.is_key, other.whitespace = self.is_key, self.whitespace
        return other

    @property
    def complete(self) -> bool:
        return self.state == DONE

    def feed(self, data: bytes) -> bool:
        """Consume bytes; False (state then undefined) as soon as they cannot continue valid JSON."""
        return all(self._byte(c) for c in data)

    def _byte(self, c: int) -> bool:
        state = self.state
        if state == STRING:
            if c == 0x22:  # "
                self.state = COLON if self.is_key else AFTER_VALUE
                self.is_key = False
            elif c == 0x5C:  # backslash
                self.state = ESCAPE
            return c >= 0x20
        if state == ESCAPE:
            if c not in _ESCAPES:
                return False
            if c == 0x75:  # u
                self.state, self.count = UNICODE, 4
            else:
                self.state = STRING
            return True
        if state == UNICODE:
            if c not in _HEX:
                return False
            self.count -= 1
            if self.count == 0:
                self.state = STRING
            return True
        if state == NUMBER:
            if self._number_byte(c):
                return True
            if self.number not in _NUMBER_END:
                return False
            self.state = AFTER_VALUE  # the number ended: this byte belongs to what follows it
            return self._byte(c)
        if state == LITERAL:
            if c != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self.state = AFTER_VALUE
            return True
        if c in _WS:
            self.whitespace += 1
            return self.whitespace <= MAX_WHITESPACE
        self.whitespace = 0
        if state == START:
            return c == 0x7B and self._open(c)
        if state == DONE:
            return False
        if state in (KEY, KEY_OR_CLOSE):
            if c == 0x22:
                self.state, self.is_key = STRING, True
                return True
            return state == KEY_OR_CLOSE and c == 0x7D and self._close(c)
        if state == COLON:
            if c == 0x3A:
                self.state = VALUE
                return True
            return False
        if state == AFTER_VALUE:
            if c == 0x2C:  # ,
                self.state = KEY if self.stack[-1] == 0x7B else VALUE
                return True
            return c in (0x7D, 0x5D) and self._close(c)
        # VALUE or VALUE_OR_CLOSE
        if c == 0x5D and state == VALUE_OR_CLOSE:
            return self._close(c)
        return self._value_start(c)

    def _value_start(self, c: int) -> bool:
        if c in (0x7B, 0x5B):
            return self._open(c)
        if c == 0x22:
            self.state, self.is_key = STRING, False
            return True
        if c == 0x2D or c in _DIGITS:
            self.state = NUMBER
            self.number = _N_SIGN if c == 0x2D else (_N_ZERO if c == 0x30 else _N_INT)
            return True
        for word in (b"true", b"false", b"null"):
            if c == word[0]:
                self.state, self.literal = LITERAL, word[1:]
                return True
        return False

    def _number_byte(self, c: int) -> bool:
        n, digit = self.number, c in _DIGITS
        if n == _N_SIGN and digit:
            self.number = _N_ZERO if c == 0x30 else _N_INT
        elif digit and n in (_N_INT, _N_DOT, _N_FRAC):
            self.number = _N_INT if n == _N_INT else _N_FRAC
        elif n in (_N_ZERO, _N_INT) and c == 0x2E:
            self.number = _N_DOT
        elif n in (_N_ZERO, _N_INT, _N_FRAC) and c in (0x65, 0x45):
            self.number = _N_E
        elif n == _N_E and c in (0x2B, 0x2D):
            self.number = _N_ESIGN
        elif n in (_N_E, _N_ESIGN, _N_EXP) and digit:
            self.number = _N_EXP
        else:
            return False
        return True

    def _open(self, c: int) -> bool:
        self.stack.append(c)
        self.state = KEY_OR_CLOSE if c == 0x7B else VALUE_OR_CLOSE
        return True

    def _close(self, c: int) -> bool:
        if not self.stack or self.stack[-1] != c - 2:  # '}' - 2 == '{', ']' - 2 == '['
            return False
        self.stack.pop()
        self.state = AFTER_VALUE if self.stack else DONE
        return True


class JsonConstraint:
    """Per-request state: which tokens may come next so that the output stays one valid JSON object."""

    def __init__(self, token_bytes: Callable[[int], bytes], eog_ids: frozenset[int]) -> None:
        self.token_bytes = token_bytes
        self.eog_ids = eog_ids
        self.prefix = JsonPrefix()

    @property
    def complete(self) -> bool:
        return self.prefix.complete

    def allows(self, token: int) -> bool:
        if token in self.eog_ids:
            return self.prefix.complete
        data = self.token_bytes(token)
        return bool(data) and self.prefix.copy().feed(data)

    def advance(self, token: int) -> None:
        if token not in self.eog_ids:
            self.prefix.feed(self.token_bytes(token))
