"""The transformer's non-matrix steps on float32 activations: RMSNorm, rotary embeddings, attention, FFN
activations, batched over tokens.

The functions named `*_numpy` are the plain twins of the numba kernels in `kernels/ops.py` (tests compare
them); `attention` is numpy (BLAS products) and serves prefill chunks; the public wrappers below pick.
"""

from __future__ import annotations

import numpy as np

from ..kernels import ops as kernels

SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (..., n) / rms(x) * weight (n,), over the last axis."""
    out = np.empty(x.shape, np.float32)
    kernels.rms_norm_rows(x.reshape(-1, x.shape[-1]), weight, eps, out.reshape(-1, x.shape[-1]))
    return out


def gated_ffn_input(gate: np.ndarray, up: np.ndarray, activation: str) -> np.ndarray:
    """act(gate) * up."""
    out = np.empty(gate.shape, np.float32)
    kernels.gated_activation(gate.reshape(-1), up.reshape(-1), activation == "gelu_tanh", out.reshape(-1))
    return out


def rms_norm_numpy(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    mean_square = np.einsum("...i,...i->...", x, x)[..., None] / np.float32(x.shape[-1])
    return x * (np.float32(1.0) / np.sqrt(mean_square + np.float32(eps))) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(SQRT_2_OVER_PI * (x + np.float32(0.044715) * x**3)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}  # the numpy twins of gated_activation


class Rope:
    """Rotary position embedding with cos/sin tables precomputed for n_ctx positions (float64 angles)."""

    def __init__(self, base: float, n_rot: int, n_ctx: int, neox: bool) -> None:
        half = n_rot // 2
        inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2 / n_rot)
        angle = np.arange(n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
        self.cos = np.cos(angle).astype(np.float32)  # (n_ctx, n_rot/2)
        self.sin = np.sin(angle).astype(np.float32)
        self.n_rot = n_rot
        self.neox = neox

    def __call__(self, x: np.ndarray, pos0: int) -> None:
        """Rotate x (n_tokens, n_heads, head_dim) in place; token i is at position pos0 + i."""
        kernels.rope_rows(x, self.cos, self.sin, pos0, self.n_rot, self.neox)

    def rotate_numpy(self, x: np.ndarray, pos0: int) -> None:
        """Numpy twin of __call__."""
        n = x.shape[0]
        cos, sin = self.cos[pos0:pos0 + n, None, :], self.sin[pos0:pos0 + n, None, :]
        if self.neox:
            half = self.n_rot // 2
            a, b = x[..., :half], x[..., half:self.n_rot]
        else:
            a, b = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
        a_rotated = a * cos - b * sin
        b[...] = a * sin + b * cos
        a[...] = a_rotated


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos0: int, key_pos0: int, window: int,
              scale: float) -> np.ndarray:
    """Causal grouped-query attention.

    q (n, n_head, head_dim) for positions pos0..pos0+n-1; keys/values (s, n_head_kv, head_dim) for positions
    key_pos0..key_pos0+s-1. A key is visible to a query at p when key <= p and, with a window,
    p - key < window. Returns (n, n_head * head_dim).
    """
    n, n_head, head_dim = q.shape
    s = keys.shape[0]
    if n == 1 and (not window or pos0 - key_pos0 < window) and key_pos0 + s == pos0 + 1:
        out = np.empty((n_head, head_dim), np.float32)  # decode: every cached key is visible
        kernels.attention_one(q[0], keys, values, np.float32(scale), out)
        return out.reshape(1, n_head * head_dim)
    return attention_numpy(q, keys, values, pos0, key_pos0, window, scale)


def attention_numpy(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos0: int, key_pos0: int, window: int,
                    scale: float) -> np.ndarray:
    """Numpy attention (BLAS products): any number of queries, masks applied."""
    n, n_head, head_dim = q.shape
    s, n_kv = keys.shape[0], keys.shape[1]
    group = n_head // n_kv
    # (n_kv, n * group, head_dim): the queries sharing a kv head side by side
    grouped = q.reshape(n, n_kv, group, head_dim).transpose(1, 0, 2, 3).reshape(n_kv, n * group, head_dim)
    scores = np.matmul(grouped, keys.transpose(1, 2, 0)) * np.float32(scale)  # (n_kv, n * group, s)
    scores = scores.reshape(n_kv, n, group, s)
    query_pos = np.arange(pos0, pos0 + n)[:, None]
    key_pos = np.arange(key_pos0, key_pos0 + s)[None, :]
    hidden = key_pos > query_pos
    if window:
        hidden |= query_pos - key_pos >= window
    if hidden.any():
        np.copyto(scores, -np.inf, where=hidden[None, :, None, :])
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores.reshape(n_kv, n * group, s), values.transpose(1, 0, 2))  # (n_kv, n * group, hd)
    return out.reshape(n_kv, n, group, head_dim).transpose(1, 0, 2, 3).reshape(n, n_head * head_dim)
