"""llamapyz/gpu/kernels.py under numba's CUDA simulator (tests/conftest.py switches it on; CI has no GPU):
each kernel against its numpy twin on small synthetic shapes.

Tolerances: the quantized products are compared with the float64 product of the dequantized weights
(llamapyz/gguf/quants.py, bit-exact with gguf-py) and x. A float32 sum whose longest chain of additions is k
(a thread's blocks one after another, then the 32 threads' tree; each weight is a product of two or three
float32 factors) is within about 2k * 2^-24 of the sum of |products| (the classic gamma_k bound).
RMSNorm and rope do a handful of float32 operations per element: 1e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import config, cuda

from llamapyz.gpu import Device, formats, kernels, probe
from llamapyz.model.ops import Rope
from llamapyz.model.reference import rms_norm, rope


def test_the_tests_run_under_the_simulator_and_probe_finds_its_device():
    assert config.ENABLE_CUDASIM
    device = probe()
    assert isinstance(device, Device) and device.index == 0
    assert probe(main_gpu=3) == "--main-gpu 3: there are 1 GPU(s)"


def test_float16_scales_decode_exactly_for_every_half():
    @cuda.jit
    def decode(raw, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = formats.half_at(raw[i], 0)

    bits = np.arange(0, 65536, 97, dtype=np.uint16)  # a spread over every exponent, both signs
    bits = np.concatenate([bits, np.array([0x0001, 0x03FF, 0x7BFF, 0x7C00, 0xFC00, 0x8000], np.uint16)])
    out = np.zeros(len(bits), np.float32)
    decode[(len(bits) + 63) // 64, 64](bits.view(np.uint8).reshape(-1, 2), out)
    expected = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(out[finite], expected[finite])
    infinite = np.isinf(expected)
    assert (np.isnan(out) == np.isnan(expected)).all() and (out[infinite] == expected[infinite]).all()


def test_rms_norm_matches_its_twin():
    x = np.random.default_rng(1).standard_normal((3, 96)).astype(np.float32)
    weight = np.random.default_rng(2).standard_normal(96).astype(np.float32)
    out = np.zeros_like(x)
    kernels.rms_norm[3, kernels.WARP](x, weight, np.float32(1e-6), out)
    np.testing.assert_allclose(out, rms_norm(x, weight, 1e-6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_norm_and_rope_match_their_twins_in_both_styles(neox, qk_norm):
    """q's 3 heads and k's 2 normed (or not) and rotated in place, v's left alone; dimensions past n_rot stay."""
    n, n_head, n_kv, hd, n_rot = 4, 3, 2, 16, 12
    rng = np.random.default_rng(3)
    qkv = rng.standard_normal((n, (n_head + 2 * n_kv) * hd)).astype(np.float32)
    q_norm, k_norm = (rng.standard_normal((2, hd)).astype(np.float32) if qk_norm else (kernels.NO_BIAS,) * 2)
    positions = np.array([0, 5, 6, 30])
    table = Rope(10000.0, n_rot, 64, neox, freq_scale=0.5, attn_factor=1.1)
    got = qkv.copy()
    kernels.launch_qk_norm_rope(got, n_head, n_kv, q_norm, k_norm, 1e-6, positions, table.cos, table.sin, n_rot,
                                neox, launch=kernels.ON_GPU)
    q, k = qkv[:, :n_head * hd].reshape(n, n_head, hd), qkv[:, n_head * hd:(n_head + n_kv) * hd].reshape(n, n_kv, hd)
    if qk_norm:
        q, k = rms_norm(q, q_norm, 1e-6), rms_norm(k, k_norm, 1e-6)
    turn = dict(base=10000.0, n_rot=n_rot, neox=neox, freq_scale=0.5, attn_factor=1.1)
    expected = np.concatenate([rope(q, positions, **turn).reshape(n, -1), rope(k, positions, **turn).reshape(n, -1),
                               qkv[:, (n_head + n_kv) * hd:]], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "swiglu_oai"])
