"""Scalar float32 math written once for the CPU and the GPU: the CPU kernels compile these sources with numba's
`njit` (`steps.py`), the GPU kernels with numba-cuda's device `jit` (`gpu/kernels.py`), so an activation or a
cap is one definition, whatever runs it.

Each is a plain function of float32 scalars using only what both compilers take (`math`, numba's `float32`
casts) and calling none of the others (each target wraps each one itself). Both targets keep the written
order of operations (no reassociation, no fused multiply-add on the CPU), so the CPU's results are the bits
they were before these were shared; the GPU's libm differs from the CPU's in the last bits of tanh and exp
(its tolerance: tests/test_gpu_offload.py). Their numpy twins are `model/reference.py`'s.
"""

from __future__ import annotations

import math

from numba import float32

SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2 / pi), rounded to float32 where it is used


def gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): gemma's gated activation."""
    return float32(0.5) * x * (float32(1.0) + math.tanh(float32(SQRT_2_OVER_PI) * (x + float32(0.044715) * x * x * x)))


def silu(x):
    """x / (1 + exp(-x)): llama's gated activation."""
    return x / (float32(1.0) + math.exp(-x))


SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT = 1.702, 7.0  # gpt-oss's, as llama.cpp fixes them


def swiglu_oai(gate, up):
    """g / (1 + exp(-1.702 g)) * (u + 1), g = min(gate, 7), u = clamp(up, -7, 7): gpt-oss's gated activation
    (ggml's swiglu_oai, in its order of operations)."""
    limit = float32(SWIGLU_OAI_LIMIT)
    g = min(gate, limit)
    u = min(max(up, -limit), limit)
    return g / (float32(1.0) + math.exp(float32(SWIGLU_OAI_ALPHA) * -g)) * (u + float32(1.0))


def attn_temperature(position, scale, floor_scale):
    """1 + scale ln(floor(p / floor_scale) + 1), computed in float64 as llama.cpp does, as float32: the factor of
    q at position p under llama 4's attention temperature (mistral3)."""
    return float32(1.0 + scale * math.log(math.floor(position / floor_scale) + 1.0))


def softcap(x, cap):
    """cap * tanh(x / cap): gemma2's soft-capping of attention scores (and, in numpy, of the final logits)."""
    return cap * math.tanh(x / cap)
