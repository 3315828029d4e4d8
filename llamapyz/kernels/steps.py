"""Numba versions of the transformer's small steps, for decode where numpy's per-call overhead (~5-20 us
per operation, dozens per layer) would cost more than the arithmetic. Their numpy twins are the reference
forward pass's functions (`model/reference.py`); `tests/test_steps.py` compares them.

Every CPU tier computes the same bits: no reassociation or fused multiply-add (fastmath only for the
NaN/infinity/signed-zero assumptions, which do not change finite results), and the long dot products go
through `simd.dot_f32`, whose vectorized order is fixed by hand.
"""

from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange

from . import half, scalar

# error_model "numpy": a division by zero gives inf/NaN as in numpy, never a ZeroDivisionError (under nnan,
# LLVM may take the zero-check's branch for a NaN, so a NaN weight in a corrupt file raised in the middle of
# a forward pass); finite results are unchanged.
_OPTS = dict(fastmath={"nnan", "ninf", "nsz"}, error_model="numpy", cache=True, nogil=True)


@njit(inline="always", error_model="numpy")
def vector_dot(a, b):
    """sum(a * b) for 1-d float32 `a` and float32 or half (uint16, see `half`) `b`: `simd.dot_f32` (the same
    bits on every CPU tier) over the largest multiple of 16 elements, then any tail in turn."""
    n = a.shape[0] - a.shape[0] % 16
    total = half.dot(a, b, n)
    for j in range(n, a.shape[0]):
        total += a[j] * half.at(b, j)
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
    """out[i] = x[i] / rms(x[i]) * weight for each row of x (n, d); out may be x."""
    for i in range(x.shape[0]):
        total = vector_dot(x[i], x[i])
        inv = np.float32(1.0) / np.sqrt(total / np.float32(x.shape[1]) + np.float32(eps))
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * inv * weight[j]


@njit(**_OPTS)
def rms_norm_heads(x, c0, n_heads, head_dim, weight, eps):
    """`rms_norm_rows` in place on each head of each row of x (n, ...): the head_dim columns from
    c0 + h * head_dim (qk-norm)."""
    for i in range(x.shape[0]):
        for h in range(n_heads):
            a = c0 + h * head_dim
            row = x[i, a:a + head_dim]
            total = vector_dot(row, row)
            inv = np.float32(1.0) / np.sqrt(total / np.float32(head_dim) + np.float32(eps))
            for j in range(head_dim):
                row[j] = row[j] * inv * weight[j]


@njit(**_OPTS)
def rope_rows(x, c0, n_heads, head_dim, cos, sin, positions, n_rot, neox):
    """Rotate in place the heads of x (n, ...) at columns c0 + h * head_dim; row i is at positions[i] (see
    model/ops.py Rope)."""
    half = n_rot // 2
    for i in range(x.shape[0]):
        p = positions[i]
        for h in range(n_heads):
            a0 = c0 + h * head_dim
            for j in range(half):
                a_at, b_at = (a0 + j, a0 + j + half) if neox else (a0 + 2 * j, a0 + 2 * j + 1)
                c, s = cos[p, j], sin[p, j]
                a, b = x[i, a_at], x[i, b_at]
                x[i, a_at] = a * c - b * s
                x[i, b_at] = a * s + b * c


# the shared scalar math (`scalar.py`), inlined into the kernels that call it, under their flags
gelu_tanh, silu, swiglu_oai, softcap, attn_temperature = (
    njit(inline="always", error_model="numpy")(f)
    for f in (scalar.gelu_tanh, scalar.silu, scalar.swiglu_oai, scalar.softcap, scalar.attn_temperature))
GATED_ACTIVATIONS = ("silu", "gelu_tanh", "swiglu_oai")  # the gated activations, by their code in the kernels


@njit(**_OPTS)
def gated_activation(gate, up, kind, out):
    """out = act(gate) * up, act silu (kind 0) or gelu_tanh (1); or swiglu_oai(gate, up) (2); all (n,) float32."""
    for i in range(gate.shape[0]):
        g = gate[i]
        if kind == 2:
            out[i] = swiglu_oai(g, up[i])
        else:
            out[i] = (gelu_tanh(g) if kind == 1 else silu(g)) * up[i]