def test_gated_activation_matches_its_twin(activation):
    from llamapyz.kernels.steps import GATED_ACTIVATIONS
    from llamapyz.model.ops import gated_ffn_input

    gate, up = (np.random.default_rng(4).standard_normal((2, 2, 35)) * 5).astype(np.float32)  # past 7: clamped
    out = np.zeros((2, 35), np.float32)
    kernels.gated_activation[3, 32](gate, up, GATED_ACTIVATIONS.index(activation), out)
    np.testing.assert_allclose(out, gated_ffn_input(gate, up, activation), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window, softcap, sinks", [(0, 0.0, False), (40, 0.0, False), (0, 5.0, False),
                                                    (40, 0.0, True)])
def test_attention_over_a_half_kv_cache_matches_its_twin(window, softcap, sinks):
    """3 queries at positions 80-82 over keys 2..82 (4 query heads sharing 2 kv heads): each of the 32
    threads takes two or three keys, so its running softmax rescales what it summed. float32 sums of up to
    81 scores and 16-element dot products in another order: 1e-5 relative."""
    from llamapyz.model.ops import attention_numpy

    rng = np.random.default_rng(5)
    n, n_head, n_kv, hd, s = 3, 4, 2, 16, 81
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    keys, values = rng.standard_normal((2, s, n_kv, hd)).astype(np.float16)
    out = np.zeros((n, n_head * hd), np.float32)
    sink = rng.standard_normal(n_head).astype(np.float32) * 3 if sinks else None
    kernels.launch_attention(q.reshape(n, -1), keys.view(np.uint16), values.view(np.uint16), 80, 2, window, 0.5,
                             softcap, out, launch=kernels.ON_GPU, sinks=kernels.NO_BIAS if sink is None else sink)
    expected = attention_numpy(q, keys, values, 80, 2, window, 0.5, softcap, sinks=sink)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_float32_keys_and_values_round_to_the_halves_numpy_gives():
    """store_kv rounds as numpy's astype(float16) (to nearest, ties to even): every half, the ties
    between neighbouring halves, subnormals, overflow to inf, -0 and NaN."""
    halves = np.arange(0, 65536, 7, dtype=np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)].astype(np.float32)
    up = np.nextafter(halves.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    ties = ((halves.astype(np.float64) + up) / 2).astype(np.float32)  # exact in float32
    specials = np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e9, -1e9, 2.0**-25, 2.0**-24 * 1.5, 1e-10,
                         np.nan, np.inf, -np.inf], np.float32)
    values = np.concatenate([halves, ties, ties * np.float32(1.0000001), specials]).astype(np.float32)
    values = values[: len(values) // 8 * 8].reshape(-1, 8)  # keys then values (n, 2 * n_kv * hd): n_kv = hd = 2
    qkv = np.concatenate([np.ones((len(values) + 1, 4), np.float32), np.zeros((len(values) + 1, 8), np.float32)],
                         axis=1)  # a q of 4 columns, a first token that is not stored
    qkv[1:, 4:] = values
    keys, cached_values = np.zeros((2, len(values) + 3, 2, 2), np.uint16)
    kernels.launch_elementwise(kernels.store_kv, values.size // 2, qkv, 1, len(values), 4, keys, cached_values, 3)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16).reshape(-1, 2, 2, 2)  # (n, k or v, n_kv, hd)
    got = np.stack([keys[3:], cached_values[3:]], axis=1)
    nan = np.isnan(values.reshape(-1, 2, 2, 2))
    np.testing.assert_array_equal(got[~nan], expected[~nan])
    assert (got[nan] & 0x7C00 == 0x7C00).all() and (got[nan] & 0x3FF).all()
    assert not keys[:3].any() and not cached_values[:3].any()


@pytest.mark.parametrize("launch", [kernels.ON_GPU, kernels.SIMULATED], ids=["on_gpu", "simulated"])
def test_norms_and_the_residual_with_and_without_a_post_norm(launch):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    weight = rng.standard_normal(96).astype(np.float32)
    out = np.zeros_like(x)
    kernels.launch_rms_norm(x, weight, 1e-6, out, launch=launch)
    np.testing.assert_allclose(out, rms_norm(x, weight, 1e-6), rtol=1e-6, atol=1e-6)
    y = rng.standard_normal(x.shape).astype(np.float32)
    post = rng.standard_normal(x.shape[1]).astype(np.float32)
    for post_weight, residual in ((kernels.NO_BIAS, x + y), (post, x + rms_norm(y, post, 1e-6))):
        fused, h = x.copy(), np.zeros_like(x)  # add_norm: the residual, then the next step's norm
        kernels.launch_add_norm(fused, y, post_weight, 1e-6, weight, h, launch=launch)
        if post_weight is kernels.NO_BIAS:
            np.testing.assert_array_equal(fused, residual)  # a plain add: exact
        np.testing.assert_allclose(fused, residual, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h, rms_norm(residual, weight, 1e-6), rtol=1e-5, atol=1e-6)
    scaled, h = x.copy(), np.zeros_like(x)  # granite's residual_scale: the branch times it, then the add (exact)
    kernels.launch_add_norm(scaled, y, kernels.NO_BIAS, 1e-6, weight, h, launch=launch, scale=0.22)
    np.testing.assert_array_equal(scaled, x + y * np.float32(0.22))
    added, h = x.copy(), np.zeros_like(x)  # an empty weight: no input norm (olmo2), h = x
    kernels.launch_add_norm(added, y, kernels.NO_BIAS, 1e-6, kernels.NO_BIAS, h, launch=launch)
    np.testing.assert_array_equal(h, x + y)
    kernels.launch_rms_norm(x, kernels.NO_BIAS, 1e-6, out, launch=launch)
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("launch", [kernels.ON_GPU, kernels.SIMULATED], ids=["on_gpu", "simulated"])
def test_a_span_of_columns_normed_in_place(launch):
    """olmo2's qk-norm: q (columns 0-63) and k (64-95) each normed over all their heads at once."""
    rng = np.random.default_rng(14)
    qkv = rng.standard_normal((3, 128)).astype(np.float32)
    q_norm, k_norm = rng.standard_normal(64).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    expected = qkv.copy()
    expected[:, :64], expected[:, 64:96] = rms_norm(qkv[:, :64], q_norm, 1e-6), rms_norm(qkv[:, 64:96], k_norm, 1e-6)
    kernels.launch_rms_norm_span(qkv, 0, 64, q_norm, 1e-6, launch=launch)
    kernels.launch_rms_norm_span(qkv, 64, 32, k_norm, 1e-6, launch=launch)
    np.testing.assert_allclose(qkv, expected, rtol=1e-5, atol=1e-6)


def test_expert_gather_scatter_and_rank_sum_match_their_twins():
    rng = np.random.default_rng(13)
    h = rng.standard_normal((5, 6)).astype(np.float32)
    rows, ranks = np.array([4, 0, 2]), np.array([1, 0, 1])
    gathered = np.zeros((3, 6), np.float32)
    kernels.launch_elementwise(kernels.gather_rows, gathered.size, h, rows, gathered, launch=kernels.ON_GPU)
    np.testing.assert_array_equal(gathered, h[rows])
    parts = rng.standard_normal((2, 5, 6)).astype(np.float32)
    expected = parts.copy()
    weights = np.array([0.5, 0.25, 2.0], np.float32)
    expected[ranks, rows] = gathered * weights[:, None]
    kernels.launch_elementwise(kernels.scatter_scaled, gathered.size, gathered, rows, ranks, weights, parts,
                               launch=kernels.ON_GPU)
    np.testing.assert_array_equal(parts, expected)
    out = np.zeros((5, 6), np.float32)
    kernels.launch_elementwise(kernels.sum_ranks, out.size, parts, out, launch=kernels.SIMULATED)
    np.testing.assert_array_equal(out, parts[0] + parts[1])
