"""CUDA kernels (numba-cuda) for the offloaded layers, one thread block per output row. Each has a numpy twin
in tests/test_gpu_kernels.py, run under numba's CUDA simulator in CI. Unlike the CPU path, which quantizes
activations to int8 as llama.cpp does, the products multiply the weights' values by float32 activations.

Weights stay in their GGUF encoding on the device (rows of raw block bytes, as `runtime/quants.py` lays
them out); activations are float32. A block's float16 scale is decoded with integer operations
(`half_at`), which every CUDA architecture and the simulator compute alike.

- `matmul_q8_0`, `matmul_q4_1`, `matmul_q4_k`, `matmul_q6_k`: out (n, rows) = x (n, cols) @ W.T, one kernel
  (`_row_product`) per format's block dot: grid (rows, n), 32 threads per block, each summing every 32nd
  quant block (or super-block) of its row, then a shared-memory reduction tree.
- `rms_norm`: out[i] = x[i] / rms(x[i]) * weight, grid n, 32 threads.
- `rope`: rotate each head of q or k (n, n_heads * head_dim) in place by its token's position, llama's
  (2i, 2i+1) or NEOX's (i, i + n_rot/2) pairs, from `model.ops.Rope`'s cos/sin tables.
- `gated_activation`: act(gate) * up, act silu or gelu_tanh, a thread per element.
- `attention`: causal grouped-query attention over an f16 KV cache (IEEE halves as uint16), grid (n, n_head),
  32 threads per query head, each taking every 32nd visible key with an online softmax, merged at the end.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32

WARP = 32  # threads per block of the row kernels
Q8_0_BYTES, Q4_1_BYTES = 34, 20  # bytes per 32-element block: d, qs[32] / d, m, qs[16]
Q4_K_BYTES, Q6_K_BYTES = 144, 210  # per 256: d, dmin, scales[12], qs[128] / ql[128], qh[64], scales[16], d


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
def _block_sum(partial, value):
    """The sum of `value` over the block's 32 threads (shared `partial`, a halving tree), for every thread."""
    lane = cuda.threadIdx.x
    partial[lane] = value
    cuda.syncthreads()
    step = WARP // 2
    while step > 0:
        if lane < step:
            partial[lane] += partial[lane + step]
        cuda.syncthreads()
        step //= 2
    return partial[0]


@cuda.jit(device=True)
def _reduce_and_store(partial, value, out, t, r):
    total = _block_sum(partial, value)
    if cuda.threadIdx.x == 0:
        out[t, r] = total


