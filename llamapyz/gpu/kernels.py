"""CUDA kernels (numba-cuda) for the offloaded layers. Each has a numpy twin in tests/test_gpu_kernels.py and
tests/test_gpu_formats.py, run under numba's CUDA simulator in CI, and tests/gpu_ptx.py compiles each to
PTX for real GPUs. Unlike the CPU path, which quantizes activations to int8 as llama.cpp does, the products
multiply the weights' values by float32 activations.

- `product`: out = x @ W.T for W in any format of `formats.py`, its blocks decoded as they are read;
  grid (row groups, token groups), each row's lanes summing every lanes-th block of it for up to
  TOKENS_PER_BLOCK tokens at once (a weight block is fetched once for all of them), then a halving tree.
- `rms_norm`, `add_norm` (the residual, with or without a post-norm, and the next step's input norm at
  once), `qk_norm_rope` (qk-norm, then rope in llama's (2i, 2i+1) or NEOX's (i, i + n_rot/2) pairs from
  `model.ops.Rope`'s cos/sin tables, for every q and k head in one launch), `gated_activation` (silu or
  gelu_tanh), `store_kv` (a sequence's keys and values into its f16 cache, rounded as numpy rounds), and
  the mixture-of-experts pieces.
- `attention`: causal grouped-query attention over an f16 KV cache (IEEE halves as uint16), grid (n, n_head),
  the lanes of a query head each taking every lanes-th visible key with an online softmax, merged at the end.

How many lanes share a row (a power of two up to 32), rows a thread block, and threads an element-wise block
are launch choices (`Launch`): `ON_GPU` on a GPU. The simulator runs every CUDA thread as a Python thread,
so whole-model tests there use `SIMULATED` (two lanes, the grid capped, the kernels looping over the rest):
the same code paths in seconds instead of minutes. Within a process one choice holds for every call, so a
token's result never depends on how many tokens share the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import config, cuda, float32, int32

from ..kernels import scalar
from .formats import FORMAT_IDS, block_dot, block_elements, half_value

if not config.ENABLE_CUDASIM:  # compiled kernels are cached per user (the simulator compiles nothing)
    from .gpu_cache import install

    install()

# the scalar math the CPU kernels share (`kernels/scalar.py`), as device functions
gelu_tanh, silu, swiglu_oai, softcap, attn_temperature = (
    cuda.jit(device=True)(f)
    for f in (scalar.gelu_tanh, scalar.silu, scalar.swiglu_oai, scalar.softcap, scalar.attn_temperature))

WARP = 32  # the most lanes: shared arrays are sized for it
MAX_ROWS = 4  # the most weight rows per thread block of `product`
TOKENS_PER_BLOCK = 8  # tokens per thread block of `product`: each lane's weight blocks are read for all of them
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Launch:
    lanes: int  # threads per row (product, norms) or per query head (attention): a power of two <= WARP
    rows: int  # weight rows per thread block of `product`, <= MAX_ROWS
    threads: int  # threads per block of the element-wise kernels
    max_blocks: int  # the most blocks along rows or elements (the kernels loop over the rest); 0: no cap

    def blocks(self, n: int, per_block: int) -> int:
        wanted = max(1, -(-n // per_block))
        return min(wanted, self.max_blocks) if self.max_blocks else wanted


ON_GPU = Launch(lanes=WARP, rows=MAX_ROWS, threads=256, max_blocks=0)
SIMULATED = Launch(lanes=2, rows=1, threads=4, max_blocks=2)
LAUNCH = SIMULATED if config.ENABLE_CUDASIM else ON_GPU


@cuda.jit(device=True)
def _block_sum(partial, value):
    """The sum of `value` over the block's lanes (shared `partial`, a halving tree), for every thread."""
    lane = cuda.threadIdx.x
    partial[lane] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if lane < step:
            partial[lane] += partial[lane + step]
        cuda.syncthreads()
        step //= 2
    total = partial[0]
    cuda.syncthreads()  # every lane has read it before `partial` is used again
    return total


