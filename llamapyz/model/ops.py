"""The transformer's non-matrix steps on float32 activations: RMSNorm, rotary embeddings, attention, FFN
activations, batched over tokens.

RMSNorm, rope and the FFN activation run as the numba kernels of `kernels/steps.py`, whose numpy twins are
the plain reference forward pass's functions (`model/reference.py`; `tests/test_steps.py` compares
them). Attention is a numba kernel computing each query row on its own (`attention_numpy`, with BLAS
products, is its batched twin for the tests), and `softcap` is gemma2's final-logit soft-capping.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba
import numpy as np

from ..kernels import steps as kernels
from .hparams import ModelConfig, Yarn

if TYPE_CHECKING:
    from .recipe import Head, QkNorm


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """x (..., n) / rms(x) * weight (n,), over the last axis, into `out` (which may be x) or a new array."""
    out = np.empty(x.shape, np.float32) if out is None else out
    kernels.rms_norm_rows(x.reshape(-1, x.shape[-1]), weight, eps, out.reshape(-1, x.shape[-1]))
    return out


def gated_ffn_input(gate: np.ndarray, up: np.ndarray, activation: str, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """act(gate) * up (n, n_ff) (swiglu_oai: its function of both), row by row (gate and up may be column
    ranges of one product), into `out` or a new array."""
    out = np.empty(gate.shape, np.float32) if out is None else out
    kind = kernels.GATED_ACTIVATIONS.index(activation)
    for g, u, o in zip(gate, up, out, strict=True):
        kernels.gated_activation(g, u, kind, o)
    return out


def qk_norm_spans(step: QkNorm, c: ModelConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """((count, width) of q's normed spans, the same of k's): each head, or (`whole`) all heads at once."""
    if step.whole:
        return (1, c.n_head * c.head_dim), (1, c.kv_dim)
    return (c.n_head, c.head_dim), (c.n_head_kv, c.head_dim)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap), in place: gemma2's final-logit soft-capping."""
    x /= np.float32(cap)
    np.tanh(x, out=x)
    x *= np.float32(cap)
    return x


def head_logits(logits: np.ndarray, step: Head) -> np.ndarray:
    """What the head step does after its product, in place (the CPU's and the GPU's logits alike): soft-capping,
    then times 1 / logit_scale unless that is 1 (granite)."""
    if step.softcap:
        softcap(logits, step.softcap)
    if step.logit_scale != 1.0:
        logits *= step.multiplier
    return logits


