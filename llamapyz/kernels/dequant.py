"""Row-wise dequantization kernels: raw blocks -> float32, bit-exact with `llamapyz/gguf/quants.py`.

Used for token embeddings and for the products of formats that have no integer row kernel (a tile of rows
is decoded, then multiplied in a fixed order). Each kernel is `dequant_<fmt>(w, out)` with
    w    (n_rows, row_bytes) uint8   raw bytes of a tile of rows (a view into the mmap)
    out  (n_rows, n_cols) float32
and attaches itself to its format's record with `@DEQUANT.of(name)` (`DEQUANT` is the table of this kind,
`kernels.KERNELS` reads it). A block's stride is its record's `type_size` (`<FMT>_BYTES`: module-level ints,
which numba compiles in as constants). The float operations are ggml's, in ggml's order, without fused
multiply-add (no fastmath), which is what makes them bit-exact.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..gguf.iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID
from ..gguf.quants import FORMATS_BY_NAME, IQ1_DELTA, IQ4_NL_VALUES, MXFP4_VALUES, PARITY_SIGNS, KernelTable
from .simd import f16_at, f16_value

_OPTS = dict(parallel=True, error_model="numpy", cache=True, nogil=True)  # as ops.py
F32 = np.float32
I64 = np.int64  # every byte read is widened first: numba types uint8 >> int64 as float64
DEQUANT: KernelTable = KernelTable("CPU dequantizer")


def _bytes(name: str) -> int:
    """Bytes per block of format `name`: its record's sum of fields."""
    return FORMATS_BY_NAME[name].type_size


Q4_0_BYTES = _bytes("Q4_0")


