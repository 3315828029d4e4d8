"""Token generation as a generator: sample, yield, repeat; text released safely for streaming.

Each step yields a `Step` as soon as its token is sampled. `Step.text` is the text that became final with
that token: never half a UTF-8 character (StreamDecoder), and never a piece that might turn out to start a
stop string; a matched stop string and everything after it is never released.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import require_finite
from .sampling import SamplingParams, apply_logit_bias, apply_penalties, log_softmax, sample

if TYPE_CHECKING:
    from ..model.model import Model
    from ..tokenizer import Tokenizer
    from .constraint import Constraint, LazyConstraint
    from .grammar_limits import GrammarError


@dataclass
class Step:
    token: int
    text: str  # text released by this step (may be "" while held back)
    logprob: float | None = None  # log-probability of `token`, when logprobs were asked for
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely alternatives, best first
    finish_reason: str | None = None  # on the last step: "stop" (EOG or stop string) or "length"


class StopMatcher:
    """Holds back text until it cannot be the start of a stop string.

    `block` (opening, closing): each block of released text from an opening marker to its closing marker
    becomes a stop string too, so the same block again ends the text before it (a tool call the model
    repeats word for word, as small models do when calls are required, until the token limit cuts one)."""

    def __init__(self, stop: Sequence[str], block: tuple[str, str] | None = None) -> None:
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.matched: str | None = None  # the stop string found, once one is (the first in the text)
        self.block = block
        self.released = ""  # with a block: the text released since the last complete block

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; returns (text safe to release, whether a stop string was found)."""
        self.pending += text
        found = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stop) if i >= 0]
        if found:
            at, self.matched = min(found, key=lambda hit: hit[0])
            released, self.pending = self.pending[:at], ""
            return released, True
        hold = max((prefix_overlap(self.pending, s) for s in self.stop), default=0)
        released = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(released):]
        if self.block is not None:
            self._learn_blocks(released)
        return released, False

    def _learn_blocks(self, released: str) -> None:
        opening, closing = self.block  # type: ignore[misc]
        self.released += released
        while (start := self.released.find(opening)) >= 0 and (
                end := self.released.find(closing, start + len(opening))) >= 0:
            end += len(closing)
            if self.released[start:end] not in self.stop:
                self.stop.append(self.released[start:end])
            self.released = self.released[end:]

    def flush(self) -> str:
        released, self.pending = self.pending, ""
        return released


def prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (a stop string, a tool call's
    opening): what must be held back until the next text tells whether the marker follows."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class Generation:
    """The sampling side of one request: turns the logits after each token into a `Step`.

    Holds what a request needs between steps (the token history for penalties, the random state, the
    streaming detokenizer, the stop-string matcher, an optional output constraint), so the same object
    serves `Model.generate` and the server, where many of them share one batched forward step.
    """

    def __init__(self, tokenizer: Tokenizer, prompt: Sequence[int], max_tokens: int, params: SamplingParams,
                 n_ctx: int, stop: Sequence[str] = (), logprobs: int | None = None,
                 constraint: Constraint | LazyConstraint | None = None,
                 keep_text: frozenset[int] = frozenset(), repeat_block: tuple[str, str] | None = None) -> None:
        self.params = params
        self.tokenizer = tokenizer
        self.keep_text = keep_text  # control tokens whose text is output (a tool call's markers)
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        self.logprobs = logprobs
        self.constraint = constraint
        self.rng = np.random.default_rng(params.seed)
        self.history = list(prompt)
        self.n_prompt = len(self.history)
        self.decoder = tokenizer.stream()
        self.matcher = StopMatcher(stop, repeat_block)  # repeat_block: a block said again ends the reply
        self.eog = tokenizer.eog_ids
        self.finish_reason: str | None = None

    @property
    def n_generated(self) -> int:
        return len(self.history) - self.n_prompt

    @property
    def ready(self) -> bool:
        """Whether `step` can run without waiting: the constraint's next mask, computed on a worker while the
        forward pass ran, is done (always, without a constraint)."""
        return self.constraint is None or self.constraint.ready

    def overdue(self, now: float) -> GrammarError | None:
        """Why the request must end, if its constraint's mask has taken longer than its budget (`step` would
        fail); else None."""
        return self.constraint.overdue(now) if self.constraint is not None else None

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from another thread) once `ready` may have turned true."""
        if self.constraint is not None:
            self.constraint.when_ready(callback)

    def step(self, logits: np.ndarray) -> Step:
        """Sample the next token from logits (n_vocab,) float32, which it changes (bias, penalties, the mask:
        the caller's row is not copied); the returned Step's finish_reason ends the request."""
        params = self.params
        require_finite(logits)  # before bias, penalties and masks, which may set -inf on purpose
        apply_logit_bias(logits, params.logit_bias)
        if params.penalized and params.repeat_last_n:
            recent = self.history[-params.repeat_last_n:] if params.repeat_last_n > 0 else self.history
            apply_penalties(logits, recent, params)
        if self.constraint is not None:  # only tokens that keep the output in its grammar
            self.constraint.mask(logits)
        token = sample(logits, params, self.rng)
        if self.constraint is not None:
            self.constraint.advance(token)
        step = Step(token, "")
        if self.logprobs is not None:
            logp = log_softmax(logits)
            step.logprob = float(logp[token])
            k = self.logprobs
            best = np.argpartition(-logp, k)[:k] if 0 < k < len(logp) else []
            step.top_logprobs = [(int(t), float(logp[t])) for t in sorted(best, key=lambda t: -logp[t])]
        self.history.append(token)
        if token in self.eog:
            step.text, step.finish_reason = self.matcher.flush() + self.decoder.flush(), "stop"
        else:
            step.text, stopped = self.matcher.feed(self._text(token))
            if stopped:
                step.finish_reason = "stop"
            elif self.constraint is not None and self.constraint.complete:  # the grammar can take no more
                step.text += self._flush()
                step.finish_reason = "stop"
            elif self.n_generated >= self.max_tokens or len(self.history) >= self.n_ctx:
                step.text += self._flush()
                step.finish_reason = "length"
        self.finish_reason = step.finish_reason
        if self.constraint is not None and not step.finish_reason:
            self.constraint.prepare()  # the next mask, on a worker, while the next forward pass runs
        return step

    def _flush(self) -> str:
        """The text held back (half a character, a possible start of a stop string), at the end."""
        released, stopped = self.matcher.feed(self.decoder.flush())
        return released if stopped else released + self.matcher.flush()

    def _text(self, token: int) -> str:
        if token in self.keep_text:
            return self.decoder.flush() + self.tokenizer.token_bytes(token, special=True).decode("utf-8", "replace")
        return self.decoder.feed(token)


def generate(model: Model, tokens: Sequence[int], max_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = None, stop: Sequence[str] = (), logprobs: int | None = None,
             **sampling: Any) -> Iterator[Step]:
    """Continue `tokens` with `model` (in its own context, reusing the prefix it shares with the previous
    call): a `Step` (.token, .text, .finish_reason, ...) per generated token, as soon as it is sampled.

        for step in generate(model, model.tokenize("The capital of France is"), max_tokens=16):
            print(step.text, end="", flush=True)

    Greedy unless temperature > 0. Sampling options (see SamplingParams): top_k, top_p, min_p,
    repeat_penalty, presence_penalty, frequency_penalty, repeat_last_n, logit_bias. Stops at an
    end-of-generation token, a stop string (never included in the text), max_tokens, or a full context.
    """
    params = SamplingParams(temperature=temperature, seed=seed, **sampling)
    tokens = list(tokens)
    generation = Generation(model.tokenizer, tokens, max_tokens, params, model.n_ctx, stop, logprobs)
    if max_tokens <= 0:
        return
    logits = model.prefill(list(tokens))
    while True:
        step = generation.step(logits)
        yield step
        if step.finish_reason:
            return
        logits = model.decode(step.token)