def _row_product(block_dot, block_elements, block_bytes):
    """A kernel out (n, rows) = x (n, cols) @ W.T for W (rows, blocks * block_bytes) uint8 in one format:
    grid (rows, n), each of 32 threads summing `block_dot(row, byte offset, x row, first column)` over every
    32nd block of its row, then the block's reduction tree."""

    @cuda.jit
    def product(w, x, out):
        r, t = cuda.blockIdx.x, cuda.blockIdx.y
        partial = cuda.shared.array(WARP, float32)
        total = float32(0.0)
        for b in range(cuda.threadIdx.x, x.shape[1] // block_elements, WARP):
            total += block_dot(w[r], b * block_bytes, x[t], b * block_elements)
        _reduce_and_store(partial, total, out, t, r)

    return product


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


matmul_q8_0 = _row_product(_dot_q8_0, 32, Q8_0_BYTES)
matmul_q4_1 = _row_product(_dot_q4_1, 32, Q4_1_BYTES)
matmul_q4_k = _row_product(_dot_q4_k, 256, Q4_K_BYTES)
matmul_q6_k = _row_product(_dot_q6_k, 256, Q6_K_BYTES)


@cuda.jit
def rms_norm(x, weight, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight for each row i of x (n, d)."""
    i, lane = cuda.blockIdx.x, cuda.threadIdx.x
    partial = cuda.shared.array(WARP, float32)
    total = float32(0.0)
    for j in range(lane, x.shape[1], WARP):
        total += x[i, j] * x[i, j]
    inv = float32(1.0) / math.sqrt(_block_sum(partial, total) / float32(x.shape[1]) + float32(eps))
    for j in range(lane, x.shape[1], WARP):
        out[i, j] = x[i, j] * inv * weight[j]


@cuda.jit
def rope(x, n_heads, positions, cos, sin, n_rot, neox):
    """Rotate each head of x (n, n_heads * head_dim) in place; grid (n, n_heads), a thread per pair."""
    t, h = cuda.blockIdx.x, cuda.blockIdx.y
    head_dim = x.shape[1] // n_heads
    half = n_rot // 2
    p = positions[t]
    for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
        a_at = h * head_dim + (i if neox else 2 * i)
        b_at = a_at + (half if neox else 1)
        a, b = x[t, a_at], x[t, b_at]
        x[t, a_at] = a * cos[p, i] - b * sin[p, i]
        x[t, b_at] = a * sin[p, i] + b * cos[p, i]


@cuda.jit
def gated_activation(gate, up, gelu, out):
    """out = act(gate) * up for gate, up, out (n,) float32; act = gelu_tanh if gelu else silu."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < out.shape[0]:
        g = gate[i]
        if gelu:
            k = float32(0.7978845608028654)  # sqrt(2 / pi)
            a = float32(0.5) * g * (float32(1.0) + math.tanh(k * (g + float32(0.044715) * g * g * g)))
        else:
            a = g / (float32(1.0) + math.exp(-g))
        out[i] = a * up[i]


MAX_HEAD_DIM = 256


@cuda.jit
def attention(q, keys, values, pos0, key_pos0, window, scale, softcap, out):
    """q (n, n_head, hd) float32 at positions pos0..; keys/values (s, n_kv, hd) uint16 halves at positions
    key_pos0..; out (n, n_head, hd). Query p sees keys at max(key_pos0, p - window + 1)..p (window 0: from
    key_pos0); softcap > 0 turns each scaled score x into softcap * tanh(x / softcap). hd <= MAX_HEAD_DIM."""
    t, h = cuda.blockIdx.x, cuda.blockIdx.y
    lane = cuda.threadIdx.x
    hd = q.shape[2]
    kv = h // (q.shape[1] // keys.shape[1])
    p = pos0 + t
    first = max(key_pos0, p - window + 1) if window > 0 else key_pos0
    acc = cuda.local.array(MAX_HEAD_DIM, float32)
    for d in range(hd):
        acc[d] = float32(0.0)
    top, weight = float32(-math.inf), float32(0.0)  # this thread's running max and sum of exp(score - top)
    for key in range(first + lane, p + 1, WARP):
        row = key - key_pos0
        score = float32(0.0)
        for d in range(hd):
            score += q[t, h, d] * half_value(int32(keys[row, kv, d]))
        score *= scale
        if softcap > 0:
            score = softcap * math.tanh(score / softcap)
        if score > top:
            shrink = math.exp(top - score)
            weight *= shrink
            for d in range(hd):
                acc[d] *= shrink
            top = score
        e = math.exp(score - top)
        weight += e
        for d in range(hd):
            acc[d] += e * half_value(int32(values[row, kv, d]))
    tops = cuda.shared.array(WARP, float32)
    weights = cuda.shared.array(WARP, float32)
    accs = cuda.shared.array((WARP, MAX_HEAD_DIM), float32)
    tops[lane], weights[lane] = top, weight
    for d in range(hd):
        accs[lane, d] = acc[d]
    cuda.syncthreads()
    best = float32(-math.inf)
    for i in range(WARP):
        best = max(best, tops[i])
    total = float32(0.0)
    for i in range(WARP):
        if weights[i] > 0:
            total += weights[i] * math.exp(tops[i] - best)
    for d in range(lane, hd, WARP):
        value = float32(0.0)
        for i in range(WARP):
            if weights[i] > 0:
                value += accs[i, d] * math.exp(tops[i] - best)
        out[t, h, d] = value / total


MATMULS = {"Q8_0": matmul_q8_0, "Q4_1": matmul_q4_1, "Q4_K": matmul_q4_k, "Q6_K": matmul_q6_k}


def matmul(type_name: str, w_device, x: np.ndarray) -> np.ndarray:
    """x (n, cols) @ W.T for a weight already on the device in its GGUF encoding; returns (n, rows) float32."""
    out = cuda.device_array((x.shape[0], w_device.shape[0]), np.float32)
    MATMULS[type_name][(w_device.shape[0], x.shape[0]), WARP](w_device, cuda.to_device(x), out)
    return out.copy_to_host()
