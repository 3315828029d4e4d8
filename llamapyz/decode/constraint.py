"""Constrained decoding: the output must match a grammar (a JSON Schema, a Lark/GBNF grammar, "any JSON
object"), enforced with llguidance, the grammar engine llama.cpp and others use.

    grammar = Grammar.json_schema({"type": "object", ...})        # or .lark(text), .json_object()
    constraint = grammar.constraint(tokenizer)                     # one per request
    constraint.mask(logits)                                        # tokens that break the grammar -> -inf
    constraint.advance(token)

Before each token, llguidance computes the set of tokens that can continue the grammar (a bitmask over the
vocabulary, ~0.05 ms for SmolLM2's 49k tokens and ~0.15 ms for Gemma's 262k on one core); the sampler
then only ever sees allowed tokens, so the output always parses. End-of-generation is allowed exactly when
the grammar accepts; once it can take nothing more, generation stops (`Constraint.complete`).

llguidance needs the model's tokens as bytes. Building its tokenizer walks the whole vocabulary (0.5-2 s),
so it is built once per model, on the first constrained request (`llg_tokenizer`), under a lock.

What a grammar may cost, and the threads llguidance's work runs on (compiling, and each token's mask, off
the engine thread), are `grammar_limits`' concern: no request's grammar can crash or stall the process.

JSON is written compactly (no free whitespace between tokens: `{"a": 1, "b": [2, 3]}`), so a small model
cannot loop on newlines; strings and numbers are free as the schema allows.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np

from ..tokenizer import TokenType
from . import grammar_limits as limits
from .grammar_limits import WORKERS, GrammarError, Timed, check_grammar, check_schema

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


# JSON as the output format: compact separators, no free whitespace (see the module's docstring); also
# what a Lark grammar's %json rules take as "x-guidance" (tools.py).
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_LIMITS = llguidance.LLParserLimits()  # llguidance's defaults bound grammar size and the work per token

_tokenizers: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


class Grammar:
    """A compiled-to-llguidance grammar definition (text); `constraint` starts one request's matcher."""

    def __init__(self, definition: str, description: str) -> None:
        self.definition = definition
        self.description = description

    @classmethod
    def json_schema(cls, schema: Any) -> Grammar:
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
        check_schema(schema)
        try:
            definition = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_FORMAT)
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"invalid JSON schema: {exc}") from None
        return cls(definition, "JSON schema")

    @classmethod
    def json_object(cls) -> Grammar:
        return cls.json_schema({"type": "object"})

    @classmethod
    def lark(cls, text: str) -> Grammar:
        """A Lark grammar (llguidance's dialect) or a llama.cpp GBNF grammar (converted to Lark, on a worker)."""
        check_grammar(text)
        return cls(WORKERS.run(cls._lark_definition, text, what="converting the grammar"), "grammar")

    @classmethod
    def around_schema(cls, text: str, schema: Any) -> Grammar:
        """Our own Lark grammar `text` embedding `schema` (`%json`): the schema's limits apply, not the text's."""
        check_schema(schema)
        return cls(cls._lark_definition(text), "grammar")

    @staticmethod
    def _lark_definition(text: str) -> str:
        try:
            return llguidance.grammar_from("grammar", text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise GrammarError(str(exc)) from None

    def constraint(self, tokenizer: Tokenizer) -> Constraint:
        """A new matcher at the grammar's start, its first mask computed: compiled on a worker within
        COMPILE_TIMEOUT_S, and refused if that mask took over MASK_BUDGET_S (never call from the engine)."""
        lltokenizer = llg_tokenizer(tokenizer)
        constraint = WORKERS.run(Constraint, lltokenizer, self.definition, tokenizer.n_vocab,
                                 timeout_s=limits.COMPILE_TIMEOUT_S)
        constraint.prepare()
        constraint.wait()
        return constraint


class Constraint:
    """One request's place in its grammar. Each token's mask is computed on a worker: `prepare` starts it
    (right after a token is sampled, so it overlaps the next forward pass), `ready` says whether it is done,
    `mask` applies it (waiting for it if need be)."""

    def __init__(self, lltokenizer: llguidance.LLTokenizer, definition: str, n_vocab: int) -> None:
        self.matcher = llguidance.LLMatcher(lltokenizer, definition, log_level=0, limits=_LIMITS)
        if self.matcher.is_error():
            raise GrammarError(f"the grammar does not compile: {self.matcher.get_error()}")
        self.n_vocab = n_vocab
        self.bitmask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)  # bit t of the mask: token t allowed
        self.next: Timed[None] | None = None  # the next token's mask, being computed

    @property
    def complete(self) -> bool:
        """The grammar can take nothing more (a closed JSON object, the end of a grammar's language)."""
        return self.matcher.is_stopped()

    @property
    def ready(self) -> bool:
        """Whether `mask` can run without waiting."""
        return self.next is not None and self.next.future.done()

    def overdue(self, now: float) -> GrammarError | None:
        """Why the request must end, if the mask being computed has taken longer than MASK_BUDGET_S (or waited
        for a worker longer than COMPILE_TIMEOUT_S); else None."""
        timed = self.next
        if timed is None or timed.future.done():
            return None
        if timed.ran_s(now) > limits.MASK_BUDGET_S:
            return too_costly()
        if not timed.started and now - timed.submitted > limits.COMPILE_TIMEOUT_S:
            return GrammarError(f"no grammar worker was free for {limits.COMPILE_TIMEOUT_S:g} s")
        return None

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on a worker) once the mask being computed is done."""
        if self.next is not None:
            self.next.future.add_done_callback(lambda _: callback())

    def prepare(self) -> None:
        """Start computing the next token's mask on a worker."""
        if self.next is None:
            self.next = WORKERS.submit(self._compute)

    def wait(self) -> None:
        """Wait for the mask `prepare` started (starting it if need be); a GrammarError if it failed, or as soon
        as it has run longer than MASK_BUDGET_S (the worker finishes it alone)."""
        self.prepare()
        timed = self.next
        while True:
            try:
                timed.future.result(timeout=limits.MASK_BUDGET_S / 4)
            except FutureTimeout:
                error = self.overdue(time.perf_counter())
                if error is not None:
                    raise error from None
                continue
            if timed.ran_s() > limits.MASK_BUDGET_S:
                raise too_costly()
            return

    def allowed(self) -> np.ndarray:
        """(n_vocab,) bool: the tokens that can come next."""
        self.wait()
        return self._unpacked()

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of tokens that cannot come next to -inf, in place. Between JSON's strings only a
        few tokens are allowed: then only their words of the bitmask are unpacked (0.1 instead of 0.3 ms for
        Gemma's 262k tokens); otherwise the whole mask is."""
        self.wait()
        words = np.flatnonzero(self.bitmask)
        if len(words) == 0:
            raise GrammarError("no token can continue the constrained output")
        if len(words) > len(self.bitmask) // 8:
            np.copyto(logits, -np.inf, where=~self._unpacked())
            return
        bits = np.unpackbits(self.bitmask[words].view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        tokens = (words[:, None] * 32 + np.arange(32))[bits.view(bool)]
        tokens = tokens[tokens < self.n_vocab]
        kept = logits[tokens]
        logits.fill(-np.inf)
        logits[tokens] = kept

    def _compute(self) -> None:
        """On a worker: the mask for the matcher's state now."""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        self._check()

    def _unpacked(self) -> np.ndarray:
        return np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[:self.n_vocab].view(bool)

    def advance(self, token: int) -> None:
        """Take the sampled token."""
        if self.next is not None:  # a worker may still be computing a mask on the matcher: let it finish
            self.next.future.exception()
            self.next = None
        if not self.matcher.consume_token(token):
            self._check()
            raise GrammarError(f"token {token} does not continue the constrained output")

    def _check(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(f"constrained decoding failed: {self.matcher.get_error()}")


def too_costly() -> GrammarError:
    return GrammarError(f"the constraint is too costly: computing one token's allowed set took longer than "
                        f"{limits.MASK_BUDGET_S * 1e3:.0f} ms")


class LazyConstraint:
    """A constraint that starts once the output contains `trigger` (llama.cpp's lazy grammars): before,
    the model writes freely; from the trigger on, the output must follow `grammar`, which begins right
    after the trigger. `anchored`: only a trigger at the very start of the output (after whitespace) counts.
    `special`: control tokens whose text is output text (a trigger may be one, e.g. Mistral's
    [TOOL_CALLS]). The grammar is compiled here, with the request, not on the engine thread when the
    trigger comes."""

    def __init__(self, grammar: Grammar, trigger: str, tokenizer: Tokenizer, special: frozenset[int] = frozenset(),
                 anchored: bool = False) -> None:
        self.trigger, self.anchored = trigger.encode(), anchored
        self.tokenizer, self.special = tokenizer, special
        self.compiled = grammar.constraint(tokenizer)  # what the trigger activates
        self.seen = b""  # the output so far (unanchored: only its last len(trigger) - 1 bytes)
        self.active: Constraint | None = None
        self.off = False  # anchored and the output started otherwise: it stays free

    @property
    def complete(self) -> bool:
        return self.active is not None and self.active.complete

    @property
    def ready(self) -> bool:
        return self.active is None or self.active.ready

    def overdue(self, now: float) -> GrammarError | None:
        return self.active.overdue(now) if self.active is not None else None

    def when_ready(self, callback: Callable[[], None]) -> None:
        if self.active is not None:
            self.active.when_ready(callback)

    def prepare(self) -> None:
        if self.active is not None:
            self.active.prepare()

    def mask(self, logits: np.ndarray) -> None:
        if self.active is not None:
            self.active.mask(logits)

    def advance(self, token: int) -> None:
        if self.active is not None:
            self.active.advance(token)
            return
        if self.off:
            return
        self.seen += self.tokenizer.token_bytes(token, special=token in self.special)
        head = self.seen.lstrip() if self.anchored else self.seen
        at = head.find(self.trigger)
        if at < 0 or (self.anchored and at > 0):
            if self.anchored and head and not self.trigger.startswith(head[:len(self.trigger)]):
                self.off = True
            elif not self.anchored:
                self.seen = self.seen[max(0, len(self.seen) - len(self.trigger) + 1):]
            return
        rest = head[at + len(self.trigger):]
        constraint = self.compiled
        if self.anchored:
            rest = self.trigger + rest  # the trigger ("{") is the grammar's own first byte
        try:  # what the trigger's token wrote past it, in whatever tokens: llguidance reads bytes
            for piece in self.tokenizer.encode(rest.decode("utf-8", "surrogateescape"), add_special=False,
                                               parse_special=False):
                constraint.advance(piece)
        except GrammarError:  # the model already left the grammar in that very token: leave it free
            self.off = True
            return
        self.active = constraint


def llg_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of a tokenizer, built once per tokenizer (thread-safe)."""
    with _tokenizers_lock:
        built = _tokenizers.get(tokenizer)
        if built is None:
            built = _tokenizers[tokenizer] = _build(tokenizer)
        return built


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: each token's bytes (control tokens as b"\\xff" + their
    text, llguidance's marker for "special"), the end tokens, and a tokenize function."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocab = tokenizer.vocab
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else min(tokenizer.eog_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        types = vocab.types.tolist()
        special = (int(TokenType.CONTROL), int(TokenType.UNUSED), int(TokenType.UNDEFINED))
        self.tokens = [b"\xff" + vocab.tokens[t].encode("utf-8", "surrogateescape") if types[t] in special
                       else tokenizer.token_bytes(t) for t in range(tokenizer.n_vocab)]
        self.special_token_ids = [t for t in range(tokenizer.n_vocab) if types[t] in special]
        self._tokenizer = tokenizer

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        return self._tokenizer.encode(text, add_special=False, parse_special=False)


def _build(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    wrapper = llguidance.TokenizerWrapper(_Vocabulary(tokenizer))
    return llguidance.LLTokenizer(wrapper, n_vocab=tokenizer.n_vocab, eos_token=sorted(tokenizer.eog_ids))