@njit(**_OPTS)
def temperature_rows(x, n_cols, positions, scale, floor_scale):
    """x[t, :n_cols] *= attn_temperature(positions[t]): q scaled by its row's attention temperature."""
    for t in range(x.shape[0]):
        factor = attn_temperature(positions[t], scale, floor_scale)
        for j in range(n_cols):
            x[t, j] *= factor


@njit(parallel=True, **_OPTS)
def attention_rows(q, keys, values, pos0, key_pos0, window, scale, cap, sinks, n_parts, out, scores_of, inv_of,
                   acc_of):
    """Causal attention: q (n, n_head, hd) at positions pos0..; keys/values (s, n_kv, hd) at positions
    key_pos0.., float32 or IEEE halves as uint16 (an f16 KV cache read in place, widened in registers: the
    same bits as its float32 copy); out (n, n_head, hd). cap > 0: each scaled score s becomes
    cap * tanh(s / cap) (gemma2's attention-logit soft-capping). sinks (n_head,) or empty: each head's
    softmax also counts the score sinks[head], which has no value (gpt-oss). scores_of (threads, n_head,
    >= keys), inv_of (threads, n_head), acc_of (threads, n_head, hd): each thread's scratch for the query it
    is on (indexed by `get_thread_id`), so a call allocates nothing.

    Query p sees the keys at positions max(key_pos0, p - window + 1)..p (no window: from key_pos0). One
    task per query and part of its heads (n_parts per query: more than one only when there are fewer
    queries than threads), which walks its window once, key by key, for all its heads: each key and value
    row is read from memory once, in address order, and used by every head that shares it (looked up once
    per kv head: an integer division per head and key cost a fifth of decode's attention). Every (query,
    head) pair is still computed by the same loop in the same order (scores, max, exponentials summed in key
    order, values accumulated in key order), so its row does not depend on n_parts, on how a prompt was
    split into chunks, or on what was cached before.
    """
    n, n_head, head_dim = q.shape
    n_kv = keys.shape[1]
    group = n_head // n_kv
    for task in prange(n * n_parts):
        k, part = task // n_parts, task % n_parts
        # queries in the order 0, n-1, 1, n-2, ...: prange gives each thread a contiguous run of tasks, and
        # this way each run holds short and long causal windows alike
        i = k // 2 if k % 2 == 0 else n - 1 - k // 2
        h0, h1 = part * n_head // n_parts, (part + 1) * n_head // n_parts
        pos = pos0 + i
        first = max(key_pos0, pos - window + 1) if window > 0 else key_pos0
        skip = first - key_pos0  # keys before the window
        s = pos - first + 1
        thread = get_thread_id()
        scores = scores_of[thread, :h1 - h0, :s]  # (heads of this part, keys)
        g0, g1 = h0 // group, (h1 - 1) // group + 1  # the kv heads of this part's heads
        for t in range(s):
            for g in range(g0, g1):
                key = keys[skip + t, g]
                for h in range(max(h0, g * group), min(h1, g * group + group)):
                    score = vector_dot(q[i, h], key) * scale
                    if cap > 0:
                        score = softcap(score, cap)
                    scores[h - h0, t] = score
        inv = inv_of[thread, :h1 - h0]  # 1 / the sum of each head's exponentials
        for r in range(h1 - h0):
            best = np.float32(-np.inf)
            for t in range(s):
                best = max(best, scores[r, t])
            if sinks.size:
                best = max(best, sinks[h0 + r])
            total = np.float32(0.0)
            for t in range(s):
                scores[r, t] = np.exp(scores[r, t] - best)
                total += scores[r, t]
            if sinks.size:
                total += np.exp(sinks[h0 + r] - best)
            inv[r] = np.float32(1.0) / total
        acc = acc_of[thread, :h1 - h0]
        acc[:] = 0.0
        for t in range(s):
            for g in range(g0, g1):
                value = values[skip + t, g]
                for h in range(max(h0, g * group), min(h1, g * group + group)):
                    half.add_scaled(acc[h - h0], scores[h - h0, t] * inv[h - h0], value)
        for h in range(h0, h1):
            for j in range(head_dim):
                out[i, h, j] = acc[h - h0, j]
