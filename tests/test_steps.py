"""The numba small-step kernels (llamapyz/kernels/steps.py, used through llamapyz/model/ops.py) against their
numpy twins, the functions of the plain reference forward pass (llamapyz/model/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from llamapyz.kernels import steps as kernels
from llamapyz.model import ops
from llamapyz.model import reference as ref

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
    positions = np.array([7, 8, 9, 30, 2])  # each row its own position (rows of several sequences)
    ops.Rope(10000.0, 48, 32, neox)(rotated.reshape(5, -1), 3, positions)  # partial: the last 16 dims stay
    expected = ref.rope(x, positions, 10000.0, 48, neox)
    np.testing.assert_allclose(rotated, expected, rtol=1e-5, atol=1e-5)


def test_qk_norm_heads_in_place_match_rms_norm_of_each_head():
    rng = np.random.default_rng(1)  # its own: the module's RNG feeds the tests below
    x = rng.standard_normal((4, 5 * 32)).astype(np.float32)
    weight = rng.standard_normal(32).astype(np.float32)
    normed = x.copy()
    kernels.rms_norm_heads(normed, 64, 3, 32, weight, 1e-6)  # heads 2..4
    expected = ops.rms_norm(x[:, 64:].reshape(4, 3, 32), weight, 1e-6).reshape(4, -1)
    np.testing.assert_array_equal(normed[:, 64:], expected)
    np.testing.assert_array_equal(normed[:, :64], x[:, :64])


@pytest.mark.parametrize("n, pos0, key_pos0, window", [(1, 8, 0, 0), (6, 10, 0, 0), (6, 10, 3, 5), (1, 12, 4, 9)])
def test_attention_kernel_matches_the_numpy_twin(n, pos0, key_pos0, window):
    q = RNG.standard_normal((n, 6, 32)).astype(np.float32)
    s = pos0 + n - key_pos0
    keys, values = RNG.standard_normal((2, s, 3, 32)).astype(np.float32)
    got = ops.attention(q, keys, values, pos0, key_pos0, window, 0.2)  # numba kernel
    expected = ops.attention_numpy(q, keys, values, pos0, key_pos0, window, 0.2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [0, 5])
def test_attention_sinks_match_the_numpy_twin_and_damp_attention(window):
    """gpt-oss's sinks: one more softmax score per head without a value. A sink far above every score takes
    all the weight (the output goes to 0); one far below changes nothing."""
    q = RNG.standard_normal((4, 6, 32)).astype(np.float32)
    keys, values = RNG.standard_normal((2, 14, 3, 32)).astype(np.float32)
    sinks = RNG.standard_normal(6).astype(np.float32)
    got = ops.attention(q, keys, values, 10, 0, window, 0.2, sinks=sinks)
    expected = ops.attention_numpy(q, keys, values, 10, 0, window, 0.2, sinks=sinks)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    plain = ops.attention(q, keys, values, 10, 0, window, 0.2)
    assert np.abs(got - plain).max() > 1e-3  # the sinks count
    low = ops.attention(q, keys, values, 10, 0, window, 0.2, sinks=np.full(6, -1e4, np.float32))
    np.testing.assert_allclose(low, plain, rtol=1e-6, atol=1e-7)
    high = ops.attention(q, keys, values, 10, 0, window, 0.2, sinks=np.full(6, 1e3, np.float32))
    assert np.abs(high).max() < 1e-30


def test_swiglu_oai_matches_its_numpy_twin_and_clamps():
    from llamapyz.model.reference import GATED

    gate = np.concatenate([RNG.standard_normal(61) * 4, [9.0, -9.0, 7.5]]).astype(np.float32)
    up = np.concatenate([RNG.standard_normal(61) * 4, [-9.0, 9.0, 0.5]]).astype(np.float32)
    got = ops.gated_ffn_input(gate[None], up[None], "swiglu_oai")[0]
    np.testing.assert_allclose(got, GATED["swiglu_oai"](gate, up), rtol=2e-6, atol=1e-6)
    seven = np.float32(7.0) / (1 + np.exp(np.float32(-1.702 * 7.0)))  # gate clamped at 7
    np.testing.assert_allclose(got[61:], [seven * -6.0, -9.0 / (1 + np.exp(1.702 * 9.0)) * 8.0, seven * 1.5],
                               rtol=1e-6)


def test_attention_rows_do_not_depend_on_the_chunk():
    q = RNG.standard_normal((12, 6, 32)).astype(np.float32)
    keys, values = RNG.standard_normal((2, 12, 3, 32)).astype(np.float32)
    whole = ops.attention(q, keys, values, 0, 0, 0, 0.2)
    tail = ops.attention(q[7:], keys, values, 7, 0, 0, 0.2)  # the last 5 queries as their own chunk
    np.testing.assert_array_equal(tail, whole[7:])


@pytest.mark.parametrize("n, pos0, key_pos0, window, softcap, head_dim", [
    (1, 8, 0, 0, 0.0, 32), (6, 10, 0, 0, 0.0, 64), (6, 10, 3, 5, 0.0, 32), (1, 12, 4, 9, 0.0, 32),
    (5, 9, 0, 0, 2.0, 64), (4, 20, 6, 7, 2.0, 48), (3, 7, 0, 0, 0.0, 40), (2, 30, 10, 0, 0.0, 8)])
def test_attention_reads_float16_keys_as_their_float32_copy(n, pos0, key_pos0, window, softcap, head_dim):
    """An f16 KV cache read in place (rows widened inside the kernel; head_dim 40 and 8: a tail of halves
    after the 16-wide conversions) gives the very bits of its float32 copy, and the numpy twin's values."""
    q = RNG.standard_normal((n, 6, head_dim)).astype(np.float32)
    s = pos0 + n - key_pos0
    keys, values = (RNG.standard_normal((2, s, 3, head_dim)) * 2).astype(np.float16)
    got = ops.attention(q, keys, values, pos0, key_pos0, window, 0.2, softcap)
    widened = ops.attention(q, keys.astype(np.float32), values.astype(np.float32), pos0, key_pos0, window, 0.2,
                            softcap)
    np.testing.assert_array_equal(got.view(np.uint32), widened.view(np.uint32))
    expected = ops.attention_numpy(q, keys, values, pos0, key_pos0, window, 0.2, softcap)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_reads_a_float16_cache_slice_in_place():
    """What the forward pass hands over: a window of one layer of the cache, reshaped to heads; the rows of
    a chunk equal those of the whole prompt."""
    from llamapyz.model.kv_cache import KVCache

    cache = KVCache(2, 32, 3 * 32, "f16")
    k, v = RNG.standard_normal((2, 20, 3 * 32)).astype(np.float32)
    cache.store(1, 0, k, v)
    keys, values = cache.read(1, 4, 20)
    assert keys.dtype == np.float16 and np.shares_memory(keys, cache.keys)
    q = RNG.standard_normal((8, 6, 32)).astype(np.float32)
    whole = ops.attention(q, keys.reshape(-1, 3, 32), values.reshape(-1, 3, 32), 12, 4, 6, 0.2)
    tail = ops.attention(q[5:], keys.reshape(-1, 3, 32), values.reshape(-1, 3, 32), 17, 4, 6, 0.2)
    np.testing.assert_array_equal(tail, whole[5:])
    widened = [a.astype(np.float32).reshape(-1, 3, 32) for a in (keys, values)]
    np.testing.assert_array_equal(whole, ops.attention(q, *widened, 12, 4, 6, 0.2))


@pytest.mark.parametrize("keys_dtype", [np.float32, np.float16])
def test_attention_rows_do_not_depend_on_how_heads_are_split(keys_dtype):
    """n_parts (how many tasks share one query's heads, chosen from the thread count) changes nothing."""
    from llamapyz.kernels.steps import attention_rows

    q = RNG.standard_normal((3, 9, 32)).astype(np.float32)
    keys, values = (RNG.standard_normal((2, 11, 3, 32)) * 2).astype(keys_dtype)
    if keys_dtype == np.float16:
        keys, values = keys.view(np.uint16), values.view(np.uint16)
    outs, work = [], ops.AttentionWork(9, 32, 11)
    sinks = RNG.standard_normal(9).astype(np.float32)
    for n_parts in (1, 2, 4, 9):
        out = np.empty((3, 9, 32), np.float32)
        attention_rows(q, keys, values, 8, 0, 6, np.float32(0.2), np.float32(1.5), sinks, n_parts, out, work.scores,
                       work.inv, work.acc)
        outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
