"""Prefix-aware routing's policy (llamapyz/scale/prefix.py), without Ray: the keys a request gets, and where the
table sends it."""

from __future__ import annotations

import json

from llamapyz.scale.prefix import LONG_PREFIX_CHARS, PrefixTable, routing_keys


def chat(*messages: tuple[str, str]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]}).encode()


def test_the_next_turn_of_a_conversation_carries_the_last_turns_keys():
    first = routing_keys("/v1/chat/completions", chat(("system", "Be brief."), ("user", "Hi")))
    second = routing_keys("/v1/chat/completions", chat(("system", "Be brief."), ("user", "Hi"),
                                                       ("assistant", "Hello!"), ("user", "How are you?")))
    assert [k.digest for k in second[:2]] == [k.digest for k in first]
    assert [k.sticky for k in first] == [False, True]  # a short system prompt alone is not worth a detour


def test_a_long_system_prompt_is_sticky_and_other_endpoints_have_no_keys():
    keys = routing_keys("/chat/completions", chat(("system", "x" * LONG_PREFIX_CHARS), ("user", "Hi")))
    assert keys[0].sticky
    assert routing_keys("/v1/embeddings", b'{"input": "hi"}') == ()
    assert routing_keys("/v1/chat/completions", b"not json") == ()
    assert routing_keys("/v1/chat/completions", b'{"messages": 3}') == ()


def test_completions_share_keys_per_block_of_characters():
    short = routing_keys("/v1/completions", json.dumps({"prompt": "a" * 100}).encode())
    longer = routing_keys("/v1/completions", json.dumps({"prompt": "a" * 100 + "b" * 100}).encode())
    assert short[0] == longer[0] and short[-1].n_chars == 100
    assert routing_keys("/v1/completions", b'{"prompt": [[1, 2, 3]]}')


def test_a_prefix_goes_back_to_its_replica_unless_that_one_is_overloaded():
    table = PrefixTable(n_slots=2)
    keys = routing_keys("/v1/chat/completions", chat(("user", "Hi")))
    table.record(keys, "b")
    assert table.choose(keys, {"a": 0, "b": 1})[0] == "b"  # busier, but not full: the cache wins
    assert table.choose(keys, {"a": 0, "b": 2})[0] == "a"  # every slot busy and "a" idle: load wins
    assert table.choose(keys, {"a": 2, "b": 2})[0] == "b"  # everyone full: stay
    table.forget("b")
    assert table.choose(keys, {"a": 1, "b": 0})[0] == "b"  # forgotten: least busy


def test_new_prompts_spread_over_idle_replicas():
    table = PrefixTable()
    chosen = {table.choose(routing_keys("/v1/chat/completions", chat(("user", f"question {i}"))),
                           {"a": 0, "b": 0, "c": 0})[0] for i in range(30)}
    assert chosen == {"a", "b", "c"}


def test_the_table_forgets_the_oldest_keys_first():
    table = PrefixTable(max_keys=3)
    for i in range(5):
        table.record(routing_keys("/v1/completions", json.dumps({"prompt": str(i)}).encode()), f"r{i}")
    assert list(table.replica_of.values()) == ["r2", "r3", "r4"]
