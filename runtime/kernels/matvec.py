"""Matrix-vector kernels that read quantized blocks in place: y = W x for each of a few tokens (decode).

The activations x are first quantized to int8 in blocks of 32 (`quantize_q8`, as llama.cpp does with
q8_0/q8_1), so each weight block meets its slice of x in one integer dot product (`simd.py`) and one
float multiply-add by the two scales. Rows are split across threads with `prange`.

Decode of several sequences at once (the server's continuous batching) passes one x per sequence: each
weight row is read once, while it is in cache, for all of them. Each output is computed by the very same
instructions in the same order whatever the number of vectors, so a sequence's result does not depend on
what it is batched with (tests/test_kernels.py checks this bit for bit). Nor does it depend on the CPU
tier: the integer dot products are exact, and the float arithmetic is compiled without fastmath (no
reassociation, no fused multiply-add), so SSSE3, AVX2 and AVX-512 code give the same bits; costs nothing
measurable here, since the work is in the integer dot products.

Every kernel has the same signature, `(w, xq, xd, xs, xqs, out)`, for n vectors:
    w    (n_rows, row_bytes) uint8   the tensor's raw bytes, a view into the mmap
    xq   (n, n_cols) int8            x quantized per 32-block
    xd   (n, n_cols/32) float32      the scale of each x block: x ~= xd * xq
    xs   (n, n_cols/32) float32      xd * xqs: the sum of each x block as quantized (for the formats'
                                     min/offset terms; the exact float sum would break the cancellation
                                     of a centred block's offset: up to 1.8 logits off llama.cpp on SmolLM2)
    xqs  (n, n_cols/32) int32        the sum of xq over each block (for Q4_0/Q5_0's fixed offsets)
    out  (n, n_rows) float32
Block layouts are the quant table's (`runtime/quants.py`); byte offsets below name its fields.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .dequant import k4_scale_min
from .simd import dot_hi4x32, dot_i8x32, dot_k5x32, dot_lo4x32, dot_q5x32, dot_q6x32, dot_u4x32, f16_at

QK = 32  # elements per x block
_OPTS = dict(parallel=True, cache=True, nogil=True)


@njit(cache=True, nogil=True)
def round_to_f16(v):
    """float32 v rounded to the nearest float16 value (ties to even), as a float32; without a float16 type
    (numba cannot link the conversion on every tier): keep 11 significant bits, or 2^-24 steps below
    float16's normal range."""
    if v == 0:
        return np.float32(0.0)
    _, e = math.frexp(np.float64(v))  # 2^(e-1) <= |v| < 2^e
    k = max(e - 11, -24)
    return np.float32(math.ldexp(np.rint(math.ldexp(np.float64(v), -k)), k))


