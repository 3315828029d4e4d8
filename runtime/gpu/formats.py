"""The weight formats on the device: each format's block dot product, and one dispatch over them.

Weights stay in their GGUF encoding on the GPU, as rows of raw block bytes (`runtime/quants.py`'s layout);
activations are float32. A block's float16 scale is decoded with integer operations (`half_at`), which every
CUDA architecture and the simulator compute alike.

`block_dot(fmt, row, b, x, x0)` is block b of a weight row (uint8) times x[x0:x0 + block elements]: the one
place the product kernels (`kernels.py`) read weights, whatever their format. A format is a small integer
(`FORMAT_IDS`) because numba cannot pick a device function by a runtime value; `BLOCKS` gives each format's
block as (elements, bytes).
"""

from __future__ import annotations

import math

from numba import cuda, float32, int32

FORMAT_IDS = {name: i for i, name in enumerate(("Q8_0", "Q4_1", "Q4_K", "Q6_K"))}
Q8_0, Q4_1, Q4_K, Q6_K = (FORMAT_IDS[name] for name in ("Q8_0", "Q4_1", "Q4_K", "Q6_K"))
BLOCKS = {"Q8_0": (32, 34), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q6_K": (256, 210)}


@cuda.jit(device=True)
def half_at(row, offset):
    """The little-endian float16 at row[offset:offset + 2] as a float32."""
    return half_value(int32(row[offset]) | (int32(row[offset + 1]) << 8))


@cuda.jit(device=True)
def half_value(bits):
    """An IEEE float16 given as its 16 bits, as a float32 (exact)."""
    exponent = (bits >> 10) & 0x1F
    mantissa = float32(bits & 0x3FF)
    if exponent == 0:
        value = mantissa * float32(5.960464477539063e-08)  # 2^-24: subnormal
    elif exponent == 31:
        value = float32(math.inf) if mantissa == 0 else float32(math.nan)
    else:
        value = (float32(1024.0) + mantissa) * float32(math.pow(2.0, exponent - 25))
    return -value if bits & 0x8000 else value


@cuda.jit(device=True)
def _dot_q8_0(row, base, x, x0):
    """d, qs[32] (signed)."""
    block = float32(0.0)
    for j in range(32):
        q = int32(row[base + 2 + j])
        block += float32(q - 256 if q > 127 else q) * x[x0 + j]
    return half_at(row, base) * block


@cuda.jit(device=True)
def _dot_q4_1(row, base, x, x0):
    """d, m, qs[16]: element j is the low nibble of qs[j] (j < 16) or the high nibble of qs[j - 16], times d,
    plus m."""
    d, m = half_at(row, base), half_at(row, base + 2)
    block = float32(0.0)
    for j in range(16):
        byte = int32(row[base + 4 + j])
        block += (d * float32(byte & 0xF) + m) * x[x0 + j] + (d * float32(byte >> 4) + m) * x[x0 + 16 + j]
    return block


@cuda.jit(device=True)
def _k4_scale_min(row, base, j):
    """Sub-block j's 6-bit scale and min of the Q4_K super-block at row[base:] (ggml's get_scale_min_k4)."""
    scales = base + 4
    if j < 4:
        return int32(row[scales + j]) & 63, int32(row[scales + 4 + j]) & 63
    k = j - 4
    packed = int32(row[scales + 8 + k])
    return ((packed & 0xF) | ((int32(row[scales + k]) >> 6) << 4),
            (packed >> 4) | ((int32(row[scales + 4 + k]) >> 6) << 4))


@cuda.jit(device=True)
def _dot_q4_k(row, base, x, x0):
    """d, dmin, scales[12], qs[128]: sub-block j (32 values) is the low (even j) or high (odd j) nibbles of
    qs[32 * (j // 2):][:32], times d * scale_j, minus dmin * min_j."""
    d, dmin = half_at(row, base), half_at(row, base + 2)
    block = float32(0.0)
    for j in range(8):
        scale, low = _k4_scale_min(row, base, j)
        ds, dm = d * float32(scale), dmin * float32(low)
        shift = 4 * (j % 2)
        for i in range(32):
            q = (int32(row[base + 16 + 32 * (j // 2) + i]) >> shift) & 0xF
            block += (ds * float32(q) - dm) * x[x0 + 32 * j + i]
    return block


@cuda.jit(device=True)
def _dot_q6_k(row, base, x, x0):
    """ql[128], qh[64], scales[16] (signed), d: value e = 128 h + 32 g + i is the nibble (g // 2) of
    ql[64 h + 32 (g % 2) + i], bits 2g..2g+1 of qh[32 h + i] above it, minus 32, times d * scales[e // 16]."""
    d = half_at(row, base + 208)
    block = float32(0.0)
    for e in range(256):
        h, g, i = e // 128, (e % 128) // 32, e % 32
        low = (int32(row[base + 64 * h + 32 * (g % 2) + i]) >> (4 * (g // 2))) & 0xF
        high = (int32(row[base + 128 + 32 * h + i]) >> (2 * g)) & 3
        scale = int32(row[base + 192 + e // 16])
        scale = scale - 256 if scale > 127 else scale
        block += d * float32(scale) * float32((low | (high << 4)) - 32) * x[x0 + e]
    return block


@cuda.jit(device=True)
def block_elements(fmt):
    """Elements per block of format fmt."""
    if fmt == Q8_0 or fmt == Q4_1:
        return 32
    return 256


@cuda.jit(device=True)
def block_dot(fmt, row, b, x, x0):
    """Block b of a weight row of format fmt, dotted with x[x0:x0 + block_elements(fmt)]."""
    if fmt == Q8_0:
        return _dot_q8_0(row, b * 34, x, x0)
    if fmt == Q4_1:
        return _dot_q4_1(row, b * 20, x, x0)
    if fmt == Q4_K:
        return _dot_q4_k(row, b * 144, x, x0)
    return _dot_q6_k(row, b * 210, x, x0)
