"""The weight formats on the device (llamapyz/gpu/formats.py) under numba's CUDA simulator: the product kernel
(`kernels.product`) over each format's blocks against the float64 product of the same weights dequantized by
llamapyz/gguf/quants.py (bit-exact with gguf-py), and the float formats' values bit for bit.

Tolerance: a float32 sum whose longest chain of additions is k (a lane's blocks one after another, then the
32 lanes' tree; each weight is a product of two or three float32 factors) is within about 2k * 2^-24 of the
sum of |products| (the classic gamma_k bound).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from numba import cuda

from llamapyz.gguf.quants import FORMATS, FORMATS_BY_NAME, dequantize
from llamapyz.gpu import formats, kernels
from tests.synth import random_blocks


@pytest.fixture(autouse=True)
def fast_simulator():
    """The simulator polls its threads: a short switch interval (see tests/test_gpu_offload.py)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


# Blocks per row: lane l of a row takes blocks l, l + 32, ..., so 65 gives lanes three or two blocks, 40
# super-blocks two or one, 229 floats (a block each) eight or seven.
BLOCKS_PER_ROW = {1: 7 * kernels.WARP + 5, 32: 2 * kernels.WARP + 1, 256: kernels.WARP + 8}


@pytest.mark.parametrize("type_name", sorted(formats.FORMAT_IDS))
@pytest.mark.parametrize("n", [1, 3])
def test_quantized_matmul_matches_the_dequantized_product(type_name, n):
    fmt = FORMATS_BY_NAME[type_name]
    rows, cols = 5, BLOCKS_PER_ROW[fmt.block_size] * fmt.block_size
    rng = np.random.default_rng(7)
    raw = random_blocks(type_name, rows * cols // fmt.block_size, rng).reshape(rows, -1)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w = dequantize(raw, fmt, (rows, cols)).astype(np.float64)
    got = kernels.matmul(type_name, cuda.to_device(raw.view(np.uint8).reshape(rows, -1)), x, launch=kernels.ON_GPU)
    expected = x.astype(np.float64) @ w.T
    chain = -(-cols // fmt.block_size // kernels.WARP) * fmt.block_size + kernels.WARP  # additions in a row
    bound = 2 * chain * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w).T)
    assert got.shape == (n, rows) and (np.abs(got - expected) <= bound).all(), (got, expected)


@cuda.jit
def _block_values(fmt, raw, ones, out):
    """out[i] = block i of raw (a one-value float format) times 1.0: its value, -0 included; one thread."""
    for i in range(out.shape[0]):
        out[i] = formats.block_dot(fmt, raw, i, ones, i)


FLOAT_BITS = {"F32": (np.uint32, 8, 23), "F16": (np.uint16, 5, 10), "BF16": (np.uint16, 8, 7)}


def _float_patterns(type_name: str) -> np.ndarray:
    """Bit patterns of a float format covering every class: each sign and exponent (zeros, subnormals,
    normals, infinities, NaNs) with the smallest, largest, lowest and highest-bit fractions, then random ones."""
    dtype, exponent_bits, fraction_bits = FLOAT_BITS[type_name]
    sign = np.arange(2, dtype=np.uint64).reshape(-1, 1, 1) << (exponent_bits + fraction_bits)
    exponent = np.arange(1 << exponent_bits, dtype=np.uint64).reshape(1, -1, 1) << fraction_bits
    fraction = np.array([0, 1, 1 << (fraction_bits - 1), (1 << fraction_bits) - 1], np.uint64).reshape(1, 1, -1)
    edges = (sign | exponent | fraction).reshape(-1).astype(dtype)
    random = np.random.default_rng(11).integers(0, np.iinfo(dtype).max, 1024, dtype=dtype, endpoint=True)
    return np.concatenate([edges, random])


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_formats_decode_exactly(type_name):
    bits = _float_patterns(type_name)
    raw = bits.view(np.uint8)
    expected = dequantize(raw, FORMATS_BY_NAME[type_name], (len(bits),))
    out = np.zeros(len(bits), np.float32)
    _block_values[1, 1](formats.FORMAT_IDS[type_name], raw, np.ones(len(bits), np.float32), out)
    nan = np.isnan(expected)
    assert nan.any() and (expected == 0).any() and np.signbit(expected[expected == 0]).any()
    assert (np.isnan(out) == nan).all()
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@cuda.jit
def _dispatch(fmts, raw, ones, values, elements):
    """values[i] = the first block of raw (a float format's value) read as format fmts[i], and elements[i]
    that format's elements per block; one thread."""
    for i in range(fmts.shape[0]):
        values[i] = formats.block_dot(fmts[i], raw, 0, ones, 0)
        elements[i] = formats.block_elements(fmts[i])


def test_each_device_format_is_its_records_type_id_and_any_other_id_gives_nan():
    """One id space: `block_dot` and `block_elements` switch on the ggml type id of `DEVICE_DOTS`' records;
    an id without a block dot gives NaN over one-element blocks, never another format's value."""
    decoded = {f.name for f in FORMATS.values() if f.supported} - {"I8", "I16", "I32", "I64", "F64"}
    assert set(formats.FORMAT_IDS) == set(formats.BLOCKS) == decoded  # every float and quant format we decode
    for record in formats.DEVICE_DOTS.formats():
        assert formats.FORMAT_IDS[record.name] == record.type_id
        assert formats.BLOCKS[record.name] == (record.block_size, record.type_size)
    raw = np.array([1.5], np.float32).view(np.uint8)
    ids = [FORMATS_BY_NAME[n].type_id for n in ("F32", "Q8_1", "I32")] + [99, -1]
    values, elements = np.zeros(len(ids), np.float32), np.zeros(len(ids), np.int64)
    _dispatch[1, 1](np.array(ids, np.int64), raw, np.ones(1, np.float32), values, elements)
    assert values[0] == 1.5 and np.isnan(values[1:]).all()
    assert elements.tolist() == [1] * len(ids)


@pytest.mark.parametrize("launch", [kernels.ON_GPU, kernels.SIMULATED], ids=["on_gpu", "simulated"])
def test_a_tokens_product_does_not_depend_on_the_tokens_beside_it(launch):
    """11 tokens in one call (two token groups, the second partly empty) give each token the same bits as
    that token alone, and as the same token placed elsewhere: decode and prefill agree exactly."""
    rng = np.random.default_rng(11)
    rows, cols = 6, 4 * 32
    raw = random_blocks("Q4_0", rows * cols // 32, rng).reshape(rows, -1).view(np.uint8)
    w = cuda.to_device(np.ascontiguousarray(raw))
    bias = rng.standard_normal(rows).astype(np.float32)
    x = rng.standard_normal((11, cols)).astype(np.float32)
    together = kernels.matmul("Q4_0", w, x, bias, launch=launch)
    for t in (0, 7, 8, 10):
        alone = kernels.matmul("Q4_0", w, x[t:t + 1], bias, launch=launch)
        np.testing.assert_array_equal(alone[0], together[t])
    shuffled = kernels.matmul("Q4_0", w, x[::-1].copy(), bias, launch=launch)
    np.testing.assert_array_equal(shuffled[::-1], together)