@cuda.jit(cache=True)
def product(fmt, w, x, bias, out, col0):
    """out[:, col0:col0 + rows] = x (n, cols) @ W.T (+ bias when it is not empty), W (rows, row bytes) uint8
    in format `fmt` (its ggml type id: `formats.FORMAT_IDS`). Threads (lanes, rows per block); grid (row groups, n /
    TOKENS_PER_BLOCK): lane l of a row sums blocks l, l + lanes, ... of that row for each of the block's
    tokens, then the lanes' sums meet in a fixed halving tree; a block takes row groups gridDim.x apart.

    A token's output is the same sequence of float32 operations whatever n is and wherever the token sits
    in the batch (its own accumulator, its own tree), so decode (a few tokens) and prefill (hundreds) give
    the same bits for the same token, and a row never depends on the rows batched with it."""
    lane, ty = cuda.threadIdx.x, cuda.threadIdx.y
    lanes, group = cuda.blockDim.x, cuda.blockDim.y
    t0 = cuda.blockIdx.y * TOKENS_PER_BLOCK
    nt = min(TOKENS_PER_BLOCK, x.shape[0] - t0)
    elements = block_elements(fmt)
    acc = cuda.local.array(TOKENS_PER_BLOCK, float32)
    partial = cuda.shared.array((MAX_ROWS, TOKENS_PER_BLOCK, WARP), float32)
    for r0 in range(cuda.blockIdx.x * group, w.shape[0], cuda.gridDim.x * group):
        r = r0 + ty
        for t in range(nt):
            acc[t] = float32(0.0)
        if r < w.shape[0]:
            row = w[r]
            for b in range(lane, x.shape[1] // elements, lanes):
                for t in range(nt):
                    acc[t] += block_dot(fmt, row, b, x[t0 + t], b * elements)
        for t in range(nt):
            partial[ty, t, lane] = acc[t]
        cuda.syncthreads()
        step = lanes // 2
        while step > 0:
            if lane < step:
                for t in range(nt):
                    partial[ty, t, lane] += partial[ty, t, lane + step]
            cuda.syncthreads()
            step //= 2
        if r < w.shape[0]:
            for t in range(lane, nt, lanes):
                value = partial[ty, t, 0]
                if bias.shape[0] > 0:
                    value += bias[r]
                out[t0 + t, col0 + r] = value
        cuda.syncthreads()  # before the next row group reuses `partial`


@cuda.jit(device=True)
def _inv_rms(partial, x, i, first, d, eps):
    """1 / sqrt(mean(x[i, first:first + d]^2) + eps), the block's lanes each summing every lanes-th element
    (shared `partial` for their tree), for every lane."""
    total = float32(0.0)
    for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        total += x[i, first + j] * x[i, first + j]
    return float32(1.0) / math.sqrt(_block_sum(partial, total) / float32(d) + eps)


@cuda.jit(cache=True)
def rms_norm(x, weight, eps, out):
    """out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight for each row i of x (n, d), or out[i] = x[i] when weight
    is empty (a branch without an input norm); grid n."""
    i = cuda.blockIdx.x
    if weight.shape[0] == 0:
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[i, j] = x[i, j]
        return
    partial = cuda.shared.array(WARP, float32)
    inv = _inv_rms(partial, x, i, 0, x.shape[1], eps)
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        out[i, j] = x[i, j] * inv * weight[j]


@cuda.jit(cache=True)
def rms_norm_span(x, first, d, weight, eps):
    """x[i, first:first + d] normed in place, times weight (d,), for each row i: q or k normed over all its heads
    at once (olmo2's qk-norm); grid n."""
    i = cuda.blockIdx.x
    partial = cuda.shared.array(WARP, float32)
    inv = _inv_rms(partial, x, i, first, d, eps)  # every lane's reads are summed before any lane writes
    for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
        x[i, first + j] = x[i, first + j] * inv * weight[j]


@cuda.jit(cache=True)
def add_norm(x, y, post_weight, eps, scale, weight, out):
    """x += y, or with a (non-empty) post_weight x += rms_norm(y) * post_weight (the post-norms), that branch
    first times scale unless it is 1 (granite's residual_scale); then out = rms_norm(x) * weight (out = x when
    weight is empty: no input norm): the residual and the next step's input norm in one launch; grid n."""
    i, lane, lanes = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
    partial = cuda.shared.array(WARP, float32)
    post = post_weight.shape[0] > 0
    inv = _inv_rms(partial, y, i, 0, y.shape[1], eps) if post else float32(1.0)
    for j in range(lane, x.shape[1], lanes):  # each lane later reads back only what it wrote
        branch = y[i, j] * inv * post_weight[j] if post else y[i, j]
        x[i, j] += branch * scale if scale != float32(1.0) else branch
    if weight.shape[0] == 0:
        for j in range(lane, x.shape[1], lanes):
            out[i, j] = x[i, j]
        return
    inv = _inv_rms(partial, x, i, 0, x.shape[1], eps)
    for j in range(lane, x.shape[1], lanes):
        out[i, j] = x[i, j] * inv * weight[j]


@cuda.jit(cache=True)
def qk_norm_rope(qkv, n_head, n_head_kv, q_norm, k_norm, eps, positions, cos, sin, n_rot, neox):
    """In place on qkv (n, (n_head + 2 n_head_kv) * hd), q's heads then k's then v's: each q and k head
    normed (when its weight is not empty: qk-norm) and rotated (`rope`); grid (n, n_head + n_head_kv)."""
    t, g = cuda.blockIdx.x, cuda.blockIdx.y
    lane, lanes = cuda.threadIdx.x, cuda.blockDim.x
    hd = qkv.shape[1] // (n_head + 2 * n_head_kv)
    first = g * hd  # k's heads follow q's
    weight = q_norm if g < n_head else k_norm
    if weight.shape[0] > 0:
        partial = cuda.shared.array(WARP, float32)
        inv = _inv_rms(partial, qkv, t, first, hd, eps)
        for j in range(lane, hd, lanes):
            qkv[t, first + j] = qkv[t, first + j] * inv * weight[j]
        cuda.syncthreads()  # a pair's two halves may have been normed by two lanes
    half = n_rot // 2
    p = positions[t]
    for i in range(lane, half, lanes):
        a_at = first + (i if neox else 2 * i)
        b_at = a_at + (half if neox else 1)
        a, b = qkv[t, a_at], qkv[t, b_at]
        qkv[t, a_at] = a * cos[p, i] - b * sin[p, i]
        qkv[t, b_at] = a * sin[p, i] + b * cos[p, i]


@cuda.jit(cache=True)
def gated_activation(gate, up, kind, out):
    """out = act(gate) * up for gate, up, out (n, n_ff) float32, act silu (kind 0) or gelu_tanh (1); or
    swiglu_oai(gate, up) (2); a thread per element (the grid looping over the rest)."""
    for i in range(cuda.grid(1), out.shape[0] * out.shape[1], cuda.gridsize(1)):
        t, j = i // out.shape[1], i % out.shape[1]
        g = gate[t, j]
        if kind == 2:
            out[t, j] = swiglu_oai(g, up[t, j])
        else:
            out[t, j] = (gelu_tanh(g) if kind == 1 else silu(g)) * up[t, j]


@cuda.jit(cache=True)
def temperature_rows(x, n_cols, positions, scale, floor_scale):
    """x[t, :n_cols] *= attn_temperature(positions[t]): q scaled by its row's attention temperature (the CPU's
    `kernels.steps.temperature_rows`); a thread per element."""
    for i in range(cuda.grid(1), x.shape[0] * n_cols, cuda.gridsize(1)):
        t, j = i // n_cols, i % n_cols
        x[t, j] *= attn_temperature(positions[t], scale, floor_scale)


@cuda.jit(cache=True)
def add_gated(out, y, h, gate):
    """out[t] += sigmoid(h[t] . gate) * y[t] (gate empty: out[t] += y[t]): a shared expert's output, weighted by
    its gate (the dot summed in column order); a thread per token."""
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        weight = float32(1.0)
        if gate.shape[0]:
            logit = float32(0.0)
            for j in range(h.shape[1]):
                logit += h[t, j] * gate[j]
            weight = float32(1.0) / (float32(1.0) + math.exp(-logit))
        for j in range(out.shape[1]):
            out[t, j] += y[t, j] * weight


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


@cuda.jit(cache=True)
def store_kv(qkv, rows0, n, q_dim, keys, values, pos0):
    """keys/values[pos0 + t] = the k and v parts of qkv[rows0 + t] (columns q_dim.., then the next kv_dim) as
    float16 bits, for the n tokens of a sequence: keys/values (n_ctx, n_kv, hd) uint16; a thread per element
    of k (and its v)."""
    hd, kv_dim = keys.shape[2], keys.shape[1] * keys.shape[2]
    for i in range(cuda.grid(1), n * kv_dim, cuda.gridsize(1)):
        t, j = i // kv_dim, i % kv_dim
        keys[pos0 + t, j // hd, j % hd] = half_bits(qkv[rows0 + t, q_dim + j])
        values[pos0 + t, j // hd, j % hd] = half_bits(qkv[rows0 + t, q_dim + kv_dim + j])


@cuda.jit(cache=True)
def gather_rows(src, rows, dst):
    """dst[i] = src[rows[i]]: the tokens routed to one expert; a thread per element."""
    for i in range(cuda.grid(1), dst.shape[0] * dst.shape[1], cuda.gridsize(1)):
        r, j = i // dst.shape[1], i % dst.shape[1]
        dst[r, j] = src[rows[r], j]


@cuda.jit(cache=True)
def scatter_scaled(y, rows, ranks, weights, parts):
    """parts[ranks[i], rows[i]] = y[i] * weights[i]: an expert's outputs, weighted, in their tokens' places
    among each token's ranked experts; a thread per element."""
    for i in range(cuda.grid(1), y.shape[0] * y.shape[1], cuda.gridsize(1)):
        r, j = i // y.shape[1], i % y.shape[1]
        parts[ranks[r], rows[r], j] = y[r, j] * weights[r]


@cuda.jit(cache=True)
def sum_ranks(parts, out):
    """out = parts[0] + parts[1] + ..., in rank order (best expert first, as the CPU sums them)."""
    for i in range(cuda.grid(1), out.shape[0] * out.shape[1], cuda.gridsize(1)):
        t, j = i // out.shape[1], i % out.shape[1]
        total = parts[0, t, j]
        for rank in range(1, parts.shape[0]):
            total += parts[rank, t, j]
        out[t, j] = total


@cuda.jit(cache=True)
def attention(q, keys, values, pos0, key_pos0, window, scale, cap, sinks, out):
    """q (n, n_head * hd) float32 at positions pos0..; keys/values (s, n_kv, hd) uint16 halves at positions
    key_pos0..; out (n, n_head * hd). Query p sees keys at max(key_pos0, p - window + 1)..p (window 0: from
    key_pos0); cap > 0 turns each scaled score x into cap * tanh(x / cap); sinks (n_head,) or empty: one more
    score per head, without a value. hd <= MAX_HEAD_DIM."""
    t, h = cuda.blockIdx.x, cuda.blockIdx.y
    lane = cuda.threadIdx.x
    hd = keys.shape[2]
    q0 = h * hd
    kv = h // (q.shape[1] // hd // keys.shape[1])
    p = pos0 + t
    first = max(key_pos0, p - window + 1) if window > 0 else key_pos0
    acc = cuda.local.array(MAX_HEAD_DIM, float32)
    for d in range(hd):
        acc[d] = float32(0.0)
    top, weight = float32(-math.inf), float32(0.0)  # this thread's running max and sum of exp(score - top)
    for key in range(first + lane, p + 1, cuda.blockDim.x):
        row = key - key_pos0
        score = float32(0.0)
        for d in range(hd):
            score += q[t, q0 + d] * half_value(int32(keys[row, kv, d]))
        score *= scale
        if cap > 0:
            score = softcap(score, cap)
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
    for i in range(cuda.blockDim.x):
        best = max(best, tops[i])
    if sinks.shape[0]:
        best = max(best, sinks[h])
    total = float32(0.0)
    for i in range(cuda.blockDim.x):
        if weights[i] > 0:
            total += weights[i] * math.exp(tops[i] - best)
    if sinks.shape[0]:
        total += math.exp(sinks[h] - best)
    for d in range(lane, hd, cuda.blockDim.x):
        value = float32(0.0)
        for i in range(cuda.blockDim.x):
            if weights[i] > 0:
                value += accs[i, d] * math.exp(tops[i] - best)
        out[t, q0 + d] = value / total


NO_BIAS = np.zeros(0, np.float32)  # "no bias" / "no norm weight" for the kernels


# Launches, with LAUNCH's sizes unless told otherwise (the kernel tests also run ON_GPU's).

def launch_product(fmt: int, w, x, bias, out, col0: int = 0, launch: Launch | None = None) -> None:
    """`product` over every row of w and every token of x."""
    launch = launch or LAUNCH
    grid = (launch.blocks(w.shape[0], launch.rows), -(-x.shape[0] // TOKENS_PER_BLOCK))
    product[grid, (launch.lanes, launch.rows)](fmt, w, x, bias, out, col0)


def launch_rms_norm(x, weight, eps: float, out, launch: Launch | None = None) -> None:
    rms_norm[x.shape[0], (launch or LAUNCH).lanes](x, weight, np.float32(eps), out)


def launch_rms_norm_span(x, first: int, d: int, weight, eps: float, launch: Launch | None = None) -> None:
    rms_norm_span[x.shape[0], (launch or LAUNCH).lanes](x, first, d, weight, np.float32(eps))


def launch_add_norm(x, y, post_weight, eps: float, weight, out, launch: Launch | None = None, scale: float = 1.0
                    ) -> None:
    add_norm[x.shape[0], (launch or LAUNCH).lanes](x, y, post_weight, np.float32(eps), np.float32(scale), weight,
                                                   out)


def launch_qk_norm_rope(qkv, n_head: int, n_head_kv: int, q_norm, k_norm, eps: float, positions, cos, sin,
                        n_rot: int, neox: bool, launch: Launch | None = None) -> None:
    qk_norm_rope[(qkv.shape[0], n_head + n_head_kv), (launch or LAUNCH).lanes](
        qkv, n_head, n_head_kv, q_norm, k_norm, np.float32(eps), positions, cos, sin, n_rot, neox)


def launch_elementwise(kernel, n_elements: int, *args, launch: Launch | None = None) -> None:
    """An element-wise kernel (`gated_activation`, `store_kv`, the experts' pieces) over n_elements."""
    launch = launch or LAUNCH
    kernel[launch.blocks(n_elements, launch.threads), launch.threads](*args)


def launch_attention(q, keys, values, pos0: int, key_pos0: int, window: int, scale: float, softcap: float, out,
                     launch: Launch | None = None, sinks=NO_BIAS) -> None:
    n_head = q.shape[1] // keys.shape[2]
    attention[(q.shape[0], n_head), (launch or LAUNCH).lanes](q, keys, values, pos0, key_pos0, window,
                                                              np.float32(scale), np.float32(softcap), sinks, out)


def matmul(type_name: str, w_device, x: np.ndarray, bias: np.ndarray = NO_BIAS,
           launch: Launch | None = None) -> np.ndarray:
    """x (n, cols) @ W.T for a weight already on the device in its GGUF encoding; returns (n, rows) float32."""
    out = cuda.device_array((x.shape[0], w_device.shape[0]), np.float32)
    launch_product(FORMAT_IDS[type_name], w_device, cuda.to_device(x), cuda.to_device(bias), out, launch=launch)
    return out.copy_to_host()
