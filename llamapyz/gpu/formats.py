"""The weight formats on the device: each format's block dot product, and one dispatch over them.

Weights stay in their GGUF encoding on the GPU, as rows of raw block bytes (`llamapyz/gguf/quants.py`'s layout);
activations are float32. Every format `llamapyz/gguf/quants.py` decodes is here but the integer types: the 32-value
quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the k-quants (Q2_K to Q6_K), the non-linear 4-bit ones (IQ4_NL,
IQ4_XS, MXFP4: a table of 16 levels per nibble), the grid ones (IQ1_S to IQ3_S: per 8 or 4 values an entry of a
fixed grid, with signs), the ternary ones (TQ1_0, TQ2_0) and the plain floats (F32, F16, BF16, a
"block" of one value, so that a warp's lanes read consecutive elements). Floats and float16 scales are
decoded with integer operations and exact powers of two (`half_at`, `_binary32_value`), which every CUDA
architecture and the simulator compute alike, subnormals, infinities and NaN included.

Each format's block dot is one device function below, `_dot_<fmt>(row, base, x, x0)`: the block at byte
`base` of a weight row (uint8) times x[x0:x0 + block elements]; `@DEVICE_DOTS.of(name)` attaches it to its
record in `llamapyz/gguf/quants.py`'s table. `block_dot(fmt, row, b, x, x0)` (block b of a row) is the one
place the product kernels (`kernels.py`) read weights, whatever their format: a format is its record's ggml
type id (`FORMAT_IDS`), because numba cannot pick a device function by a runtime value, and `block_dot` is
generated from `DEVICE_DOTS`, one branch per format with the record's block bytes as the stride (an id with
no block dot gives NaN). `BLOCKS` gives each format's block as (elements, bytes), from the same records.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32

from ..gguf.iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID
from ..gguf.quants import IQ4_NL_VALUES, MXFP4_VALUES, PARITY_SIGNS, KernelTable

DEVICE_DOTS: KernelTable = KernelTable("GPU block dot")  # in the order `block_dot` tries them: the most used first


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
def _binary32_value(negative, exponent, fraction, fraction_bits):
    """The float with float32's 8-bit exponent (bias 127) and a fraction of fraction_bits bits (F32: 23, BF16:
    7), as a float32 (exact: the significand has at most 24 bits and ldexp scales by a power of two)."""
    if exponent == 255:
        value = float32(math.inf) if fraction == 0 else float32(math.nan)
    else:
        significand = fraction if exponent == 0 else fraction | (1 << fraction_bits)  # subnormal: no hidden 1
        value = float32(math.ldexp(float32(significand), int(max(exponent, 1) - 127 - fraction_bits)))
    return -value if negative else value


@DEVICE_DOTS.of("Q8_0")
@cuda.jit(device=True)
def _dot_q8_0(row, base, x, x0):
    """d, qs[32] (signed)."""
    block = float32(0.0)
    for j in range(32):
        q = int32(row[base + 2 + j])
        block += float32(q - 256 if q > 127 else q) * x[x0 + j]
    return half_at(row, base) * block


@DEVICE_DOTS.of("Q4_1")
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


@DEVICE_DOTS.of("Q4_K")
@cuda.jit(device=True)
def _dot_q4_k(row, base, x, x0):
    """d, dmin, scales[12], qs[128]: sub-block j (32 values) is the low (even j) or high (odd j) nibbles of
    qs[32 * (j // 2):][:32], times d * scale_j, minus dmin * min_j."""
    return _dot_scale_min_k(row, base, x, x0, 16, False)


@cuda.jit(device=True)
def _dot_scale_min_k(row, base, x, x0, qs, high_bits):
    """Q4_K's and Q5_K's dot: the nibbles at row[base + qs:], with high_bits (Q5_K) bit j of qh[i] (at
    row[base + 16:]) above value i of sub-block j."""
    d, dmin = half_at(row, base), half_at(row, base + 2)
    block = float32(0.0)
    for j in range(8):
        scale, low = _k4_scale_min(row, base, j)
        ds, dm = d * float32(scale), dmin * float32(low)
        shift = 4 * (j % 2)
        for i in range(32):
            q = (int32(row[base + qs + 32 * (j // 2) + i]) >> shift) & 0xF
            if high_bits:
                q |= ((int32(row[base + 16 + i]) >> j) & 1) << 4
            block += (ds * float32(q) - dm) * x[x0 + 32 * j + i]
    return block


@DEVICE_DOTS.of("Q6_K")
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


@DEVICE_DOTS.of("Q4_0")
@cuda.jit(device=True)
def _dot_q4_0(row, base, x, x0):
    """d, qs[16]: element j is the low nibble of qs[j] (j < 16) or the high nibble of qs[j - 16], minus 8,
    times d."""
    block = float32(0.0)
    for j in range(16):
        byte = int32(row[base + 2 + j])
        block += float32((byte & 0xF) - 8) * x[x0 + j] + float32((byte >> 4) - 8) * x[x0 + 16 + j]
    return half_at(row, base) * block


@cuda.jit(device=True)
def _q5_value(row, qh, qs, j):
    """Element j's 5-bit value in a Q5_0/Q5_1 block whose qh[4] and qs[16] start at row[qh], row[qs]: nibble
    j // 16 of qs[j % 16] below bit j of qh's 32 (little-endian) bits."""
    low = (int32(row[qs + j % 16]) >> (4 * (j // 16))) & 0xF
    return low | (((int32(row[qh + j // 8]) >> (j % 8)) & 1) << 4)


@DEVICE_DOTS.of("Q5_0")
@cuda.jit(device=True)
def _dot_q5_0(row, base, x, x0):
    """d, qh[4], qs[16]: element j is its 5-bit value (`_q5_value`) minus 16, times d."""
    block = float32(0.0)
    for j in range(32):
        block += float32(_q5_value(row, base + 2, base + 6, j) - 16) * x[x0 + j]
    return half_at(row, base) * block


@DEVICE_DOTS.of("Q5_1")
@cuda.jit(device=True)
def _dot_q5_1(row, base, x, x0):
    """d, m, qh[4], qs[16]: element j is its 5-bit value (`_q5_value`) times d, plus m."""
    d, m = half_at(row, base), half_at(row, base + 2)
    block = float32(0.0)
    for j in range(32):
        block += (d * float32(_q5_value(row, base + 4, base + 8, j)) + m) * x[x0 + j]
    return block


@DEVICE_DOTS.of("Q2_K")
@cuda.jit(device=True)
def _dot_q2_k(row, base, x, x0):
    """scales[16], qs[64], d, dmin: value e = 128 h + 32 g + i is bits 2g..2g+1 of qs[32 h + i], times d times
    the low nibble of scales[e // 16], minus dmin times its high nibble."""
    d, dmin = half_at(row, base + 80), half_at(row, base + 82)
    block = float32(0.0)
    for s in range(16):  # sub-block s: values e = 16 s + k, h = s // 8, g = s % 8 // 2, i = 16 (s % 2) + k
        scale = int32(row[base + s])
        ds, dm = d * float32(scale & 0xF), dmin * float32(scale >> 4)
        first, shift = base + 16 + 32 * (s // 8) + 16 * (s % 2), 2 * (s % 8 // 2)
        for k in range(16):
            q = (int32(row[first + k]) >> shift) & 3
            block += (ds * float32(q) - dm) * x[x0 + 16 * s + k]
    return block


@cuda.jit(device=True)
def _k3_scale(row, base, s):
    """Sub-block s's signed 6-bit scale in the Q3_K super-block at row[base:]: the low nibble of scales[s]
    (s < 8) or the high one of scales[s - 8], below bits 2 (s // 4)..+1 of scales[8 + s % 4], minus 32."""
    scales = base + 96
    low = (int32(row[scales + s % 8]) >> (4 * (s // 8))) & 0xF
    high = (int32(row[scales + 8 + s % 4]) >> (2 * (s // 4))) & 3
    return (low | (high << 4)) - 32


@DEVICE_DOTS.of("Q3_K")
@cuda.jit(device=True)
def _dot_q3_k(row, base, x, x0):
    """hmask[32], qs[64], scales[12], d: value e = 128 h + 32 g + i is bits 2g..2g+1 of qs[32 h + i], minus 4
    where bit e // 32 of hmask[i] is clear, times d * scale(e // 16) (`_k3_scale`)."""
    d = half_at(row, base + 108)
    block = float32(0.0)
    for s in range(16):  # sub-block s: values e = 16 s + k, c = e // 32 = s // 2, i = 16 (s % 2) + k
        c, i0 = s // 2, 16 * (s % 2)
        sub = float32(0.0)
        for k in range(16):
            low = (int32(row[base + 32 + 32 * (c // 4) + i0 + k]) >> (2 * (c % 4))) & 3
            high = (int32(row[base + i0 + k]) >> c) & 1
            sub += float32(low - 4 + 4 * high) * x[x0 + 16 * s + k]
        block += d * float32(_k3_scale(row, base, s)) * sub
    return block


@DEVICE_DOTS.of("Q5_K")
@cuda.jit(device=True)
def _dot_q5_k(row, base, x, x0):
    """d, dmin, scales[12], qh[32], qs[128]: Q4_K's values (`_dot_q4_k`) with bit j of qh[i] above value i of
    sub-block j."""
    return _dot_scale_min_k(row, base, x, x0, 48, True)


IQ4_NL_LEVELS = np.array(IQ4_NL_VALUES, np.float32)  # global arrays: constants in the compiled kernel
MXFP4_LEVELS = np.array(MXFP4_VALUES, np.float32)


@cuda.jit(device=True)
def _levels_dot(levels, row, qs, x, x0):
    """The 32 levels[nibble] of the 16 bytes at row[qs:] (low nibbles first) dotted with x[x0:x0 + 32]."""
    block = float32(0.0)
    for j in range(16):
        byte = int32(row[qs + j])
        block += levels[byte & 0xF] * x[x0 + j] + levels[byte >> 4] * x[x0 + 16 + j]
    return block


@DEVICE_DOTS.of("IQ4_NL")
@cuda.jit(device=True)
def _dot_iq4_nl(row, base, x, x0):
    """d, qs[16]: element j is the level (IQ4_NL_VALUES) of the low nibble of qs[j] (j < 16) or the high
    nibble of qs[j - 16], times d."""
    return half_at(row, base) * _levels_dot(IQ4_NL_LEVELS, row, base + 2, x, x0)


@DEVICE_DOTS.of("IQ4_XS")
@cuda.jit(device=True)
def _dot_iq4_xs(row, base, x, x0):
    """d, scales_h (u16), scales_l[4], qs[128]: sub-block j (32 values) is IQ4_NL's block of the 16 bytes at
    qs[16 j:], times d * (its 6-bit scale - 32): the low (even j) or high nibble of scales_l[j // 2] below bits
    2j..2j+1 of scales_h."""
    d = half_at(row, base)
    high = int32(row[base + 2]) | (int32(row[base + 3]) << 8)
    block = float32(0.0)
    for j in range(8):
        scale = ((int32(row[base + 4 + j // 2]) >> (4 * (j % 2))) & 0xF) | (((high >> (2 * j)) & 3) << 4)
        block += d * float32(scale - 32) * _levels_dot(IQ4_NL_LEVELS, row, base + 8 + 16 * j, x, x0 + 32 * j)
    return block


@DEVICE_DOTS.of("MXFP4")
@cuda.jit(device=True)
def _dot_mxfp4(row, base, x, x0):
    """e (E8M0), qs[16]: element j is the doubled FP4 level (MXFP4_VALUES) of its nibble, as IQ4_NL's, times
    the halved scale 2^(e - 128) (exact: ldexp of a power of two, subnormal for e < 2)."""
    d = float32(math.ldexp(float32(1.0), int(int32(row[base]) - 128)))
    return d * _levels_dot(MXFP4_LEVELS, row, base + 1, x, x0)


@DEVICE_DOTS.of("TQ2_0")
@cuda.jit(device=True)
def _dot_tq2_0(row, base, x, x0):
    """qs[64], d: value e = 128 h + 32 g + i is bits 2g..2g+1 of qs[32 h + i] (Q2_K's order), minus 1, times d."""
    block = float32(0.0)
    for e in range(256):
        q = (int32(row[base + 32 * (e // 128) + e % 32]) >> (2 * ((e // 32) % 4))) & 3
        block += float32(q - 1) * x[x0 + e]
    return half_at(row, base + 64) * block


@cuda.jit(device=True)
def _trit(byte, power):
    """A TQ1_0 byte's base-3 digit `power` (3^n) as ((byte * 3^n mod 256) * 3) >> 8, minus 1: -1, 0 or 1."""
    return ((((byte * power) & 255) * 3) >> 8) - 1


@DEVICE_DOTS.of("TQ1_0")
@cuda.jit(device=True)
def _dot_tq1_0(row, base, x, x0):
    """qs[48], qh[4], d: value e < 160 is digit e // 32 of qs[e % 32], e < 240 digit (e - 160) // 16 of
    qs[32 + e % 16], else digit (e - 240) // 4 of qh[e % 4] (`_trit`), times d."""
    block = float32(0.0)
    for e in range(256):
        if e < 160:
            q = _trit(int32(row[base + e % 32]), int32(3) ** (e // 32))
        elif e < 240:
            q = _trit(int32(row[base + 32 + e % 16]), int32(3) ** ((e - 160) // 16))
        else:
            q = _trit(int32(row[base + 48 + e % 4]), int32(3) ** ((e - 240) // 4))
        block += float32(q) * x[x0 + e]
    return half_at(row, base + 52) * block


# IQ grids (`gguf/iq_grids.py`, int8: 33 KiB in all): global arrays, constants in the compiled kernels
IQ2XXS, IQ2XS, IQ2S = (np.ascontiguousarray(g) for g in (IQ2XXS_GRID, IQ2XS_GRID, IQ2S_GRID))
IQ3XXS, IQ3S, IQ1S = (np.ascontiguousarray(g) for g in (IQ3XXS_GRID, IQ3S_GRID, IQ1S_GRID))
PARITY = np.array(PARITY_SIGNS, np.uint8)


@cuda.jit(device=True)
def _u16_at(row, offset):
    return int32(row[offset]) | (int32(row[offset + 1]) << 8)


@cuda.jit(device=True)
def _signed_grid8(grid, index, signs, x, x0):
    """Entry `index` of an 8-value grid, value j negated where bit j of the sign byte is set, dotted with
    x[x0:x0 + 8]."""
    block = float32(0.0)
    for j in range(8):
        value = float32(grid[index, j]) * x[x0 + j]
        block += -value if (signs >> j) & 1 else value
    return block


@DEVICE_DOTS.of("IQ2_XXS")
@cuda.jit(device=True)
def _dot_iq2_xxs(row, base, x, x0):
    """d, then per 32 values 4 grid index bytes and a word of 4 7-bit sign fields (completed to even parity)
    and s at bits 28..31: d * (0.5 + s) * 0.25 times the signed grid entries."""
    d = half_at(row, base)
    block = float32(0.0)
    for ib in range(8):
        q = base + 2 + 8 * ib
        word = _u16_at(row, q + 4) | (_u16_at(row, q + 6) << 16)
        sub = float32(0.0)
        for k in range(4):
            signs = int32(PARITY[(word >> (7 * k)) & 127])
            sub += _signed_grid8(IQ2XXS, int32(row[q + k]), signs, x, x0 + 32 * ib + 8 * k)
        block += d * (float32(0.5) + float32((word >> 28) & 15)) * float32(0.25) * sub
    return block


@DEVICE_DOTS.of("IQ2_XS")
@cuda.jit(device=True)
def _dot_iq2_xs(row, base, x, x0):
    """d, qs[32] 16-bit words (9-bit grid index, 7-bit sign field), scales[8]: a nibble s per 16 values,
    d * (0.5 + s) * 0.25."""
    d = half_at(row, base)
    block = float32(0.0)
    for h in range(16):  # 16 values: two grid entries
        s = (int32(row[base + 66 + h // 2]) >> (4 * (h % 2))) & 15
        sub = float32(0.0)
        for k in range(2 * h, 2 * h + 2):
            word = _u16_at(row, base + 2 + 2 * k)
            sub += _signed_grid8(IQ2XS, word & 511, int32(PARITY[word >> 9]), x, x0 + 8 * k)
        block += d * (float32(0.5) + float32(s)) * float32(0.25) * sub
    return block


@DEVICE_DOTS.of("IQ2_S")
@cuda.jit(device=True)
def _dot_iq2_s(row, base, x, x0):
    """d, qs[32], signs[32], qh[8], scales[8]: per 8 values the index qs[k] | bits 2(k%4)..+1 of qh[k//4] << 8
    and a sign byte; a nibble s per 16 values, d * (0.5 + s) * 0.25."""
    d = half_at(row, base)
    block = float32(0.0)
    for h in range(16):
        s = (int32(row[base + 74 + h // 2]) >> (4 * (h % 2))) & 15
        sub = float32(0.0)
        for k in range(2 * h, 2 * h + 2):
            index = int32(row[base + 2 + k]) | (((int32(row[base + 66 + k // 4]) >> (2 * (k % 4))) & 3) << 8)
            sub += _signed_grid8(IQ2S, index, int32(row[base + 34 + k]), x, x0 + 8 * k)
        block += d * (float32(0.5) + float32(s)) * float32(0.25) * sub
    return block


@cuda.jit(device=True)
def _signed_grid4(grid, index, signs, shift, x, x0):
    """Entry `index` of a 4-value grid, value j negated where bit shift + j of `signs` is set, dotted with
    x[x0:x0 + 4]."""
    block = float32(0.0)
    for j in range(4):
        value = float32(grid[index, j]) * x[x0 + j]
        block += -value if (signs >> (shift + j)) & 1 else value
    return block


@DEVICE_DOTS.of("IQ3_XXS")
@cuda.jit(device=True)
def _dot_iq3_xxs(row, base, x, x0):
    """d, qs[64] (a grid index per 4 values), 8 words of 4 7-bit sign fields and s at bits 28..31:
    d * (0.5 + s) * 0.5 per 32 values."""
    d = half_at(row, base)
    block = float32(0.0)
    for ib in range(8):
        w = base + 66 + 4 * ib
        word = _u16_at(row, w) | (_u16_at(row, w + 2) << 16)
        sub = float32(0.0)
        for m in range(8):
            signs = int32(PARITY[(word >> (7 * (m // 2))) & 127])
            sub += _signed_grid4(IQ3XXS, int32(row[base + 2 + 8 * ib + m]), signs, 4 * (m % 2), x, x0 + 32 * ib + 4 * m)
        block += d * (float32(0.5) + float32((word >> 28) & 15)) * float32(0.5) * sub
    return block


@DEVICE_DOTS.of("IQ3_S")
@cuda.jit(device=True)
def _dot_iq3_s(row, base, x, x0):
    """d, qs[64], qh[8], signs[32], scales[4]: per 4 values the index qs[m] | bit m%8 of qh[m//8] << 8, sign
    bytes, a nibble s per 32 values: d * (1 + 2 s)."""
    d = half_at(row, base)
    block = float32(0.0)
    for ib in range(8):
        s = (int32(row[base + 106 + ib // 2]) >> (4 * (ib % 2))) & 15
        sub = float32(0.0)
        for m in range(8):
            index = int32(row[base + 2 + 8 * ib + m]) | (((int32(row[base + 66 + ib]) >> m) & 1) << 8)
            signs = int32(row[base + 74 + 4 * ib + m // 2])
            sub += _signed_grid4(IQ3S, index, signs, 4 * (m % 2), x, x0 + 32 * ib + 4 * m)
        block += d * float32(1 + 2 * s) * sub
    return block


@cuda.jit(device=True)
def _iq1_grid8(index, delta, x, x0):
    """(IQ1_S's grid entry `index`, -1/0/1, plus delta) dotted with x[x0:x0 + 8]."""
    block = float32(0.0)
    for j in range(8):
        block += (float32(IQ1S[index, j]) + delta) * x[x0 + j]
    return block


@DEVICE_DOTS.of("IQ1_S")
@cuda.jit(device=True)
def _dot_iq1_s(row, base, x, x0):
    """d, qs[32], qh[8] words: per 8 values the index qs[k] | 3 bits of qh << 8; per 32 s at bits 12..14
    (d * (2 s + 1)) and the sign of the delta of 1/8 at bit 15."""
    d = half_at(row, base)
    block = float32(0.0)
    for ib in range(8):
        qh = _u16_at(row, base + 34 + 2 * ib)
        delta = float32(-0.125) if qh & 0x8000 else float32(0.125)
        sub = float32(0.0)
        for k in range(4):
            index = int32(row[base + 2 + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
            sub += _iq1_grid8(index, delta, x, x0 + 32 * ib + 8 * k)
        block += d * float32(2 * ((qh >> 12) & 7) + 1) * sub
    return block


@DEVICE_DOTS.of("IQ1_M")
@cuda.jit(device=True)
def _dot_iq1_m(row, base, x, x0):
    """qs[32], qh[16], scales[4] words: per 8 values the index qs[k] | 3 bits of a qh nibble << 8, the nibble's
    top bit the delta's sign; per 16 values a 3-bit scale s (d * (2 s + 1)); the words' top nibbles are d."""
    bits = int32(0)
    for i in range(4):
        bits |= (_u16_at(row, base + 48 + 2 * i) >> 12) << (4 * i)
    d = half_value(bits)
    block = float32(0.0)
    for h in range(16):
        s = (_u16_at(row, base + 48 + 2 * (h // 4)) >> (3 * (h % 4))) & 7
        sub = float32(0.0)
        for k in range(2 * h, 2 * h + 2):
            nibble = (int32(row[base + 32 + k // 2]) >> (4 * (k % 2))) & 15
            delta = float32(-0.125) if nibble & 8 else float32(0.125)
            sub += _iq1_grid8(int32(row[base + k]) | ((nibble & 7) << 8), delta, x, x0 + 8 * k)
        block += d * float32(2 * s + 1) * sub
    return block


@DEVICE_DOTS.of("F32")
@cuda.jit(device=True)
def _dot_f32(row, base, x, x0):
    """One little-endian float32: sign, 8 exponent bits, 23 fraction bits."""
    b2, b3 = int32(row[base + 2]), int32(row[base + 3])
    fraction = ((b2 & 0x7F) << 16) | (int32(row[base + 1]) << 8) | int32(row[base])
    return _binary32_value(b3 >> 7, ((b3 & 0x7F) << 1) | (b2 >> 7), fraction, 23) * x[x0]


@DEVICE_DOTS.of("F16")
@cuda.jit(device=True)
def _dot_f16(row, base, x, x0):
    """One little-endian float16."""
    return half_at(row, base) * x[x0]


@DEVICE_DOTS.of("BF16")
@cuda.jit(device=True)
def _dot_bf16(row, base, x, x0):
    """One little-endian bfloat16, the top half of a float32: sign, 8 exponent bits, 7 fraction bits."""
    b0, b1 = int32(row[base]), int32(row[base + 1])
    return _binary32_value(b1 >> 7, ((b1 & 0x7F) << 1) | (b0 >> 7), b0 & 0x7F, 7) * x[x0]


@cuda.jit(device=True)
def _no_block_dot(fmt, row, b, x, x0):
    """A format with no block dot (no id of `FORMAT_IDS`): NaN, never another format's product."""
    return float32(math.nan)


@cuda.jit(device=True)
def _no_block_elements(fmt):
    """A format with no block dot: one element per block, so that its (NaN) products cover every column."""
    return 1


def _block_dot(cases: list):
    """`block_dot` over cases [(ggml type id, bytes per block, block dot)]: the first case's dot where fmt is
    its id, else the rest's (numba compiles each link's id and stride in as constants)."""
    (type_id, n_bytes, dot), rest = cases[0], cases[1:]
    otherwise = _block_dot(rest) if rest else _no_block_dot

    @cuda.jit(device=True)
    def dispatch(fmt, row, b, x, x0):
        if fmt == type_id:
            return dot(row, b * n_bytes, x, x0)
        return otherwise(fmt, row, b, x, x0)

    return dispatch


def _block_elements(cases: list):
    """`block_elements` over cases [(ggml type id, elements per block)], as `_block_dot`."""
    (type_id, elements), rest = cases[0], cases[1:]
    otherwise = _block_elements(rest) if rest else _no_block_elements

    @cuda.jit(device=True)
    def elements_of(fmt):
        if fmt == type_id:
            return elements
        return otherwise(fmt)

    return elements_of


FORMAT_IDS = {record.name: record.type_id for record in DEVICE_DOTS.formats()}  # the device's formats
BLOCKS = {record.name: (record.block_size, record.type_size) for record in DEVICE_DOTS.formats()}
block_dot = _block_dot([(record.type_id, record.type_size, dot) for record, dot in DEVICE_DOTS.items()])
"""block_dot(fmt, row, b, x, x0): block b of a weight row of format fmt (a ggml type id) dotted with
x[x0:x0 + block_elements(fmt)]."""
block_elements = _block_elements([(record.type_id, record.block_size) for record in DEVICE_DOTS.formats()])
"""block_elements(fmt): elements per block of format fmt (a ggml type id)."""
