"""Mixture-of-experts feed-forward (Mixtral-style `llama`, `qwen3moe`, `qwen2moe`, `gpt-oss`), in llama.cpp's order.

Per token: router logits (+ the router's bias) -> softmax over all experts -> the `n_expert_used` most
probable experts -> their probabilities renormalized to sum to 1 unless the family says not (qwen2moe);
or, gating "softmax_weight" (gpt-oss), the n_used largest logits and a softmax over them -> times
`expert_weights_scale` when the file sets one -> each chosen expert's gated FFN (+ its biases), weighted,
summed in rank order (most probable first) -> plus the shared expert's FFN, times sigmoid of its gate's
logit when it has one (qwen2moe).

Only the chosen experts run. Rows are grouped by expert, so each expert's weights are read once per call
(decode: one token of each sequence; prefill: a chunk). A row's result does not depend on the other rows:
its experts, weights and sum order are its own, and the projections keep the forward pass's batch
invariance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..kernels.linear import QuantMatrix
from ..kernels.steps import dot_rows
from .ops import gated_ffn_input
from .recipe import Moe
from .weights import Experts

Project = Callable[..., list[np.ndarray]]  # (x, *matrices) -> [x @ m.T + bias for each m]
MIN_WEIGHT_SUM = 6.103515625e-5  # llama.cpp clamps the sum it divides by (the smallest normal f16)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Each row's softmax (n, k), its sum added in a fixed order, whatever the number of rows."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    total = exp[:, 0].copy()
    for e in range(1, exp.shape[1]):
        total += exp[:, e]
    return exp / total[:, None]


def route(logits: np.ndarray, n_used: int, weights_scale: float = 0.0, gating: str = "softmax",
          normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (n, n_expert) -> chosen experts (n, n_used), best first, and their weights (n, n_used)
    (the `Moe` step's gating, renormalization and scale)."""
    logits = logits.astype(np.float32, copy=False)
    if gating == "softmax_weight":  # the top logits, then a softmax over them
        chosen = np.argsort(-logits, axis=1, kind="stable")[:, :n_used]
        weights = softmax(np.take_along_axis(logits, chosen, axis=1))
    else:
        probs = softmax(logits)
        chosen = np.argsort(-probs, axis=1, kind="stable")[:, :n_used]
        weights = np.take_along_axis(probs, chosen, axis=1)
        if normalize:
            weight_sum = weights[:, 0].copy()
            for r in range(1, n_used):
                weight_sum += weights[:, r]
            weights /= np.maximum(weight_sum, np.float32(MIN_WEIGHT_SUM))[:, None]
    if weights_scale not in (0.0, 1.0):
        weights *= np.float32(weights_scale)
    return chosen, weights


def moe_ffn(h: np.ndarray, experts: Experts, step: Moe, project: Project) -> np.ndarray:
    """h (n, n_embd), normed -> the weighted sum of each row's chosen experts' FFN outputs (n, n_embd): the
    recipe's `moe` step (its activation, top-k and weights scale)."""
    (logits,) = project(h, experts.router)
    chosen, weights = route(logits, step.n_used, step.weights_scale, step.gating, step.normalize)
    parts = np.zeros((step.n_used, h.shape[0], h.shape[1]), np.float32)  # per rank
    for e in np.unique(chosen):
        rows, ranks = np.nonzero(chosen == e)
        y = expert_ffn(h[rows], experts.gate[e], experts.up[e], experts.down[e], step.activation, project)
        parts[ranks, rows] = y * weights[rows, ranks][:, None]
    out = parts[0]
    for r in range(1, step.n_used):
        out += parts[r]
    if experts.shared is not None:
        shared = expert_ffn(h, *experts.shared, step.activation, project)
        if experts.shared_gate is not None:  # sigmoid of the gate's logit, a fixed-order dot per row
            gate = np.empty((h.shape[0], 1), np.float32)
            dot_rows(experts.shared_gate[None, :], np.ascontiguousarray(h, np.float32), gate, 0)
            shared *= np.float32(1) / (np.float32(1) + np.exp(-gate))
        out += shared
    return out


def expert_ffn(x: np.ndarray, gate: QuantMatrix, up: QuantMatrix, down: QuantMatrix, activation: str,
               project: Project) -> np.ndarray:
    g, u = project(x, gate, up)
    (y,) = project(gated_ffn_input(g, u, activation), down)
    return y
