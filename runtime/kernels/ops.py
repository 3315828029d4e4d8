"""Numba versions of the transformer's small steps, for decode where numpy's per-call overhead (~5-20 us
per operation, dozens per layer) would cost more than the arithmetic. Their numpy twins are the reference
forward pass's functions (`tests/reference_model.py`); `tests/test_ops.py` compares them.

Every CPU tier computes the same bits: no reassociation or fused multiply-add (fastmath only for the
NaN/infinity/signed-zero assumptions, which do not change finite results), and the long dot products go
through `simd.dot_f32`, whose vectorized order is fixed by hand.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .half import f32_row
from .simd import dot_f32

_OPTS = dict(fastmath={"nnan", "ninf", "nsz"}, cache=True, nogil=True)


@njit(inline="always")
def vector_dot(a, b):
    """sum(a * b) for 1-d float32 arrays: `simd.dot_f32` (the same bits on every CPU tier) over the largest
    multiple of 16 elements, then any tail in turn."""
    n = a.shape[0] - a.shape[0] % 16
    total = dot_f32(a, b, n)
    for j in range(n, a.shape[0]):
        total += a[j] * b[j]
    return total


@njit(parallel=True, **_OPTS)
def dot_rows(w, x, out, col0):
    """out[t, col0 + r] = sum(w[r] * x[t]) for each row r of w (m, k) and row t of x (n, k): the float
    matrix product of formats without an integer kernel. Each output is one `vector_dot`, so it depends
    only on its two rows, never on n, m, the threads or the CPU tier."""
    for r in prange(w.shape[0]):
        for t in range(x.shape[0]):
            out[t, col0 + r] = vector_dot(w[r], x[t])


@njit(**_OPTS)
def rms_norm_rows(x, weight, eps, out):
    """out[i] = x[i] / rms(x[i]) * weight for each row of x (n, d)."""
    for i in range(x.shape[0]):
        total = vector_dot(x[i], x[i])
        inv = np.float32(1.0) / np.sqrt(total / np.float32(x.shape[1]) + np.float32(eps))
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * inv * weight[j]


@njit(**_OPTS)
def rope_rows(x, cos, sin, pos0, n_rot, neox):
    """Rotate x (n, n_heads, head_dim) in place; token i at position pos0 + i (see model/ops.py Rope)."""
    half = n_rot // 2
    for i in range(x.shape[0]):
        for h in range(x.shape[1]):
            for j in range(half):
                a_at, b_at = (j, j + half) if neox else (2 * j, 2 * j + 1)
                c, s = cos[pos0 + i, j], sin[pos0 + i, j]
                a, b = x[i, h, a_at], x[i, h, b_at]
                x[i, h, a_at] = a * c - b * s
                x[i, h, b_at] = a * s + b * c


@njit(**_OPTS)
def gated_activation(gate, up, gelu, out):
    """out = act(gate) * up, act = gelu_tanh if gelu else silu; all (n,) float32."""
    k = np.float32(math.sqrt(2.0 / math.pi))
    for i in range(gate.shape[0]):
        g = gate[i]
        if gelu:
            a = np.float32(0.5) * g * (np.float32(1.0) + np.tanh(k * (g + np.float32(0.044715) * g * g * g)))
        else:
            a = g / (np.float32(1.0) + np.exp(-g))
        out[i] = a * up[i]


@njit(parallel=True, **_OPTS)
def attention_rows(q, keys, values, pos0, key_pos0, window, scale, softcap, out):
    """Causal attention, one (query, head) pair per task: q (n, n_head, hd) at positions pos0..;
    keys/values (s, n_kv, hd) at positions key_pos0.., float32 or IEEE halves as uint16 (an f16 KV cache
    read in place: each row is widened as it is used, exactly, so both give the same bits); out (n, n_head,
    hd). softcap > 0: each scaled score s becomes softcap * tanh(s / softcap) (gemma2's attention-logit
    soft-capping).

    Query p sees the keys at positions max(key_pos0, p - window + 1)..p (no window: from key_pos0). Each
    row is computed by the same loop, in the same order, however many queries share the call, so a
    prompt's keys and values do not depend on how it was split into chunks (or what was cached before).
    """
    n, n_head, head_dim = q.shape
    n_kv = keys.shape[1]
    group = n_head // n_kv
    for task in prange(n * n_head):
        i, h = task // n_head, task % n_head
        kv = h // group
        pos = pos0 + i
        first = max(key_pos0, pos - window + 1) if window > 0 else key_pos0
        skip = first - key_pos0  # keys before the window
        s = pos - first + 1
        scores = np.empty(s, np.float32)
        row = np.empty(head_dim, np.float32)  # a key or value row widened from halves (unused for float32)
        best = np.float32(-np.inf)
        for t in range(s):
            score = vector_dot(q[i, h], f32_row(keys[skip + t, kv], row)) * scale
            if softcap > 0:
                score = softcap * np.tanh(score / softcap)
            scores[t] = score
            best = max(best, score)
        total = np.float32(0.0)
        for t in range(s):
            scores[t] = np.exp(scores[t] - best)
            total += scores[t]
        inv = np.float32(1.0) / total
        acc = np.zeros(head_dim, np.float32)
        for t in range(s):
            p = scores[t] * inv
            v = f32_row(values[skip + t, kv], row)
            for j in range(head_dim):
                acc[j] += p * v[j]
        for j in range(head_dim):
            out[i, h, j] = acc[j]