def rope_angles(positions: np.ndarray, base: float, n_rot: int, factors: np.ndarray | None = None,
                freq_scale: float = 1.0, yarn: Yarn | None = None) -> np.ndarray:
    """The angle (n_positions, n_rot/2), float64, of frequency i at position p: p * freq_scale *
    base^(-2i / n_rot) / factors[i] (factors: Llama 3.1's rope_freqs or LongRoPE's; freq_scale: linear or YaRN
    scaling). With YaRN, ggml's ramp mixes in the unscaled angle: frequency i keeps (1 - ramp_i) of the
    scaled one, ramp_i = 1 - clip((i - low) / max(0.001, high - low), 0, 1), where low and high are the
    rotary dimensions that turn beta_fast and beta_slow times over the original context."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2 / n_rot)
    if factors is not None:
        inv_freq = inv_freq / factors.astype(np.float64)
    original = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    if yarn is None:
        return original * freq_scale

    def dimension(beta: float) -> float:  # the rotary dimension that turns `beta` times over the original context
        return n_rot * math.log(yarn.original_ctx / (beta * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(0.0, math.floor(dimension(yarn.beta_fast))), min(n_rot - 1.0, math.ceil(dimension(yarn.beta_slow)))
    ramp = 1 - np.clip((np.arange(half) - low) / max(0.001, high - low), 0, 1)
    return original * freq_scale * (1 - ramp) + original * ramp


class Rope:
    """Rotary position embedding with cos/sin tables precomputed for n_ctx positions (float64 angles,
    `rope_angles`); cos and sin are multiplied by attn_factor, as ggml's rope does.
    """

    def __init__(self, base: float, n_rot: int, n_ctx: int, neox: bool, factors: np.ndarray | None = None,
                 freq_scale: float = 1.0, attn_factor: float = 1.0, yarn: Yarn | None = None) -> None:
        angle = rope_angles(np.arange(n_ctx), base, n_rot, factors, freq_scale, yarn)
        self.cos = (np.cos(angle) * attn_factor).astype(np.float32)  # (n_ctx, n_rot/2)
        self.sin = (np.sin(angle) * attn_factor).astype(np.float32)
        self.n_rot = n_rot
        self.neox = neox

    def __call__(self, x: np.ndarray, n_heads: int, positions: np.ndarray) -> None:
        """Rotate in place the n_heads heads of each row of x (n_tokens, n_heads * head_dim); row i is at
        positions[i]."""
        kernels.rope_rows(x, 0, n_heads, x.shape[1] // n_heads, self.cos, self.sin, positions, self.n_rot,
                          self.neox)

    @property
    def tables(self) -> tuple:
        """(cos, sin, n_rot, neox): what the layer kernels take."""
        return self.cos, self.sin, self.n_rot, self.neox


NO_SINKS = np.empty(0, np.float32)


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos0: int, key_pos0: int, window: int,
              scale: float, softcap: float = 0.0, out: np.ndarray | None = None, work: AttentionWork | None = None,
              sinks: np.ndarray | None = None) -> np.ndarray:
    """Causal grouped-query attention; with softcap, each score s becomes softcap * tanh(s / softcap); with
    sinks (n_head,), each head's softmax counts one more score, sinks[head], that adds no value.

    q (n, n_head, head_dim) for positions pos0..pos0+n-1; keys/values (s, n_head_kv, head_dim) for positions
    key_pos0..key_pos0+s-1, float32 or float16 (the KV cache as stored: the kernel widens each row as it
    reads it, to the same bits a float32 copy would give). A key is visible to a query at p when key <= p
    and, with a window, p - key < window. Returns (n, n_head * head_dim), in `out` if given (contiguous).
    Every query row is computed on its own (see `kernels.attention_rows`), in `work`'s per-thread scratch
    (a new one sized for these keys without it); `attention_numpy` is the batched numpy twin.
    """
    n, n_head, head_dim = q.shape
    out = np.empty((n, n_head * head_dim), np.float32) if out is None else out
    if work is None:
        work = AttentionWork(n_head, head_dim, keys.shape[0])
    n_parts = min(n_head, -(-numba.get_num_threads() // n))  # split each query's heads only to fill the threads
    kernels.attention_rows(np.ascontiguousarray(q), _kernel_view(keys), _kernel_view(values), pos0, key_pos0,
                           window, np.float32(scale), np.float32(softcap), NO_SINKS if sinks is None else sinks,
                           n_parts, out.reshape(n, n_head, head_dim), work.scores, work.inv, work.acc)
    return out


class AttentionWork:
    """Attention's scratch for one query at a time, one set per numba thread (the kernel indexes it by
    `numba.get_thread_id`): its heads' scores over the keys it sees, their sums' inverses, their weighted sums
    of values. A model keeps one sized by its context (`workspace.Workspaces`); pages are touched only as far
    as the longest window so far."""

    def __init__(self, n_head: int, head_dim: int, n_keys: int) -> None:
        threads = numba.config.NUMBA_NUM_THREADS  # the pool's size: no thread id reaches it
        self.scores = np.empty((threads, n_head, n_keys), np.float32)  # (threads, n_head, n_keys)
        self.inv = np.empty((threads, n_head), np.float32)  # (threads, n_head)
        self.acc = np.empty((threads, n_head, head_dim), np.float32)  # (threads, n_head, head_dim)


def _kernel_view(a: np.ndarray) -> np.ndarray:
    """float16 as its uint16 bits (numba has no float16 arrays; `kernels.half` reads them), else as is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def attention_numpy(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos0: int, key_pos0: int, window: int,
                    scale: float, softcap: float = 0.0, sinks: np.ndarray | None = None) -> np.ndarray:
    """Numpy attention (BLAS products): any number of queries, masks applied; float16 keys/values are
    widened to float32 first."""
    keys, values = keys.astype(np.float32, copy=False), values.astype(np.float32, copy=False)
    n, n_head, head_dim = q.shape
    s, n_kv = keys.shape[0], keys.shape[1]
    group = n_head // n_kv
    # (n_kv, n * group, head_dim): the queries sharing a kv head side by side
    grouped = q.reshape(n, n_kv, group, head_dim).transpose(1, 0, 2, 3).reshape(n_kv, n * group, head_dim)
    scores = np.matmul(grouped, keys.transpose(1, 2, 0)) * np.float32(scale)  # (n_kv, n * group, s)
    if softcap:
        scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
    scores = scores.reshape(n_kv, n, group, s)
    query_pos = np.arange(pos0, pos0 + n)[:, None]
    key_pos = np.arange(key_pos0, key_pos0 + s)[None, :]
    hidden = key_pos > query_pos
    if window:
        hidden |= query_pos - key_pos >= window
    if hidden.any():
        np.copyto(scores, -np.inf, where=hidden[None, :, None, :])
    best = scores.max(axis=-1, keepdims=True)
    if sinks is not None:  # (n_head,) as (n_kv, 1, group, 1)
        sink = sinks.astype(np.float32).reshape(n_kv, 1, group, 1)
        best = np.maximum(best, sink)
    scores -= best
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if sinks is not None:
        total += np.exp(sink - best)
    scores /= total
    out = np.matmul(scores.reshape(n_kv, n * group, s), values.transpose(1, 0, 2))  # (n_kv, n * group, hd)
    return out.reshape(n_kv, n, group, head_dim).transpose(1, 0, 2, 3).reshape(n, n_head * head_dim)