@DEQUANT.of("Q4_0")
@njit(**_OPTS)
def dequant_q4_0(w, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * Q4_0_BYTES, b * 32
            d = f16_at(row, o)
            for j in range(16):
                q = I64(row[o + 2 + j])
                out[r, e + j] = d * F32(np.int32(q & 15) - 8)
                out[r, e + j + 16] = d * F32(np.int32(q >> 4) - 8)


Q4_1_BYTES = _bytes("Q4_1")


@DEQUANT.of("Q4_1")
@njit(**_OPTS)
def dequant_q4_1(w, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * Q4_1_BYTES, b * 32
            d, m = f16_at(row, o), f16_at(row, o + 2)
            for j in range(16):
                q = I64(row[o + 4 + j])
                out[r, e + j] = d * F32(q & 15) + m
                out[r, e + j + 16] = d * F32(q >> 4) + m


@njit(inline="always", error_model="numpy")
def _q5(row, qh_o, qs_o, j):
    """The j-th (0..31) 5-bit value of a Q5_0/Q5_1 block."""
    qs = I64(row[qs_o + (j & 15)])
    low = (qs >> 4) if j >= 16 else (qs & 15)
    return np.int32(low) | (np.int32((I64(row[qh_o + j // 8]) >> (j % 8)) & 1) << 4)


Q5_0_BYTES = _bytes("Q5_0")


@DEQUANT.of("Q5_0")
@njit(**_OPTS)
def dequant_q5_0(w, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * Q5_0_BYTES, b * 32
            d = f16_at(row, o)
            for j in range(32):
                out[r, e + j] = d * F32(_q5(row, o + 2, o + 6, j) - 16)


Q5_1_BYTES = _bytes("Q5_1")


@DEQUANT.of("Q5_1")
@njit(**_OPTS)
def dequant_q5_1(w, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * Q5_1_BYTES, b * 32
            d, m = f16_at(row, o), f16_at(row, o + 2)
            for j in range(32):
                out[r, e + j] = d * F32(_q5(row, o + 4, o + 8, j)) + m


Q8_0_BYTES = _bytes("Q8_0")


@DEQUANT.of("Q8_0")
@njit(**_OPTS)
def dequant_q8_0(w, out):
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * Q8_0_BYTES, b * 32
            d = f16_at(row, o)
            for j in range(32):
                out[r, e + j] = d * F32(np.int8(I64(row[o + 2 + j])))


Q2_K_BYTES = _bytes("Q2_K")


@DEQUANT.of("Q2_K")
@njit(**_OPTS)
def dequant_q2_k(w, out):
    # scales 16 | qs 64 | d | dmin (84 bytes); value e: 2 bits of qs[32*(e//128) + e%32] at 2*((e//32)%4)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * Q2_K_BYTES, sb * 256
            d, dmin = f16_at(row, o + 80), f16_at(row, o + 82)
            for e in range(256):
                sc = I64(row[o + e // 16])
                q = (I64(row[o + 16 + 32 * (e // 128) + e % 32]) >> (2 * ((e // 32) % 4))) & 3
                out[r, e0 + e] = d * F32(sc & 15) * F32(q) - dmin * F32(sc >> 4)


@njit(inline="always", error_model="numpy")
def _q3_k_scale(row, o, k):
    """Signed 6-bit scale k (0..15) from the 12 bytes at o."""
    low = (I64(row[o + k]) & 15) if k < 8 else (I64(row[o + k - 8]) >> 4)
    high = (I64(row[o + 8 + k % 4]) >> (2 * (k // 4))) & 3
    return np.int32(low | (high << 4)) - 32


Q3_K_BYTES = _bytes("Q3_K")


@DEQUANT.of("Q3_K")
@njit(**_OPTS)
def dequant_q3_k(w, out):
    # hmask 32 | qs 64 | scales 12 | d (110 bytes); a cleared hmask bit means "subtract 4"
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * Q3_K_BYTES, sb * 256
            d = f16_at(row, o + 108)
            for e in range(256):
                low = np.int32((I64(row[o + 32 + 32 * (e // 128) + e % 32]) >> (2 * ((e // 32) % 4))) & 3)
                high_set = (I64(row[o + e % 32]) >> (e // 32)) & 1
                q = low - (0 if high_set else 4)
                out[r, e0 + e] = d * F32(_q3_k_scale(row, o + 96, e // 16)) * F32(q)


@njit(inline="always", error_model="numpy")
def k4_scale_min(row, o, j):
    """Sub-block j's 6-bit scale and min from the 12 packed bytes at o (ggml's get_scale_min_k4)."""
    if j < 4:
        return I64(row[o + j]) & 63, I64(row[o + j + 4]) & 63
    sc = (I64(row[o + j + 4]) & 15) | ((I64(row[o + j - 4]) >> 6) << 4)
    mn = (I64(row[o + j + 4]) >> 4) | ((I64(row[o + j]) >> 6) << 4)
    return sc, mn


Q4_K_BYTES = _bytes("Q4_K")


@DEQUANT.of("Q4_K")
@njit(**_OPTS)
def dequant_q4_k(w, out):
    # d | dmin | scales 12 | qs 128 (144 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * Q4_K_BYTES, sb * 256
            d, dmin = f16_at(row, o), f16_at(row, o + 2)
            for j in range(8):
                sc, mn = k4_scale_min(row, o + 4, j)
                ds, dm = d * F32(sc), dmin * F32(mn)
                shift = 4 * (j & 1)
                for i in range(32):
                    q = (I64(row[o + 16 + 32 * (j // 2) + i]) >> shift) & 15
                    out[r, e0 + 32 * j + i] = ds * F32(q) - dm


Q5_K_BYTES = _bytes("Q5_K")


@DEQUANT.of("Q5_K")
@njit(**_OPTS)
def dequant_q5_k(w, out):
    # d | dmin | scales 12 | qh 32 | qs 128 (176 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * Q5_K_BYTES, sb * 256
            d, dmin = f16_at(row, o), f16_at(row, o + 2)
            for j in range(8):
                sc, mn = k4_scale_min(row, o + 4, j)
                ds, dm = d * F32(sc), dmin * F32(mn)
                shift = 4 * (j & 1)
                for i in range(32):
                    q = (I64(row[o + 48 + 32 * (j // 2) + i]) >> shift) & 15 | ((I64(row[o + 16 + i]) >> j) & 1) << 4
                    out[r, e0 + 32 * j + i] = ds * F32(q) - dm


Q6_K_BYTES = _bytes("Q6_K")


@DEQUANT.of("Q6_K")
@njit(**_OPTS)
def dequant_q6_k(w, out):
    # ql 128 | qh 64 | scales 16 int8 | d (210 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * Q6_K_BYTES, sb * 256
            d = f16_at(row, o + 208)
            for half in range(2):
                for k in range(4):
                    for i in range(32):
                        low = (I64(row[o + half * 64 + (k & 1) * 32 + i]) >> (4 * (k >> 1))) & 15
                        high = (I64(row[o + 128 + half * 32 + i]) >> (2 * k)) & 3
                        q = np.int32(low | (high << 4)) - 32
                        scale = F32(np.int8(I64(row[o + 192 + half * 8 + 2 * k + i // 16])))
                        out[r, e0 + half * 128 + k * 32 + i] = d * scale * F32(q)


IQ4_NL_LEVELS = np.array(IQ4_NL_VALUES, F32)  # a global array: numba compiles it in as a constant
IQ4_NL_BYTES = _bytes("IQ4_NL")


@DEQUANT.of("IQ4_NL")
@njit(**_OPTS)
def dequant_iq4_nl(w, out):
    # d | qs 16 (18 bytes); value = d * level[nibble], low nibbles first
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * IQ4_NL_BYTES, b * 32
            d = f16_at(row, o)
            for j in range(16):
                q = I64(row[o + 2 + j])
                out[r, e + j] = d * IQ4_NL_LEVELS[q & 15]
                out[r, e + j + 16] = d * IQ4_NL_LEVELS[q >> 4]


IQ4_XS_BYTES = _bytes("IQ4_XS")


@DEQUANT.of("IQ4_XS")
@njit(**_OPTS)
def dequant_iq4_xs(w, out):
    # d | scales_h u16 | scales_l 4 | qs 128 (136 bytes); sub-block j: IQ4_NL's 16 bytes at 8 + 16 j, times
    # d * (6-bit scale - 32): low nibble of scales_l[j // 2] (even j) or its high one, bits 2j of scales_h
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ4_XS_BYTES, sb * 256
            d = f16_at(row, o)
            high = I64(row[o + 2]) | (I64(row[o + 3]) << 8)
            for j in range(8):
                low = (I64(row[o + 4 + j // 2]) >> (4 * (j & 1))) & 15
                dl = d * F32(np.int32(low | (((high >> (2 * j)) & 3) << 4)) - 32)
                for i in range(16):
                    q = I64(row[o + 8 + 16 * j + i])
                    out[r, e0 + 32 * j + i] = dl * IQ4_NL_LEVELS[q & 15]
                    out[r, e0 + 32 * j + i + 16] = dl * IQ4_NL_LEVELS[q >> 4]


MXFP4_LEVELS = np.array(MXFP4_VALUES, F32)
MXFP4_BYTES = _bytes("MXFP4")


@njit(inline="always", error_model="numpy")
def e8m0_half(e):
    """2^(e - 128) as float32, exact for every byte e (2^-128 and 2^-127 are float32 subnormals)."""
    return F32(math.ldexp(1.0, np.int32(e) - 128))


@DEQUANT.of("MXFP4")
@njit(**_OPTS)
def dequant_mxfp4(w, out):
    # e (E8M0) | qs 16 (17 bytes); value = 2^(e - 128) * doubled FP4 level[nibble], low nibbles first
    for r in prange(w.shape[0]):
        row = w[r]
        for b in range(out.shape[1] // 32):
            o, e = b * MXFP4_BYTES, b * 32
            d = e8m0_half(row[o])
            for j in range(16):
                q = I64(row[o + 1 + j])
                out[r, e + j] = d * MXFP4_LEVELS[q & 15]
                out[r, e + j + 16] = d * MXFP4_LEVELS[q >> 4]


TQ1_0_BYTES = _bytes("TQ1_0")


@njit(inline="always", error_model="numpy")
def _trit(byte, n):
    """Base-3 digit n (0..4) of a TQ1_0 byte: ((byte * 3^n mod 256) * 3) >> 8, minus 1."""
    return np.int32((((byte * I64(3) ** n) & 255) * 3) >> 8) - 1


@DEQUANT.of("TQ1_0")
@njit(**_OPTS)
def dequant_tq1_0(w, out):
    # qs 48 | qh 4 | d (54 bytes); value e < 160: digit e // 32 of qs[e % 32]; e < 240: digit (e - 160) // 16 of
    # qs[32 + e % 16]; else digit (e - 240) // 4 of qh[e % 4]
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * TQ1_0_BYTES, sb * 256
            d = f16_at(row, o + 52)
            for e in range(256):
                if e < 160:
                    q = _trit(I64(row[o + e % 32]), e // 32)
                elif e < 240:
                    q = _trit(I64(row[o + 32 + e % 16]), (e - 160) // 16)
                else:
                    q = _trit(I64(row[o + 48 + e % 4]), (e - 240) // 4)
                out[r, e0 + e] = d * F32(q)


TQ2_0_BYTES = _bytes("TQ2_0")


@DEQUANT.of("TQ2_0")
@njit(**_OPTS)
def dequant_tq2_0(w, out):
    # qs 64 | d (66 bytes); value e: 2 bits of qs[32*(e//128) + e%32] at 2*((e//32)%4), minus 1
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * TQ2_0_BYTES, sb * 256
            d = f16_at(row, o + 64)
            for e in range(256):
                q = (I64(row[o + 32 * (e // 128) + e % 32]) >> (2 * ((e // 32) % 4))) & 3
                out[r, e0 + e] = d * F32(np.int32(q) - 1)


# --- IQ grids: per 8 (or 4) values a grid entry, signs and scales apart (`gguf/quants.py` has the layouts) ---

PARITY = np.array(PARITY_SIGNS, np.uint8)  # 7 sign bits -> 8, the eighth making the count of negatives even


@njit(inline="always", error_model="numpy")
def _u16(row, o):
    return I64(row[o]) | (I64(row[o + 1]) << 8)


@njit(inline="always", error_model="numpy")
def _u32(row, o):
    return _u16(row, o) | (_u16(row, o + 2) << 16)


@njit(inline="always", error_model="numpy")
def _sign(signs, j):
    """-1.0 where bit j of the sign byte is set, else 1.0."""
    return F32(-1.0) if (signs >> j) & 1 else F32(1.0)


IQ2_XXS_BYTES = _bytes("IQ2_XXS")


@DEQUANT.of("IQ2_XXS")
@njit(**_OPTS)
def dequant_iq2_xxs(w, out):
    # d | per 32 values: 4 grid index bytes, a word of 4 7-bit sign fields and the scale at bits 28..31 (66 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ2_XXS_BYTES, sb * 256
            d = f16_at(row, o)
            for ib in range(8):
                q = o + 2 + 8 * ib
                word = _u32(row, q + 4)
                db = d * (F32(0.5) + F32(word >> 28)) * F32(0.25)
                for k in range(4):
                    signs = PARITY[(word >> (7 * k)) & 127]
                    for j in range(8):
                        g = F32(IQ2XXS_GRID[row[q + k], j])
                        out[r, e0 + 32 * ib + 8 * k + j] = db * g * _sign(signs, j)


IQ2_XS_BYTES = _bytes("IQ2_XS")


@DEQUANT.of("IQ2_XS")
@njit(**_OPTS)
def dequant_iq2_xs(w, out):
    # d | qs 32 words (9-bit grid index, 7-bit sign field) | scales 8 (a nibble per 16 values) (74 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ2_XS_BYTES, sb * 256
            d = f16_at(row, o)
            for k in range(32):
                word = _u16(row, o + 2 + 2 * k)
                scale = (I64(row[o + 66 + k // 4]) >> (4 * ((k // 2) & 1))) & 15
                db = d * (F32(0.5) + F32(scale)) * F32(0.25)
                signs = PARITY[word >> 9]
                for j in range(8):
                    out[r, e0 + 8 * k + j] = db * F32(IQ2XS_GRID[word & 511, j]) * _sign(signs, j)


IQ2_S_BYTES = _bytes("IQ2_S")


@DEQUANT.of("IQ2_S")
@njit(**_OPTS)
def dequant_iq2_s(w, out):
    # d | qs 32 | signs 32 | qh 8 (2 high index bits per 8 values) | scales 8 (82 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ2_S_BYTES, sb * 256
            d = f16_at(row, o)
            for k in range(32):
                index = I64(row[o + 2 + k]) | (((I64(row[o + 66 + k // 4]) >> (2 * (k % 4))) & 3) << 8)
                scale = (I64(row[o + 74 + k // 4]) >> (4 * ((k // 2) & 1))) & 15
                db = d * (F32(0.5) + F32(scale)) * F32(0.25)
                signs = I64(row[o + 34 + k])
                for j in range(8):
                    out[r, e0 + 8 * k + j] = db * F32(IQ2S_GRID[index, j]) * _sign(signs, j)


IQ3_XXS_BYTES = _bytes("IQ3_XXS")


@DEQUANT.of("IQ3_XXS")
@njit(**_OPTS)
def dequant_iq3_xxs(w, out):
    # d | qs 64 (a grid index per 4 values) | 8 words: 4 7-bit sign fields, the scale at bits 28..31 (98 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ3_XXS_BYTES, sb * 256
            d = f16_at(row, o)
            for ib in range(8):
                word = _u32(row, o + 66 + 4 * ib)
                db = d * (F32(0.5) + F32(word >> 28)) * F32(0.5)
                for k in range(4):
                    signs = PARITY[(word >> (7 * k)) & 127]
                    for j in range(8):
                        g = F32(IQ3XXS_GRID[row[o + 2 + 8 * ib + 2 * k + j // 4], j % 4])
                        out[r, e0 + 32 * ib + 8 * k + j] = db * g * _sign(signs, j)


IQ3_S_BYTES = _bytes("IQ3_S")


@DEQUANT.of("IQ3_S")
@njit(**_OPTS)
def dequant_iq3_s(w, out):
    # d | qs 64 | qh 8 (the 9th index bit, one per 4 values) | signs 32 | scales 4 (a nibble per 32) (110 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ3_S_BYTES, sb * 256
            d = f16_at(row, o)
            for ib in range(8):
                scale = (I64(row[o + 106 + ib // 2]) >> (4 * (ib & 1))) & 15
                db = d * F32(1 + 2 * scale)
                for e in range(32):
                    k = 8 * ib + e // 4  # the grid entry
                    index = I64(row[o + 2 + k]) | (((I64(row[o + 66 + ib]) >> (k % 8)) & 1) << 8)
                    g = F32(IQ3S_GRID[index, e % 4])
                    out[r, e0 + 32 * ib + e] = db * g * _sign(I64(row[o + 74 + 4 * ib + e // 8]), e % 8)


IQ1_S_BYTES = _bytes("IQ1_S")


@DEQUANT.of("IQ1_S")
@njit(**_OPTS)
def dequant_iq1_s(w, out):
    # d | qs 32 | qh 8 words: 4 x 3 high index bits, the scale at bits 12..14, the delta's sign at 15 (50 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ1_S_BYTES, sb * 256
            d = f16_at(row, o)
            for ib in range(8):
                qh = _u16(row, o + 34 + 2 * ib)
                dl = d * F32(2 * ((qh >> 12) & 7) + 1)
                delta = F32(-IQ1_DELTA) if qh & 0x8000 else F32(IQ1_DELTA)
                for k in range(4):
                    index = I64(row[o + 2 + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
                    for j in range(8):
                        out[r, e0 + 32 * ib + 8 * k + j] = dl * (F32(IQ1S_GRID[index, j]) + delta)


IQ1_M_BYTES = _bytes("IQ1_M")


@DEQUANT.of("IQ1_M")
@njit(**_OPTS)
def dequant_iq1_m(w, out):
    # qs 32 | qh 16 (a nibble per 8 values: 3 high index bits, the delta's sign) | scales 4 words: 3-bit
    # scales per 16 values at bits 0..11, the top nibbles the f16 super-block scale (56 bytes)
    for r in prange(w.shape[0]):
        row = w[r]
        for sb in range(out.shape[1] // 256):
            o, e0 = sb * IQ1_M_BYTES, sb * 256
            words = (_u16(row, o + 48), _u16(row, o + 50), _u16(row, o + 52), _u16(row, o + 54))
            bits = (words[0] >> 12) | ((words[1] >> 8) & 0xF0) | ((words[2] >> 4) & 0xF00) | (words[3] & 0xF000)
            d = f16_value(bits)
            for k in range(32):
                nibble = (I64(row[o + 32 + k // 2]) >> (4 * (k & 1))) & 15
                index = I64(row[o + k]) | ((nibble & 7) << 8)
                delta = F32(-IQ1_DELTA) if nibble & 8 else F32(IQ1_DELTA)
                s = (words[k // 8] >> (3 * ((k // 2) % 4))) & 7
                dl = d * F32(2 * s + 1)
                for j in range(8):
                    out[r, e0 + 8 * k + j] = dl * (F32(IQ1S_GRID[index, j]) + delta)
