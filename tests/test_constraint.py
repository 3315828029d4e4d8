"""Constrained decoding through llguidance: masks follow the grammar, and the real model's outputs under 20
JSON schemas of increasing complexity parse and validate (checked with `jsonschema`, not with ourselves)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from llamapyz.decode.constraint import Grammar, GrammarError
from llamapyz.decode.generation import Generation
from llamapyz.decode.sampling import SamplingParams
from llamapyz.model.model import Model

NAME = {"type": "string", "maxLength": 24}
SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer"}}},
    {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150}}, "required": ["age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "number"}},
     "required": ["ok", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "maxItems": 3}}, "required": ["tags"]},
    {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}, "required": ["id"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "integer"},
                                                                              "y": {"type": "integer"}},
                                                "required": ["x", "y"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, NAME]}}, "required": ["value"]},
    {"type": "object", "properties": {"n": {"type": "null"}, "const": {"const": "fixed"}}, "required": ["n", "const"]},
    {"type": "object", "properties": {"items": {"type": "array", "minItems": 2, "maxItems": 2,
                                                "items": {"type": "integer", "minimum": 1, "maximum": 9}}},
     "required": ["items"]},
    {"type": "object", "properties": {"person": {"type": "object", "properties": {"name": NAME, "age": {
        "type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]}}, "required": ["person"]},
    {"type": "object", "properties": {"city": NAME, "country": {"enum": ["FR", "DE", "IT"]},
                                      "population": {"type": "integer", "minimum": 0}},
     "required": ["city", "country", "population"], "additionalProperties": False},
    {"type": "object", "properties": {"steps": {"type": "array", "maxItems": 3, "items": {
        "type": "object", "properties": {"n": {"type": "integer"}, "text": NAME}, "required": ["n", "text"],
        "additionalProperties": False}}}, "required": ["steps"]},
    {"type": "object", "properties": {"shape": {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
         "required": ["kind", "r"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number"}},
         "required": ["kind", "side"], "additionalProperties": False}]}}, "required": ["shape"]},
    {"$defs": {"node": {"type": "object", "properties": {"label": NAME, "next": {
        "anyOf": [{"type": "null"}, {"$ref": "#/$defs/leaf"}]}}, "required": ["label", "next"],
        "additionalProperties": False}, "leaf": {"type": "object", "properties": {"label": NAME},
                                                 "required": ["label"], "additionalProperties": False}},
     "type": "object", "properties": {"head": {"$ref": "#/$defs/node"}}, "required": ["head"]},
    {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"]},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 99}}}},
     "required": ["matrix"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": NAME, "roles": {"type": "array", "items": {"enum": ["admin", "dev", "ops"]}, "maxItems": 3},
        "active": {"type": "boolean"}}, "required": ["name", "roles", "active"], "additionalProperties": False},
        "created": {"type": "integer", "minimum": 0}}, "required": ["user", "created"], "additionalProperties": False},
    {"type": "object", "properties": {"order": {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[0-9]{4}$"},
        "lines": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "object", "properties": {
            "sku": {"enum": ["A1", "B2"]}, "qty": {"type": "integer", "minimum": 1, "maximum": 5},
            "note": {"anyOf": [{"type": "null"}, NAME]}}, "required": ["sku", "qty", "note"],
            "additionalProperties": False}},
        "total": {"type": "number", "minimum": 0}}, "required": ["id", "lines", "total"],
        "additionalProperties": False}}, "required": ["order"], "additionalProperties": False},
]


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Model:
    return Model.load(smollm2_path, n_ctx=512)


def generate(model: Model, prompt: str, grammar: Grammar, max_tokens: int = 160,
             seed: int | None = None) -> tuple[str, str]:
    """The constrained output's text and finish reason."""
    tokens = model.chat_tokens([{"role": "user", "content": prompt}])
    params = SamplingParams(temperature=0.0 if seed is None else 0.9, seed=seed)
    generation = Generation(model.tokenizer, tokens, max_tokens, params, model.n_ctx,
                            constraint=grammar.constraint(model.tokenizer))
    logits, text = model.prefill(tokens), []
    while True:
        step = generation.step(logits)
        text.append(step.text)
        if step.finish_reason:
            return "".join(text), step.finish_reason
        logits = model.decode(step.token)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_outputs_validate_against_their_schema(model: Model, index: int) -> None:
    schema = SCHEMAS[index]
    prompt = f"Give a short example of JSON that matches this schema: {json.dumps(schema)}"
    text, finish = generate(model, prompt, Grammar.json_schema(schema))
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