@njit(cache=True, nogil=True)
def quantize_q8(x, xq, xd, xs, xqs):
    """x (n, n_cols) float32 -> int8 blocks of 32, exactly as llama.cpp's x86 q8_0/q8_1 quantizers:
    q = rint(x * 127 / max|x|), scale d = max|x| / 127 kept as float16, block sum s = d * sum(q) as float16.

    The kernels use xs, the block's sum as quantized, for the formats' offsets (Q4_1's m): every term of a
    dot product then sees the same x, so a centred block's offset cancels as in llama.cpp (the exact float
    sum put SmolLM2's first-step logits 1.8 away from llama.cpp's, 0.6 this way)."""
    for t in range(x.shape[0]):
        for b in range(x.shape[1] // QK):
            amax = np.float32(0.0)
            for j in range(b * QK, b * QK + QK):
                amax = max(amax, abs(x[t, j]))
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            qsum = 0
            for j in range(b * QK, b * QK + QK):
                q = np.int8(np.rint(x[t, j] * inv))
                xq[t, j] = q
                qsum += q
            xd[t, b] = round_to_f16(d)
            xs[t, b] = round_to_f16(d * np.float32(qsum))
            xqs[t, b] = qsum


@njit(cache=True, nogil=True)
def quantize_q8_k(x, xq, xd, xs, xqs):
    """x (n, n_cols) float32 -> int8 in super-blocks of 256 sharing one float32 scale, exactly as llama.cpp's
    q8_K (what its K-quant dot products take): with m the first element of largest magnitude,
    q = min(127, rint(x * -127 / m)), d = 1 / (-127 / m). xd, xs, xqs are per block of 32 as for
    `quantize_q8` (xd repeats the super-block's d), so the kernels read both layouts alike."""
    for t in range(x.shape[0]):
        for sb in range(x.shape[1] // (8 * QK)):
            start = sb * 8 * QK
            amax = np.float32(0.0)
            top = np.float32(0.0)
            for j in range(start, start + 8 * QK):
                if abs(x[t, j]) > amax:
                    amax, top = abs(x[t, j]), x[t, j]
            iscale = np.float32(-127.0) / top if amax > 0 else np.float32(0.0)
            d = np.float32(1.0) / iscale if amax > 0 else np.float32(0.0)
            for b in range(sb * 8, sb * 8 + 8):
                qsum = 0
                for j in range(b * QK, b * QK + QK):
                    q = min(127, int(np.rint(iscale * x[t, j])))
                    xq[t, j] = q
                    qsum += q
                xd[t, b] = d
                xs[t, b] = d * np.float32(qsum)
                xqs[t, b] = qsum


@njit(**_OPTS)
def matvec_q4_0(w, xq, xd, xs, xqs, out):
    # block (18 bytes): d f16 | qs 16 bytes; value = d * (nibble - 8)
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for b in range(xd.shape[1]):
                o = b * 18
                acc += f16_at(row, o) * xd[t, b] * np.float32(dot_u4x32(row, o + 2, xt, b * QK) - 8 * xqs[t, b])
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q4_1(w, xq, xd, xs, xqs, out):
    # block (20 bytes): d f16 | m f16 | qs 16 bytes; value = d * nibble + m
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for b in range(xd.shape[1]):
                o = b * 20
                q = dot_u4x32(row, o + 4, xt, b * QK)
                acc += f16_at(row, o) * xd[t, b] * np.float32(q) + f16_at(row, o + 2) * xs[t, b]
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q5_0(w, xq, xd, xs, xqs, out):
    # block (22 bytes): d f16 | qh 4 bytes (fifth bits) | qs 16 bytes; value = d * (q5 - 16)
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for b in range(xd.shape[1]):
                o = b * 22
                q = dot_q5x32(row, o + 6, o + 2, xt, b * QK) - 16 * xqs[t, b]
                acc += f16_at(row, o) * xd[t, b] * np.float32(q)
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q5_1(w, xq, xd, xs, xqs, out):
    # block (24 bytes): d f16 | m f16 | qh 4 bytes | qs 16 bytes; value = d * q5 + m
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for b in range(xd.shape[1]):
                o = b * 24
                q = dot_q5x32(row, o + 8, o + 4, xt, b * QK)
                acc += f16_at(row, o) * xd[t, b] * np.float32(q) + f16_at(row, o + 2) * xs[t, b]
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q8_0(w, xq, xd, xs, xqs, out):
    # block (34 bytes): d f16 | qs 32 int8
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for b in range(xd.shape[1]):
                o = b * 34
                acc += f16_at(row, o) * xd[t, b] * np.float32(dot_i8x32(row, o + 2, xt, b * QK))
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q4_k(w, xq, xd, xs, xqs, out):
    # super-block (144 bytes): d f16 | dmin f16 | scales 12 | qs 128; 8 sub-blocks of 32:
    # sub-block j uses the low (even j) or high (odd j) nibbles of qs[32*(j//2) : 32*(j//2)+32]
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for sb in range(xd.shape[1] // 8):
                o = sb * 144
                d, dmin = f16_at(row, o), f16_at(row, o + 2)
                for j in range(8):
                    xb = sb * 8 + j
                    qo = o + 16 + 32 * (j // 2)
                    q = dot_hi4x32(row, qo, xt, xb * QK) if j & 1 else dot_lo4x32(row, qo, xt, xb * QK)
                    sc, mn = k4_scale_min(row, o + 4, j)
                    acc += d * np.float32(sc) * xd[t, xb] * np.float32(q) - dmin * np.float32(mn) * xs[t, xb]
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q5_k(w, xq, xd, xs, xqs, out):
    # super-block (176 bytes): d | dmin | scales 12 | qh 32 | qs 128; as Q4_K plus bit j of qh[l] as fifth bit
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for sb in range(xd.shape[1] // 8):
                o = sb * 176
                d, dmin = f16_at(row, o), f16_at(row, o + 2)
                for j in range(8):
                    xb = sb * 8 + j
                    qo = o + 48 + 32 * (j // 2)
                    q = dot_k5x32(row, qo, 4 * (j & 1), o + 16, j, xt, xb * QK)
                    sc, mn = k4_scale_min(row, o + 4, j)
                    acc += d * np.float32(sc) * xd[t, xb] * np.float32(q) - dmin * np.float32(mn) * xs[t, xb]
            out[t, r] = acc


@njit(**_OPTS)
def matvec_q6_k(w, xq, xd, xs, xqs, out):
    # super-block (210 bytes): ql 128 | qh 64 | scales 16 int8 | d f16; two halves of 128 values, each
    # four quarters k of 32 (low/high nibbles of ql[0:32] / ql[32:64], bits 2k..2k+1 of qh), 16 per scale;
    # the int8 scales are folded into the integer dot product
    for r in prange(w.shape[0]):
        row = w[r]
        for t in range(xd.shape[0]):
            xt = xq[t]
            acc = np.float32(0.0)
            for sb in range(xd.shape[1] // 8):
                o = sb * 210
                d = f16_at(row, o + 208)
                for half in range(2):
                    for k in range(4):
                        xb = sb * 8 + half * 4 + k
                        ql_o = o + half * 64 + (k & 1) * 32
                        qh_o = o + 128 + half * 32
                        q = dot_q6x32(row, ql_o, 4 * (k >> 1), qh_o, 2 * k, o + 192 + half * 8 + 2 * k, xt, xb * QK)
                        acc += d * xd[t, xb] * np.float32(q)
            out[t, r] = acc
