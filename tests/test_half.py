"""llamapyz/kernels/half.py: float16 operands (as uint16) give the bits of their float32 copies."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from llamapyz.kernels import half, simd

RNG = np.random.default_rng(3)


def halves(n: int) -> np.ndarray:
    """n halves over the whole range: normal values of every scale, subnormals, zeros of both signs."""
    values = RNG.standard_normal(n) * np.exp2(RNG.integers(-20, 12, n))
    values[::7] = 0.0
    values[3::11] = -0.0
    return values.astype(np.float16)


@njit
def _dot_f16(a, b, n):
    return half.dot_f32_f16(a, b, n)


@njit
def _dot_f32(a, b, n):
    return simd.dot_f32(a, b, n)


@njit
def _vector_dot(a, b):
    n = a.shape[0] - a.shape[0] % 16
    total = half.dot(a, b, n)
    for j in range(n, a.shape[0]):
        total += a[j] * half.at(b, j)
    return total


@njit
def _add_scaled(acc, p, v):
    half.add_scaled(acc, p, v)


@pytest.mark.parametrize("n", [16, 64, 256])
def test_dot_f32_f16_is_dot_f32_on_the_float32_copy(n):
    a, b = RNG.standard_normal(n).astype(np.float32), halves(n)
    got = _dot_f16(a, b.view(np.uint16), n)
    assert np.float32(got).view(np.uint32) == np.float32(_dot_f32(a, b.astype(np.float32), n)).view(np.uint32)


@pytest.mark.parametrize("n", [8, 40, 64])
def test_dot_and_at_dispatch_on_the_dtype(n):
    a, b = RNG.standard_normal(n).astype(np.float32), halves(n)
    widened = _vector_dot(a, b.astype(np.float32))
    assert np.float32(_vector_dot(a, b.view(np.uint16))).view(np.uint32) == np.float32(widened).view(np.uint32)


@pytest.mark.parametrize("n", [8, 40, 64])
def test_add_scaled_is_the_plain_loop(n):
    acc, p, v = RNG.standard_normal(n).astype(np.float32), np.float32(0.37), halves(n)
    expected = acc + p * v.astype(np.float32)  # float32 products, then sums: no fused multiply-add
    for operand in (v.view(np.uint16), v.astype(np.float32)):
        got = acc.copy()
        _add_scaled(got, p, operand)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
