"""The JSON recognizer behind response_format json_object: every prefix of valid JSON objects is accepted,
invalid text is refused as soon as it cannot be continued, and `complete` says when the object closes."""

from __future__ import annotations

import json
import random

import pytest

from runtime.json_constraint import MAX_WHITESPACE, JsonConstraint, JsonPrefix


def random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice([0, 17, -2.5, 1e-7, 3e21, "", "s\"q\\", "\u00fcnicode \u2603", "\n\t", True, False, None])
    if r < 0.65:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_every_prefix_of_valid_objects_is_accepted():
    rng = random.Random(0)
    for _ in range(300):
        doc = json.dumps({"x": random_value(rng)}, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
        data = doc.encode()
        prefix = JsonPrefix()
        for i in range(len(data)):
            assert prefix.feed(data[i:i + 1]), (doc, i)
            assert prefix.complete == (i == len(data) - 1)


@pytest.mark.parametrize("text", ['[]', '"s"', '1', '{"a":01}', '{"a":1,}', '{a:1}', '{"a":tru}', '{"a" 1}',
                                  '{"a":1}}', '{"a":"\x01"}', '{"a":-}', '{"a":1.}', '{"a":[1,]}', '{"a":"\\x"}',
                                  '{"a":"\\u12g4"}', '{"a":1e}', '{"a":[}', '{"a":1]'])
def test_invalid_json_is_refused(text):
    prefix = JsonPrefix()
    assert not (prefix.feed(text.encode()) and prefix.complete)


def test_whitespace_runs_are_limited():
    prefix = JsonPrefix()
    assert prefix.feed(b"{" + b"\n" * MAX_WHITESPACE)
    assert not prefix.copy().feed(b" ")
    assert prefix.feed(b'"a": "  ' + b" " * 100 + b'"}')  # inside strings anything goes
    assert prefix.complete


def test_constraint_checks_tokens_and_end_of_generation():
    pieces = {0: b"{", 1: b'"a"', 2: b":", 3: b" 1", 4: b"}", 5: b"oops", 9: b""}
    constraint = JsonConstraint(pieces.__getitem__, eog_ids=frozenset({9}))
    assert not constraint.allows(9)  # not before the object is complete
    assert not constraint.allows(1) and constraint.allows(0)
    for token in (0, 1, 2, 3):
        assert constraint.allows(token)
        constraint.advance(token)
    assert not constraint.allows(5) and not constraint.complete
    constraint.advance(4)
    assert constraint.complete and constraint.allows(9)
