"""Prefix-aware routing, the policy (no Ray here: `router.py` plugs it into Ray Serve).

Each replica keeps its own prompt cache (its slots' KV caches), so a request should go where its prompt's
beginning was evaluated last. The front reads the request body before routing (Ray's HTTP proxy picks a
replica before the body arrives, so this cannot happen there) and turns it into `PrefixKey`s, shortest first:

- chat: one key per leading run of messages (`[system]`, `[system, user1]`, `[system, user1, assistant1,
  user2]`, …), each a hash of the roles and contents so far. The next turn of a conversation starts with
  every message of the last one, so its keys include the last turn's longest key.
- completions: one key per 64 characters of the prompt (and one for the whole prompt).

A key is *sticky* when sharing it is worth a detour: a key that covers a user or assistant message (the same
conversation), or one of at least LONG_PREFIX_CHARS characters (a long shared system prompt or document).
A short shared system prompt alone is not, so different conversations spread over the replicas.

`PrefixTable.choose` sends a request to the replica that last served its longest sticky key, unless that
replica is overloaded (every slot busy and another replica less busy); otherwise to the least busy replica.
We chose this over a consistent hash of the prompt's first characters: a hash pins a prefix to a replica
forever (hot prefixes overload one replica, and a replaced replica moves a whole hash range), while "where
was it served last" follows the cache that actually exists and lets load override it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

LONG_PREFIX_CHARS = 1024  # ~250 tokens: a shared prefix this long is worth keeping on one replica
BLOCK_CHARS = 64  # completions: one key per this many characters
MAX_KEYS = 64  # keys per request (the deepest ones kept): bounds the table's growth per request
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions")


@dataclass(frozen=True)
class PrefixKey:
    digest: str
    n_chars: int
    sticky: bool


def routing_keys(path: str, body: bytes) -> tuple[PrefixKey, ...]:
    """The request's prefix keys, shortest first; none for other endpoints or a body that is not what they take
    (the replica answers it with the usual 400: routing never fails a request)."""
    if path not in CHAT_PATHS + COMPLETION_PATHS:
        return ()
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(fields, dict):
        return ()
    if path in CHAT_PATHS:
        return chat_keys(fields.get("messages"))
    return prompt_keys(fields.get("prompt"))


def chat_keys(messages: object) -> tuple[PrefixKey, ...]:
    if not isinstance(messages, list):
        return ()
    keys, digest, n_chars, conversation = [], hashlib.blake2b(digest_size=16), 0, False
    for message in messages:
        if not isinstance(message, dict):
            return ()
        role, text = str(message.get("role")), _text(message.get("content"))
        digest.update(json.dumps([role, text, message.get("tool_calls")], ensure_ascii=False).encode())
        n_chars += len(text)
        conversation = conversation or role not in ("system", "developer")
        keys.append(PrefixKey(digest.copy().hexdigest(), n_chars, conversation or n_chars >= LONG_PREFIX_CHARS))
    return tuple(keys[-MAX_KEYS:])


def prompt_keys(prompt: object) -> tuple[PrefixKey, ...]:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, list):  # token ids: their decimal text is as good a prefix as any
        prompt = " ".join(map(str, prompt))
    if not isinstance(prompt, str):
        return ()
    keys, digest = [], hashlib.blake2b(digest_size=16)
    ends = [*range(BLOCK_CHARS, len(prompt), BLOCK_CHARS), len(prompt)]
    start = 0
    for end in ends:
        digest.update(prompt[start:end].encode("utf-8", "surrogatepass"))
        keys.append(PrefixKey(digest.copy().hexdigest(), end, True))
        start = end
    return tuple(keys[-MAX_KEYS:])


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and isinstance(part.get("text"), str))
    return ""


class PrefixTable:
    """Which replica served each prefix key last: an LRU of at most `max_keys` keys."""

    def __init__(self, n_slots: int = 4, max_keys: int = 200_000) -> None:
        self.n_slots = n_slots  # a replica with this many requests has every slot busy
        self.max_keys = max_keys
        self.replica_of: OrderedDict[str, str] = OrderedDict()

    def choose(self, keys: Sequence[PrefixKey], load: dict[str, int]) -> list[str]:
        """Replica ids (keys of `load`: requests each has now) best first: the one that last served the
        request's longest sticky key unless overloaded, then the rest, least busy first."""
        if not load:
            return []
        by_load = sorted(load, key=lambda replica: (load[replica], _spread(keys, replica)))
        for key in reversed(keys):
            replica = self.replica_of.get(key.digest)
            if key.sticky and replica in load:
                self.replica_of.move_to_end(key.digest)
                if not self.overloaded(replica, load):
                    return [replica] + [r for r in by_load if r != replica]
                break
        return by_load

    def overloaded(self, replica: str, load: dict[str, int]) -> bool:
        """Every slot busy while another replica has fewer requests: waiting there costs more than a cache miss."""
        return load[replica] >= self.n_slots and load[replica] > min(load.values())

    def record(self, keys: Sequence[PrefixKey], replica: str) -> None:
        for key in keys:
            self.replica_of[key.digest] = replica
            self.replica_of.move_to_end(key.digest)
        while len(self.replica_of) > self.max_keys:
            self.replica_of.popitem(last=False)

    def forget(self, replica: str) -> None:
        """A replica is gone, and its cache with it."""
        for digest in [d for d, r in self.replica_of.items() if r == replica]:
            del self.replica_of[digest]


def _spread(keys: Sequence[PrefixKey], replica: str) -> str:
    """Among equally busy replicas, a new prefix's preference (rendezvous hashing), so that different prompts
    spread over idle replicas instead of all taking the first (requests without a prefix: at random)."""
    seed = keys[0].digest if keys else str(random.random())
    return hashlib.blake2b(f"{seed}/{replica}".encode(), digest_size=8).hexdigest()
