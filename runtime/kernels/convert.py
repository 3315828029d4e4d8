"""float16 -> float32 conversion of KV-cache slices (numpy's own half casts are scalar: ~2 ns/value)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import f16x16_to_f32


@njit(parallel=True, cache=True, nogil=True)
def _widen(src, dst):
    """dst[:16k] = src[:16k] for the largest 16k <= len(src); returns 16k."""
    n_vectors = src.shape[0] // 16
    for i in prange(n_vectors):
        f16x16_to_f32(src, i * 16, dst, i * 16)
    return n_vectors * 16


def f16_to_f32(src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 copy of a contiguous float16 array."""
    if out is None:
        out = np.empty(src.shape, np.float32)
    flat_src, flat_out = src.reshape(-1), out.reshape(-1)
    done = _widen(flat_src.view(np.uint16), flat_out)
    flat_out[done:] = flat_src[done:]
    return out
