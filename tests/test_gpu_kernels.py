"""runtime/gpu/kernels.py under numba's CUDA simulator (tests/conftest.py switches it on; CI has no GPU):
each kernel against its numpy twin on small synthetic shapes.

Tolerances: the quantized products are compared with the float64 product of the dequantized weights
(runtime/quants.py, bit-exact with gguf-py) and x. A float32 sum whose longest chain of additions is k
(a thread's blocks one after another, then the 32 threads' tree; each weight is a product of two or three
float32 factors) is within about 2k * 2^-24 of the sum of |products| (the classic gamma_k bound).
RMSNorm and rope do a handful of float32 operations per element: 1e-6 relative.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from numba import config, cuda

from runtime.gpu import Device, formats, kernels, probe
from runtime.model.ops import Rope
from tests.reference_model import rms_norm, rope


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
    kernels.rms_norm[(3, 1), kernels.WARP](x, 1, weight, np.float32(1e-6), out)
    np.testing.assert_allclose(out, rms_norm(x, weight, 1e-6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
def test_rope_matches_its_twin_in_both_styles(neox):
    n, n_heads, head_dim, n_rot = 4, 3, 16, 12  # dimensions past n_rot stay as they are
    x = np.random.default_rng(3).standard_normal((n, n_heads * head_dim)).astype(np.float32)
    positions = np.array([0, 5, 6, 30])
    table = Rope(10000.0, n_rot, 64, neox, freq_scale=0.5, attn_factor=1.1)
    got = x.copy()
    kernels.rope[(n, n_heads), 8](got, n_heads, positions, table.cos, table.sin, n_rot, neox)
    expected = rope(x.reshape(n, n_heads, head_dim), positions, 10000.0, n_rot, neox, freq_scale=0.5,
                    attn_factor=1.1).reshape(n, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_the_ngl_warning_says_why_no_layer_is_offloaded(monkeypatch):
    from runtime.cli import gpu_unavailable_reason

    assert gpu_unavailable_reason() == ("GPU offload is not implemented in this build yet "
                                        "(found numba's CUDA simulator)")
    import numba

    monkeypatch.delattr(numba, "cuda")  # as where numba-cuda is not installed
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    assert gpu_unavailable_reason().startswith("numba-cuda is not installed")


@pytest.mark.parametrize("gelu", [False, True])
def test_gated_activation_matches_its_twin(gelu):
    from runtime.model.ops import gated_ffn_input

    gate, up = np.random.default_rng(4).standard_normal((2, 2, 35)).astype(np.float32)
    out = np.zeros((2, 35), np.float32)
    kernels.gated_activation[3, 32](gate, up, gelu, out)
    np.testing.assert_allclose(out, gated_ffn_input(gate, up, "gelu_tanh" if gelu else "silu"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("window, softcap", [(0, 0.0), (40, 0.0), (0, 5.0)])
def test_attention_over_a_half_kv_cache_matches_its_twin(window, softcap):
    """3 queries at positions 80-82 over keys 2..82 (4 query heads sharing 2 kv heads): each of the 32
    threads takes two or three keys, so its running softmax rescales what it summed. float32 sums of up to
    81 scores and 16-element dot products in another order: 1e-5 relative."""
    from runtime.model.ops import attention_numpy

    rng = np.random.default_rng(5)
    n, n_head, n_kv, hd, s = 3, 4, 2, 16, 81
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    keys, values = rng.standard_normal((2, s, n_kv, hd)).astype(np.float16)
    out = np.zeros((n, n_head, hd), np.float32)
    kernels.attention[(n, n_head), kernels.WARP](q, keys.view(np.uint16), values.view(np.uint16), 80, 2, window,
                                                  np.float32(0.5), np.float32(softcap), out)
    expected = attention_numpy(q, keys, values, 80, 2, window, 0.5, softcap)
    np.testing.assert_allclose(out.reshape(n, -1), expected, rtol=1e-5, atol=1e-6)
