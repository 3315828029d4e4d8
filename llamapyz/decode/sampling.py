"""Samplers: plain functions on a logits vector, with an explicit seeded RNG.

The chain follows llama.cpp's default order: logit bias -> repetition penalties -> top-k -> top-p ->
min-p -> temperature -> draw. Temperature 0 is greedy (argmax after bias and penalties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import require_finite


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1: off
    min_p: float = 0.0  # drop tokens less likely than min_p * the best one's probability; 0: off
    repeat_penalty: float = 1.0  # divide positive (multiply negative) logits of recent tokens; 1: off
    presence_penalty: float = 0.0  # subtract from the logit of every recent token
    frequency_penalty: float = 0.0  # subtract times the token's count among recent tokens
    repeat_last_n: int = 64  # how many recent tokens the penalties look at; -1: all
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        numbers = (self.temperature, self.top_p, self.min_p, self.repeat_penalty, self.presence_penalty,
                   self.frequency_penalty, *self.logit_bias.values())
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("sampling parameters and logit biases must be finite numbers")
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.repeat_last_n >= -1, "repeat_last_n must be >= -1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def penalized(self) -> bool:
        """Whether any repetition penalty is on (else `apply_penalties` changes nothing)."""
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def apply_logit_bias(logits: np.ndarray, bias: dict[int, float]) -> None:
    for token, value in bias.items():
        if 0 <= token < len(logits):
            logits[token] += value


def apply_penalties(logits: np.ndarray, recent: Sequence[int], params: SamplingParams) -> None:
    """Repetition, presence and frequency penalties over the recent tokens, in place."""
    if not len(recent):
        return
    tokens, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    values = logits[tokens]
    if params.repeat_penalty != 1.0:
        with np.errstate(divide="ignore", over="ignore"):  # a tiny penalty: inf here, saturated below
            values = np.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
    values = values - counts * params.frequency_penalty - params.presence_penalty
    logits[tokens] = np.clip(values, -FLOAT32_MAX, FLOAT32_MAX)  # an extreme penalty saturates, never inf/NaN


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


FLOAT32_MAX = float(np.finfo(np.float32).max)
NEGLIGIBLE_LOGIT_GAP = 30.0  # tokens this far below the best one (p < 1e-13 of it) never matter to top-p/min-p


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and their probabilities left after top-k, top-p and min-p, best first (untempered)."""
    if 0 < params.top_k < len(logits):
        ids = np.argpartition(-logits, params.top_k - 1)[:params.top_k]
    else:  # sorting a 262k vocabulary costs ~15 ms a token; the negligible tail need not be sorted
        ids = np.flatnonzero(logits >= logits.max() - NEGLIGIBLE_LOGIT_GAP)
    if not len(ids) or np.isnan(logits[ids]).any():  # NaN logits (`Generation.step` refuses them before)
        require_finite(logits)
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    probs = np.exp(log_softmax(logits[ids]))
    if params.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        ids, probs = ids[:keep], probs[:keep]
    if params.min_p > 0.0:
        keep = probs >= params.min_p * probs[0]
        ids, probs = ids[keep], probs[keep]
    return ids, probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token from processed logits (bias and penalties already applied)."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    ids, _ = candidates(logits, params)
    # the best logit first subtracted, so a tiny temperature leaves 0 for the best and -inf (never NaN) for
    # the rest: it samples greedily, as llama.cpp does
    scaled = (logits[ids].astype(np.float64) - logits[ids[0]]) / params.temperature
    tempered = np.exp(log_softmax(scaled))
    return int(ids[rng.choice(len(ids), p=tempered / tempered.sum())])
