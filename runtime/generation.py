"""Token generation as a generator: sample, yield, repeat; text released safely for streaming.

Each step yields a `Step` as soon as its token is sampled. `Step.text` is the text that became final with
that token: never half a UTF-8 character (StreamDecoder), and never a piece that might turn out to start a
stop string; a matched stop string and everything after it is never released.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .sampling import SamplingParams, apply_logit_bias, apply_penalties, log_softmax, sample

if TYPE_CHECKING:
    from .model.model import Model


@dataclass
class Step:
    token: int
    text: str  # text released by this step (may be "" while held back)
    logprob: float | None = None  # log-probability of `token`, when logprobs were asked for
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely alternatives, best first
    finish_reason: str | None = None  # on the last step: "stop" (EOG or stop string) or "length"


class StopMatcher:
    """Holds back text until it cannot be the start of a stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; returns (text safe to release, whether a stop string was found)."""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if found:
            released, self.pending = self.pending[:min(found)], ""
            return released, True
        hold = max((_overlap(self.pending, s) for s in self.stop), default=0)
        released = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(released):]
        return released, False

    def flush(self) -> str:
        released, self.pending = self.pending, ""
        return released


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of stop."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0


def generate(model: Model, tokens: Sequence[int], max_tokens: int, params: SamplingParams,
             stop: Sequence[str] = (), logprobs: int | None = None) -> Iterator[Step]:
    """Continue `tokens`; see `Model.generate`."""
    rng = np.random.default_rng(params.seed)
    history = list(tokens)
    decoder = model.tokenizer.stream()
    matcher = StopMatcher(stop)
    eog = set(model.tokenizer.eog_ids)
    logits = model.prefill(history)
    for i in range(max_tokens):
        logits = logits.astype(np.float32, copy=True)
        apply_logit_bias(logits, params.logit_bias)
        recent = history if params.repeat_last_n == -1 else history[len(history) - params.repeat_last_n:]
        apply_penalties(logits, recent if params.repeat_last_n else [], params)
        token = sample(logits, params, rng)
        step = Step(token, "")
        if logprobs is not None:
            logp = log_softmax(logits)
            step.logprob = float(logp[token])
            best = np.argpartition(-logp, logprobs)[:logprobs] if 0 < logprobs < len(logp) else []
            best = sorted(best, key=lambda t: -logp[t])
            step.top_logprobs = [(int(t), float(logp[t])) for t in best]
        history.append(token)
        if token in eog:
            step.text, step.finish_reason = matcher.flush() + decoder.flush(), "stop"
            yield step
            return
        step.text, stopped = matcher.feed(decoder.feed(token))
        if stopped:
            step.finish_reason = "stop"
            yield step
            return
        last = i == max_tokens - 1 or len(history) >= model.n_ctx
        if last:
            step.text += matcher.feed(decoder.flush())[0] + matcher.flush()
            step.finish_reason = "length"
            yield step
            return
        yield step
        logits = model.decode(token)
