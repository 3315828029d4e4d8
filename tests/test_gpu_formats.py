"""The weight formats on the device (runtime/gpu/formats.py) under numba's CUDA simulator: the product kernel
(`kernels.product`) over each format's blocks against the float64 product of the same weights dequantized by
runtime/quants.py (bit-exact with gguf-py).

Tolerance: a float32 sum whose longest chain of additions is k (a lane's blocks one after another, then the
32 lanes' tree; each weight is a product of two or three float32 factors) is within about 2k * 2^-24 of the
sum of |products| (the classic gamma_k bound).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

from runtime.gpu import formats, kernels
from runtime.quants import FORMATS_BY_NAME, dequantize
from tests.synth import random_blocks


@pytest.mark.parametrize("type_name", sorted(formats.FORMAT_IDS))
@pytest.mark.parametrize("n", [1, 3])
def test_quantized_matmul_matches_the_dequantized_product(type_name, n):
    fmt = FORMATS_BY_NAME[type_name]
    rows, cols = 5, (65 if fmt.block_size == 32 else 40) * fmt.block_size  # threads take one to three blocks
    rng = np.random.default_rng(7)
    raw = random_blocks(type_name, rows * cols // fmt.block_size, rng).reshape(rows, -1)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    w = dequantize(raw, fmt, (rows, cols)).astype(np.float64)
    got = kernels.matmul(type_name, cuda.to_device(raw.view(np.uint8).reshape(rows, -1)), x)
    expected = x.astype(np.float64) @ w.T
    chain = -(-cols // fmt.block_size // kernels.WARP) * fmt.block_size + kernels.WARP  # additions in a row
    bound = 2 * chain * 2.0**-24 * (np.abs(x).astype(np.float64) @ np.abs(w).T)
    assert got.shape == (n, rows) and (np.abs(got - expected) <= bound).all(), (got, expected)
