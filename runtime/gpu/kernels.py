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

from .formats import FORMAT_IDS, block_dot, block_elements, half_value

WARP = 32  # lanes per row: each sums every 32nd block of its row, then a shared-memory tree
ROWS_PER_BLOCK = 4  # weight rows per thread block of `product`
TOKENS_PER_BLOCK = 8  # tokens per thread block of `product`: each lane's weight blocks are read for all of them


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


@cuda.jit
def product(fmt, w, x, bias, out):
    """out (n, rows) = x (n, cols) @ W.T (+ bias when it is not empty), W (rows, row bytes) uint8 in format
    `fmt` (`formats.FORMAT_IDS`). Grid (rows / ROWS_PER_BLOCK, n / TOKENS_PER_BLOCK), threads (WARP,
    ROWS_PER_BLOCK): lane l of a row sums blocks l, l + 32, ... of that row for each of the block's tokens,
    then the 32 lanes' sums meet in a fixed halving tree.

    A token's output is the same sequence of float32 operations whatever n is and wherever the token sits
    in the batch (its own accumulator, its own tree), so decode (a few tokens) and prefill (hundreds) give
    the same bits for the same token, and a row never depends on the rows batched with it."""
    lane, ty = cuda.threadIdx.x, cuda.threadIdx.y
    r = cuda.blockIdx.x * ROWS_PER_BLOCK + ty
    t0 = cuda.blockIdx.y * TOKENS_PER_BLOCK
    nt = min(TOKENS_PER_BLOCK, x.shape[0] - t0)
    acc = cuda.local.array(TOKENS_PER_BLOCK, float32)
    for t in range(TOKENS_PER_BLOCK):
        acc[t] = float32(0.0)
    if r < w.shape[0]:
        elements = block_elements(fmt)
        row = w[r]
        for b in range(lane, x.shape[1] // elements, WARP):
            for t in range(nt):
                acc[t] += block_dot(fmt, row, b, x[t0 + t], b * elements)
    partial = cuda.shared.array((ROWS_PER_BLOCK, TOKENS_PER_BLOCK, WARP), float32)
    for t in range(TOKENS_PER_BLOCK):
        partial[ty, t, lane] = acc[t]
    cuda.syncthreads()
    step = WARP // 2
    while step > 0:
        if lane < step:
            for t in range(TOKENS_PER_BLOCK):
                partial[ty, t, lane] += partial[ty, t, lane + step]
        cuda.syncthreads()
        step //= 2
    if lane < nt and r < w.shape[0]:  # lane t writes token t's output
        value = partial[ty, lane, 0]
        if bias.shape[0] > 0:
            value += bias[r]
        out[t0 + lane, r] = value


def launch_product(fmt: int, w, x, bias, out) -> None:
    """`product` over every row of w and every token of x."""
    grid = (-(-w.shape[0] // ROWS_PER_BLOCK), -(-x.shape[0] // TOKENS_PER_BLOCK))
    product[grid, (WARP, ROWS_PER_BLOCK)](fmt, w, x, bias, out)


@cuda.jit
def rms_norm(x, n_heads, weight, eps, out):
    """out[i, head] = x[i, head] / sqrt(mean(x[i, head]^2) + eps) * weight for each row i of x (n, n_heads *
    d) and each of its n_heads pieces of d (1: whole rows; the heads: qk-norm); grid (n, n_heads), 32 threads.
    out may be x."""
    i, h, lane = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    d = x.shape[1] // n_heads
    first = h * d
    partial = cuda.shared.array(WARP, float32)
    total = float32(0.0)
    for j in range(lane, d, WARP):
        total += x[i, first + j] * x[i, first + j]
    inv = float32(1.0) / math.sqrt(_block_sum(partial, total) / float32(d) + eps)
    for j in range(lane, d, WARP):
        out[i, first + j] = x[i, first + j] * inv * weight[j]


@cuda.jit
def add_rows(x, y, weight, eps):
    """x += y, or with a (non-empty) weight x += rms_norm(y) * weight (the post-norms); grid n, 32 threads."""
    i, lane = cuda.blockIdx.x, cuda.threadIdx.x
    if weight.shape[0] == 0:
        for j in range(lane, x.shape[1], WARP):
            x[i, j] += y[i, j]
        return
    partial = cuda.shared.array(WARP, float32)
    total = float32(0.0)
    for j in range(lane, y.shape[1], WARP):
        total += y[i, j] * y[i, j]
    inv = float32(1.0) / math.sqrt(_block_sum(partial, total) / float32(y.shape[1]) + eps)
    for j in range(lane, x.shape[1], WARP):
        x[i, j] += y[i, j] * inv * weight[j]


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
    """out = act(gate) * up for gate, up, out (n, n_ff) float32, act gelu_tanh if gelu else silu; a thread per
    element."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < out.shape[0] * out.shape[1]:
        t, j = i // out.shape[1], i % out.shape[1]
        g = gate[t, j]
        if gelu:
            k = float32(0.7978845608028654)  # sqrt(2 / pi)
            a = float32(0.5) * g * (float32(1.0) + math.tanh(k * (g + float32(0.044715) * g * g * g)))
        else:
            a = g / (float32(1.0) + math.exp(-g))
        out[t, j] = a * up[t, j]


@cuda.jit(device=True)
def _round_even(y):
    """y >= 0 rounded to the nearest integer, ties to even."""
    whole = math.floor(y)
    rest = y - whole
    if rest > 0.5 or (rest == 0.5 and int32(whole) % 2 == 1):
        whole += 1
    return int32(whole)


@cuda.jit(device=True)
def half_bits(value):
    """The IEEE float16 nearest a float32 (ties to even, as numpy's astype(float16)), as its 16 bits."""
    if value != value:
        return int32(0x7E00)
    sign = int32(0x8000) if math.copysign(float32(1.0), value) < 0 else int32(0)
    a = abs(value)
    if a >= float32(65520.0):  # rounds past the largest half, 65504
        return sign | int32(0x7C00)
    if a < float32(6.103515625e-05):  # below 2^-14: a subnormal half, in units of 2^-24 (exact)
        return sign | _round_even(a * float32(16777216.0))
    mantissa, exponent = math.frexp(a)  # a = mantissa * 2^exponent, mantissa in [0.5, 1)
    fraction = (mantissa * float32(2.0) - float32(1.0)) * float32(1024.0)  # exact in float32
    return sign | (((exponent + 14) << 10) + _round_even(fraction))  # a carry of 1024 moves the exponent up


@cuda.jit
def store_halves(src, dst, pos0):
    """dst[pos0 + t] = src[t] as float16 bits: src (n, n_kv * hd) float32, dst (n_ctx, n_kv, hd) uint16; a
    thread per element."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    hd = dst.shape[2]
    if i < src.shape[0] * src.shape[1]:
        t, j = i // src.shape[1], i % src.shape[1]
        dst[pos0 + t, j // hd, j % hd] = half_bits(src[t, j])


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


NO_BIAS = np.zeros(0, np.float32)


def matmul(type_name: str, w_device, x: np.ndarray, bias: np.ndarray = NO_BIAS) -> np.ndarray:
    """x (n, cols) @ W.T for a weight already on the device in its GGUF encoding; returns (n, rows) float32."""
    out = cuda.device_array((x.shape[0], w_device.shape[0]), np.float32)
    launch_product(FORMAT_IDS[type_name], w_device, cuda.to_device(x), cuda.to_device(bias), out)
    return out.copy_to_host()