def test_sampled_outputs_validate_too(model: Model) -> None:
    schema = SCHEMAS[-1]
    for seed in range(3):
        text, finish = generate(model, "An order, as JSON.", Grammar.json_schema(schema), seed=seed)
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), schema)


def test_json_object_and_lark_grammars(model: Model) -> None:
    prompt = "Describe a cat as a small JSON object with its name and age."
    text, finish = generate(model, prompt, Grammar.json_object())
    assert finish == "stop" and isinstance(json.loads(text), dict), text
    text, finish = generate(model, "Pick a fruit.", Grammar.lark('start: "I pick " FRUIT "."\nFRUIT: "apple" | "pear"'))
    assert finish == "stop" and text in ("I pick apple.", "I pick pear."), text
    gbnf = 'root ::= "yes" | "no"'  # llama.cpp's GBNF is accepted too
    text, finish = generate(model, "Yes or no?", Grammar.lark(gbnf))
    assert text in ("yes", "no"), text


def test_the_mask_allows_exactly_what_continues_the_grammar(model: Model) -> None:
    tokenizer = model.tokenizer
    constraint = Grammar.lark('start: "ab" | "ac"').constraint(tokenizer)
    allowed = np.flatnonzero(constraint.allowed())
    pieces = {tokenizer.token_bytes(int(t)) for t in allowed}
    assert pieces and all(p in (b"a", b"ab", b"ac") for p in pieces), pieces
    constraint.advance(tokenizer.encode("a", add_special=False)[0])
    pieces = {tokenizer.token_bytes(int(t)) for t in np.flatnonzero(constraint.allowed())}
    assert pieces == {b"b", b"c"}
    constraint.advance(tokenizer.encode("b", add_special=False)[0])
    allowed = constraint.allowed()
    assert set(np.flatnonzero(allowed)) <= set(tokenizer.eog_ids) and allowed.any()  # only the end may follow


def test_bad_grammars_and_schemas_are_named_errors(model: Model) -> None:
    with pytest.raises(GrammarError, match="unknown name"):
        Grammar.lark("start: nothing_defined").constraint(model.tokenizer)
    with pytest.raises(GrammarError):
        Grammar.json_schema({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}).constraint(model.tokenizer)
    with pytest.raises(GrammarError, match="must be an object"):
        Grammar.json_schema("not a schema")


def test_mask_sets_exactly_the_disallowed_tokens_to_minus_infinity(model: Model) -> None:
    """Both ways of applying the mask (few tokens allowed: only their words unpacked; many: the whole
    mask) against the plain bool mask, along a whole JSON output."""
    tokenizer = model.tokenizer
    constraint = Grammar.json_schema(SCHEMAS[-1]).constraint(tokenizer)
    text = json.dumps({"order": {"id": "0042", "lines": [{"sku": "A1", "qty": 2, "note": "fine"}], "total": 9.5}})
    logits = np.random.default_rng(0).standard_normal(tokenizer.n_vocab).astype(np.float32)
    sparse = dense = 0
    for token in tokenizer.encode(text, add_special=False):
        allowed = constraint.allowed()
        masked = logits.copy()
        constraint.mask(masked)
        np.testing.assert_array_equal(masked, np.where(allowed, logits, -np.inf))
        sparse, dense = sparse + (allowed.sum() < 1000), dense + (allowed.sum() > len(allowed) // 2)
        constraint.advance(token)
    assert sparse and dense  # both ways were taken
