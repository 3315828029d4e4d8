"""The numba small-step kernels (runtime/kernels/ops.py, used through runtime/model/ops.py) against their
numpy twins, the functions of the plain reference forward pass (tests/reference_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.model import ops
from tests import reference_model as ref

RNG = np.random.default_rng(0)


def test_rms_norm():
    x = RNG.standard_normal((3, 4, 64)).astype(np.float32)
    weight = RNG.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(ops.rms_norm(x, weight, 1e-6), ref.rms_norm(x, weight, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_activation(activation):
    gate, up = RNG.standard_normal((2, 2, 300)).astype(np.float32) * 4
    twin = ref.gelu_tanh if activation == "gelu_tanh" else ref.silu
    np.testing.assert_allclose(ops.gated_ffn_input(gate, up, activation), twin(gate) * up, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_rope(neox):
    x = RNG.standard_normal((5, 3, 64)).astype(np.float32)
    rotated = x.copy()
    ops.Rope(10000.0, 48, 32, neox)(rotated, 7)  # partial rotation: the last 16 dimensions stay
    expected = ref.rope(x, np.arange(7, 12), 10000.0, 48, neox)
    np.testing.assert_allclose(rotated, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n, pos0, key_pos0, window", [(1, 8, 0, 0), (6, 10, 0, 0), (6, 10, 3, 5), (1, 12, 4, 9)])
def test_attention_kernel_matches_the_numpy_twin(n, pos0, key_pos0, window):
    q = RNG.standard_normal((n, 6, 32)).astype(np.float32)
    s = pos0 + n - key_pos0
    keys, values = RNG.standard_normal((2, s, 3, 32)).astype(np.float32)
    got = ops.attention(q, keys, values, pos0, key_pos0, window, 0.2)  # numba kernel
    expected = ops.attention_numpy(q, keys, values, pos0, key_pos0, window, 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_rows_do_not_depend_on_the_chunk():
    q = RNG.standard_normal((12, 6, 32)).astype(np.float32)
    keys, values = RNG.standard_normal((2, 12, 3, 32)).astype(np.float32)
    whole = ops.attention(q, keys, values, 0, 0, 0, 0.2)
    tail = ops.attention(q[7:], keys, values, 7, 0, 0, 0.2)  # the last 5 queries as their own chunk
    np.testing.assert_array_equal(tail, whole[7:])
