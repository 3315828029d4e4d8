"""Quantized matrix products, prefill and decode alike: y = W x for every token of x, reading W's blocks in place.

The activations x are first quantized to int8 in blocks of 32 (`quantize_q8`, as llama.cpp does with
q8_0/q8_1; `quantize_q8_k` for the K-quants), then each weight row meets every token in one row kernel
(`blockdot.py`): integer dot products per block, float accumulation in vector lanes, one reduction per
output, tokens four at a time so that each weight block is unpacked once per four tokens. Rows are split
across threads with `prange`; each weight row is read from memory once per call, for all tokens.

Each output is computed by the very same operations in the same order whatever the number of tokens, the
threads or the CPU tier (the order is fixed in `blockdot.py`, integer sums are exact, and no fastmath),
so a token's result does not depend on its chunk or on what it is batched with:
tests/test_blockdot.py compares every format with its numpy twin bit for bit.

The arrays, for n tokens:
    w    uint8                       the weights' bytes (the mmap), rows found through `table`
    xq   (n, n_cols) int8            x quantized per 32-block
    xd   (n, n_cols/32) float32      the scale of each x block: x ~= xd * xq
    xs   (n, n_cols/32) float32      xd * xqs: the sum of each x block as quantized (Q4_1/Q5_1's offsets,
                                     as float16 like llama.cpp's q8_1: the exact float sum would break the
                                     cancellation of a centred block's offset)
    xqs  (n, n_cols/32) int32        the sum of xq over each block (the K-quants' mins)
    out  (n, n_out) float32
Block layouts are the quant table's (`llamapyz/gguf/quants.py`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .blockdot import QK, row_dot

_SERIAL = dict(error_model="numpy", cache=True, nogil=True)  # as ops.py: an inf or NaN x never raises
_OPTS = dict(parallel=True, **_SERIAL)
ACTIVATIONS = ("q8_0", "q8_K")  # the int8 forms of x: `quantize_q8`, `quantize_q8_k`; a table row names its by index
TABLE_COLUMNS = 7  # ggml type id, byte offset, row bytes, first output column, rows, activation, has a bias


@njit(**_SERIAL)
def round_to_f16(v):
    """float32 v rounded to the nearest float16 value (ties to even), as a float32; without a float16 type
    (numba cannot link the conversion on every tier): keep 11 significant bits, or 2^-24 steps below
    float16's normal range."""
    if v == 0:
        return np.float32(0.0)
    _, e = math.frexp(np.float64(v))  # 2^(e-1) <= |v| < 2^e
    k = max(e - 11, -24)
    return np.float32(math.ldexp(np.rint(math.ldexp(np.float64(v), -k)), k))


@njit(**_SERIAL)
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


@njit(**_SERIAL)
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
def matmul_table(w, table, forms, out):
    """out (n, n_out) = x @ W.T for several matrices at once (q, k and v; gate and up): one parallel pass.
    table (n_mats, TABLE_COLUMNS) int64: matrix m has the format whose ggml type id is table[m, 0] (one of
    `blockdot.ROW_KERNELS`; `row_dot` switches on it), its row c starts at
    byte table[m, 1] + c * table[m, 2] of w (the weights' buffer), it fills columns table[m, 3].. of out, it
    has table[m, 4] rows and takes x in the form forms[table[m, 5]] (`ACTIVATIONS`: (xq, xd, xs, xqs) each).
    One task per row, for every token (four at a time).

    (Four rows per task, for four independent accumulator chains in decode, was measured: 20-30% faster on
    matrices that sit in L2, no faster on a step's matrices streamed from memory, and 2.4x slower on a
    28 MiB output matrix, the four interleaved row streams defeating the prefetcher.)"""
    n_mats = table.shape[0]
    (xq0, xd0, xs0, xqs0), (xq1, xd1, xs1, xqs1) = forms  # (a parallel loop cannot take tuples of arrays)
    for col in prange(out.shape[1]):
        m = 0
        while m + 1 < n_mats and table[m + 1, 3] <= col:
            m += 1
        wo = table[m, 1] + (col - table[m, 3]) * table[m, 2]
        if table[m, 5] == 0:
            xq, xd, xs, xqs = xq0, xd0, xs0, xqs0
        else:
            xq, xd, xs, xqs = xq1, xd1, xs1, xqs1
        row_dot(table[m, 0], w, wo, xq, xd, xs, xqs, out, col)


@njit(**_SERIAL)
def product(x, w, table, bias, forms, out):
    """out = x @ W.T + bias for the matrices of `table` (see `matmul_table`; its column 6 says whether a
    matrix has a bias, in bias[its columns]): x (n, n_cols) float32 quantized into each form the table
    reads (forms: buffers of n rows; a form no matrix reads may be empty), then one `matmul_table` pass.
    Every product of the forward pass comes here, from Python (`linear.MatrixGroup`) or from the layer
    kernels (`layer.py`)."""
    if _reads(table, 0):
        quantize_q8(x, *forms[0])
    if _reads(table, 1):
        quantize_q8_k(x, *forms[1])
    matmul_table(w, table, forms, out)
    for m in range(table.shape[0]):
        if table[m, 6]:
            for t in range(x.shape[0]):
                for c in range(table[m, 3], table[m, 3] + table[m, 4]):
                    out[t, c] += bias[c]


@njit(**_SERIAL)
def _reads(table, activation):
    for m in range(table.shape[0]):
        if table[m, 5] == activation:
            return True
    return False
