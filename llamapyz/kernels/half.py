"""float32 or IEEE half (float16) operands for the float kernels, so attention reads an f16 KV cache in place.

numba has no float16 arrays: a float16 array reaches a kernel as its uint16 view (`a.view(np.uint16)`) and is
widened here as it is read, 16 halves at a time in registers (vcvtph2ps with F16C, the tier's conversion
otherwise), never converted wholesale nor stored as float32. Half -> float is exact and every operation
keeps the float32 path's order, so a kernel computes the same bits from a float16 array as from its
float32 copy (`tests/test_half.py`, `tests/test_steps.py`).

`dot`, `at` and `add_scaled` pick their code by the array's dtype when a kernel is compiled (numba
overloads): a float32 array gets exactly the float32 code, a uint16 one the widening intrinsics below.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .simd import I16, I32, _half_to_float, _load, _vec, dot_f32, f16_at, fixed_order_dot

LANES = 16


def _halves(context, builder, array_type, array, offset) -> ir.Value:
    """16 halves at element `offset` of a uint16 array, as <16 x float>."""
    return _half_to_float(builder, _load(context, builder, array_type, array, offset, _vec(I16, LANES), align=2))


@intrinsic
def dot_f32_f16(typingctx, a, b, n):
    """sum(a[:n] * float32(b[:n])) for float32 `a` and uint16 `b` holding halves, n a multiple of 16, in
    `simd.dot_f32`'s order (lane-wise running sums of 16, the pairwise tree 16 -> 8 -> 4 -> 2 -> 1, no fused
    multiply-add; the same code, `simd.fixed_order_dot`) with the conversion in b's load: the bits of dot_f32 on
    b's float32 copy."""
    sig = types.float32(a, b, n)

    def codegen(context, builder, signature, args):
        return fixed_order_dot(context, builder, signature, args,
                               lambda j: _halves(context, builder, signature.args[1], args[1], j))

    return sig, codegen


@intrinsic
def add_scaled_f16(typingctx, acc, p, v, n):
    """acc[:n] += p * float32(v[:n]) for float32 `acc`, float32 `p` and uint16 `v` holding halves, n a multiple
    of 16: per element a product then a sum, as the plain loop computes it."""
    sig = types.void(acc, p, v, n)

    def codegen(context, builder, signature, args):
        vector = _vec(ir.FloatType(), LANES)
        scale = builder.insert_element(ir.Constant(vector, None), args[1], ir.Constant(I32, 0))
        scale = builder.shuffle_vector(scale, scale, ir.Constant(_vec(I32, LANES), [0] * LANES))
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        zero, step = ir.Constant(args[3].type, 0), ir.Constant(args[3].type, LANES)
        with cgutils.for_range_slice(builder, zero, args[3], step, inc=True) as (j, _):
            pointer = builder.bitcast(builder.gep(data, [j]), vector.as_pointer())
            product = builder.fmul(scale, _halves(context, builder, signature.args[2], args[2], j))
            builder.store(builder.fadd(builder.load(pointer, align=4), product), pointer, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _is_halves(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.uint16


def dot(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """sum(a[:n] * b[:n]), n a multiple of 16, `b` float32 or halves: `simd.dot_f32`'s bits. @njit code only."""
    raise NotImplementedError("compiled into numba kernels only")


def at(b: np.ndarray, j: int) -> float:
    """b[j] as float32, `b` float32 or halves. @njit code only."""
    raise NotImplementedError("compiled into numba kernels only")


def add_scaled(acc: np.ndarray, p: float, v: np.ndarray) -> None:
    """acc += p * v element by element, `v` float32 or halves. @njit code only."""
    raise NotImplementedError("compiled into numba kernels only")


@overload(dot, inline="always")
def _dot(a, b, n):
    if _is_halves(b):
        return lambda a, b, n: dot_f32_f16(a, b, n)
    return lambda a, b, n: dot_f32(a, b, n)


@overload(at, inline="always")
def _at(b, j):
    if _is_halves(b):
        return lambda b, j: f16_at(b, j)  # the offset counts elements of b: uint16s
    return lambda b, j: b[j]


@overload(add_scaled, inline="always")
def _add_scaled(acc, p, v):
    if _is_halves(v):
        def widening(acc, p, v):
            n = acc.shape[0] - acc.shape[0] % LANES
            add_scaled_f16(acc, p, v, n)
            for j in range(n, acc.shape[0]):
                acc[j] += p * f16_at(v, j)
        return widening

    def plain(acc, p, v):
        for j in range(acc.shape[0]):
            acc[j] += p * v[j]
    return plain
