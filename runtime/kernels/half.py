"""Rows of float32 or IEEE half (float16) values, read as float32 by the kernels.

numba has no float16 arrays, so a float16 array reaches a kernel as its uint16 view (`a.view(np.uint16)`)
and is widened here, one row at a time, as it is used: the f16 KV cache is read by attention in place,
never converted wholesale. Half -> float is exact, so a kernel computes the same bits from a float16 array
as from its float32 copy.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from .simd import f16_at, f16x16_to_f32


def f32_row(src: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """`src` (a contiguous 1-d row) as float32: a float32 row itself; a uint16 row of halves widened into
    `scratch` (float32, at least as long), which is returned. For @njit code (see the overload below)."""
    raise NotImplementedError("f32_row is compiled into numba kernels only")


@overload(f32_row, inline="always")
def _f32_row(src, scratch):
    if src.dtype == types.float32:
        return lambda src, scratch: src
    if src.dtype == types.uint16:
        def widen(src, scratch):
            n = src.shape[0] - src.shape[0] % 16
            for j in range(0, n, 16):
                f16x16_to_f32(src, j, scratch, j)
            for j in range(n, src.shape[0]):
                scratch[j] = f16_at(src, j)  # the offset counts elements of `src`: uint16s here
            return scratch[:src.shape[0]]
        return widen
    return None
