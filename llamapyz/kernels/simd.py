"""LLVM IR building blocks for the kernels: half -> float conversion per CPU tier, a float dot product in a
fixed vector order, and the small vector helpers that `blockdot.py` (the quantized row kernels) builds on.

Why IR: numba types every integer operation as int64 and unrolls fixed 16/32-element loops into scalar
code; written as LLVM vector operations the same steps compile to the target's SIMD instructions.
Functions that read an array take it plus an element (byte) offset; callers guarantee the elements exist.
Each has a plain numpy twin in `tests/test_kernels.py`.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..machine.cpu import active

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)


def _vec(element: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(element, n)


def _splat(element: ir.Type, n: int, value: int) -> ir.Constant:
    return ir.Constant(_vec(element, n), [value] * n)


def _load(context, builder, array_type, array, offset, ty: ir.Type, align: int = 1) -> ir.Value:
    """Load a value of type `ty` from element `offset` of a 1-d array (a byte offset for byte arrays)."""
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.gep(data, [offset])
    return builder.load(builder.bitcast(pointer, ty.as_pointer()), align=align)


def _concat(builder, a: ir.Value, b: ir.Value) -> ir.Value:
    n = a.type.count
    return builder.shuffle_vector(a, b, ir.Constant(_vec(I32, 2 * n), list(range(2 * n))))


def _const(like: ir.Type, value: int) -> ir.Constant:
    """`value` as an i32 constant, splat to a vector if `like` is one."""
    return _splat(I32, like.count, value) if isinstance(like, ir.VectorType) else ir.Constant(I32, value)


def _shaped(like: ir.Value, element: ir.Type) -> ir.Type:
    """`element`, or a vector of it as long as `like` if that is a vector."""
    return _vec(element, like.type.count) if isinstance(like.type, ir.VectorType) else element


def _half_to_float_native(builder, bits: ir.Value) -> ir.Value:
    """i16 (or <n x i16>) IEEE half bits -> float: one instruction with F16C, NEON or better."""
    return builder.fpext(builder.bitcast(bits, _shaped(bits, ir.HalfType())), _shaped(bits, ir.FloatType()))


def _half_to_float_integer(builder, bits: ir.Value) -> ir.Value:
    """The same conversion in integer operations (exact for every half, subnormals, infinities and NaNs
    included): move exponent and mantissa into float position and rebias; an all-ones exponent is rebiased
    once more to stay infinite/NaN; a zero exponent is renormalized by one float subtraction."""
    i32, f32 = _shaped(bits, I32), _shaped(bits, ir.FloatType())
    h = builder.zext(bits, i32)
    sign = builder.shl(builder.and_(h, _const(i32, 0x8000)), _const(i32, 16))
    o = builder.shl(builder.and_(h, _const(i32, 0x7FFF)), _const(i32, 13))
    exponent = builder.and_(o, _const(i32, 0x0F800000))
    o = builder.add(o, _const(i32, 0x38000000))  # (127 - 15) << 23
    o = builder.select(builder.icmp_unsigned("==", exponent, _const(i32, 0x0F800000)),
                       builder.add(o, _const(i32, 0x38000000)), o)
    subnormal = builder.fsub(builder.bitcast(builder.add(o, _const(i32, 1 << 23)), f32),
                             builder.bitcast(_const(i32, 0x38800000), f32))  # - 2**-14
    f = builder.select(builder.icmp_unsigned("==", exponent, _const(i32, 0)), subnormal, builder.bitcast(o, f32))
    return builder.bitcast(builder.or_(builder.bitcast(f, i32), sign), f32)


HALF_TO_FLOAT = {True: _half_to_float_native, False: _half_to_float_integer}  # by `Target.native_f16`


def _half_to_float(builder, bits: ir.Value) -> ir.Value:
    """The conversion the CPU target calls for: the tier's pick, made when a kernel is compiled."""
    return HALF_TO_FLOAT[active().native_f16](builder, bits)


def _f16_at(convert):
    def typer(typingctx, buf, offset):
        sig = types.float32(buf, offset)

        def codegen(context, builder, signature, args):
            return convert(builder, _load(context, builder, signature.args[0], args[0], args[1], I16))

        return sig, codegen

    return typer


f16_at = intrinsic(_f16_at(_half_to_float))
f16_at.__doc__ = "The IEEE half at byte `offset` of `buf`, as float32 (exact)."
f16_at_integer = intrinsic(_f16_at(_half_to_float_integer))
f16_at_integer.__doc__ = "f16_at by integer operations whatever the target (the ssse3 tier's; for its tests)."


@intrinsic
def f16_value(typingctx, bits):
    """The IEEE half whose bits are the low 16 of integer `bits`, as float32 (exact)."""
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        return _half_to_float(builder, builder.trunc(args[0], I16))

    return sig, codegen


def fixed_order_dot(context, builder, signature, args, load_b) -> ir.Value:
    """`dot_f32`'s code for (a, b, n): b's 16 elements at j come from load_b(j) as <16 x float> (`half.py`
    widens halves there), so every variant keeps the one order."""
    lanes = 16
    vector = _vec(ir.FloatType(), lanes)
    total = cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * lanes))
    zero, step = ir.Constant(args[2].type, 0), ir.Constant(args[2].type, lanes)
    with cgutils.for_range_slice(builder, zero, args[2], step, inc=True) as (j, _):
        va = _load(context, builder, signature.args[0], args[0], j, vector, align=4)
        builder.store(builder.fadd(builder.load(total), builder.fmul(va, load_b(j))), total)
    v = builder.load(total)
    while lanes > 1:
        lanes //= 2
        low = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, lanes), list(range(lanes))))
        high = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, lanes), list(range(lanes, 2 * lanes))))
        v = builder.fadd(low, high)
    return builder.extract_element(v, ir.Constant(I32, 0))


@intrinsic
def dot_f32(typingctx, a, b, n):
    """sum(a[:n] * b[:n]) for float32 arrays, n a multiple of 16: lane-wise running sums of 16 (element j
    goes to lane j % 16), then a fixed pairwise tree (16 -> 8 -> 4 -> 2 -> 1); no fused multiply-add. SSE,
    AVX2 and AVX-512 code computes the very same float operations, so every CPU tier gets the same bits,
    and no reassociation (fastmath) is needed to vectorize it."""
    sig = types.float32(a, b, n)

    def codegen(context, builder, signature, args):
        vector = _vec(ir.FloatType(), 16)
        return fixed_order_dot(context, builder, signature, args,
                               lambda j: _load(context, builder, signature.args[1], args[1], j, vector, align=4))

    return sig, codegen
