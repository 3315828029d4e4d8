"""Short-vector building blocks for the block kernels, written as LLVM vector IR.

Why: numba types every integer operation as int64 and unrolls fixed 16/32-element loops into scalar code,
so a plain `for j in range(32): s += q[j] * x[j]` over int8 runs at ~2 GMAC/s. Expressed as one LLVM
vector expression (load <32 x i8>, widen, multiply, reduce-add) the same block dot product compiles to
the host's SIMD instructions (pmaddubsw/vpdpbusd on x86, sdot on NEON) and runs 4-5x faster. The code
is target-neutral IR: LLVM picks the instructions for the CPU numba compiles for.

Every function takes a uint8/int8 array plus a byte offset and reads a fixed number of bytes from there;
callers guarantee the bytes exist (kernels derive offsets from the quant table's block layout). Each has
a plain numpy twin in `tests/test_kernels.py`.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..cpu import active

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


def _reduce_add(builder, vector: ir.Value) -> ir.Value:
    fnty = ir.FunctionType(vector.type.element, [vector.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.add.v{vector.type.count}i32")
    return builder.call(fn, [vector])


def _dot(builder, weights: ir.Value, weights_signed: bool, x: ir.Value, signed_dot: bool | None = None) -> ir.Value:
    """sum(weights * x) over n lanes, widened to int32 first (no overflow for 8-bit inputs).

    Unsigned weights (nibbles, 5-bit values: always below 128) are widened as the target's dot product
    instruction wants (`Target.signed_dot`): x86's pmaddubsw/vpdpbusd multiply u8 by s8 and are matched
    from zext x sext; Arm's sdot needs both signed, matched from sext x sext. Below 128 both give the
    same number."""
    wide = _vec(I32, weights.type.count)
    signed_dot = active().signed_dot if signed_dot is None else signed_dot
    w = builder.sext(weights, wide) if weights_signed or signed_dot else builder.zext(weights, wide)
    return _reduce_add(builder, builder.mul(w, builder.sext(x, wide)))


def _nibbles(builder, packed: ir.Value, high: bool) -> ir.Value:
    n = packed.type.count
    if high:
        return builder.lshr(packed, _splat(I8, n, 4))
    return builder.and_(packed, _splat(I8, n, 15))


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
def dot_i8x32(typingctx, w, wo, x, xo):
    """sum(int8 w[wo:wo+32] * int8 x[xo:xo+32])."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, signature, args):
        vw = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, 32))
        vx = _load(context, builder, signature.args[2], args[2], args[3], _vec(I8, 32))
        return _dot(builder, vw, True, vx)

    return sig, codegen


@intrinsic
def dot_u4x32(typingctx, w, wo, x, xo):
    """16 packed bytes at wo: low nibbles are values 0..15, high nibbles 16..31 (Q4_0/Q4_1/Q5_* layout)."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, signature, args):
        packed = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, 16))
        q = _concat(builder, _nibbles(builder, packed, False), _nibbles(builder, packed, True))
        vx = _load(context, builder, signature.args[2], args[2], args[3], _vec(I8, 32))
        return _dot(builder, q, False, vx)

    return sig, codegen


def _dot_nibbles32(high: bool):
    def typer(typingctx, w, wo, x, xo):
        sig = types.int32(w, wo, x, xo)

        def codegen(context, builder, signature, args):
            packed = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, 32))
            vx = _load(context, builder, signature.args[2], args[2], args[3], _vec(I8, 32))
            return _dot(builder, _nibbles(builder, packed, high), False, vx)

        return sig, codegen

    return typer


dot_lo4x32 = intrinsic(_dot_nibbles32(False))
dot_lo4x32.__doc__ = "32 bytes at wo, their low nibbles as 32 values (Q4_K/Q5_K even sub-blocks)."
dot_hi4x32 = intrinsic(_dot_nibbles32(True))
dot_hi4x32.__doc__ = "32 bytes at wo, their high nibbles as 32 values (Q4_K/Q5_K odd sub-blocks)."


def _broadcast(builder, scalar: ir.Value, n: int) -> ir.Value:
    vector = builder.insert_element(ir.Constant(_vec(scalar.type, n), None), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(vector, vector, ir.Constant(_vec(I32, n), [0] * n))


def _field(builder, packed: ir.Value, shift: ir.Value, mask: int) -> ir.Value:
    """(packed >> shift) & mask in every lane; `shift` is a runtime int64."""
    n = packed.type.count
    return builder.and_(builder.lshr(packed, _broadcast(builder, builder.trunc(shift, I8), n)), _splat(I8, n, mask))


def _fifth_bits(builder, word: ir.Value) -> ir.Value:
    """A 32-bit word -> <32 x i8> holding 16 where bit j is set, else 0."""
    bits = builder.zext(builder.bitcast(word, _vec(ir.IntType(1), 32)), _vec(I8, 32))
    return builder.shl(bits, _splat(I8, 32, 4))


@intrinsic
def dot_q5x32(typingctx, w, qs_o, qh_o, x, xo):
    """Q5_0/Q5_1 values: nibbles of the 16 bytes at qs_o (as dot_u4x32) plus 16 * bit j of the word at qh_o."""
    sig = types.int32(w, qs_o, qh_o, x, xo)

    def codegen(context, builder, signature, args):
        packed = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, 16))
        low = _concat(builder, _nibbles(builder, packed, False), _nibbles(builder, packed, True))
        word = _load(context, builder, signature.args[0], args[0], args[2], I32)
        q = builder.or_(low, _fifth_bits(builder, word))
        vx = _load(context, builder, signature.args[3], args[3], args[4], _vec(I8, 32))
        return _dot(builder, q, False, vx)

    return sig, codegen


@intrinsic
def dot_k5x32(typingctx, w, qs_o, shift, qh_o, bit, x, xo):
    """Q5_K sub-block: nibble (shift 0 or 4) of the 32 bytes at qs_o plus 16 * bit `bit` of the bytes at qh_o."""
    sig = types.int32(w, qs_o, shift, qh_o, bit, x, xo)

    def codegen(context, builder, signature, args):
        n = 32
        qs = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, n))
        low = _field(builder, qs, args[2], 15)
        qh = _load(context, builder, signature.args[0], args[0], args[3], _vec(I8, n))
        high = _field(builder, qh, args[4], 1)
        q = builder.or_(low, builder.shl(high, _splat(I8, n, 4)))
        vx = _load(context, builder, signature.args[5], args[5], args[6], _vec(I8, n))
        return _dot(builder, q, False, vx)

    return sig, codegen


@intrinsic
def dot_q6x32(typingctx, w, ql_o, ql_shift, qh_o, qh_shift, sc_o, x, xo):
    """32 Q6_K values q = ((ql >> ql_shift) & 15) | (((qh >> qh_shift) & 3) << 4) - 32, the first 16 weighted
    by the int8 scale at sc_o and the last 16 by the one at sc_o + 1, dotted with x."""
    sig = types.int32(w, ql_o, ql_shift, qh_o, qh_shift, sc_o, x, xo)

    def codegen(context, builder, signature, args):
        n = 32
        ql = _load(context, builder, signature.args[0], args[0], args[1], _vec(I8, n))
        qh = _load(context, builder, signature.args[0], args[0], args[3], _vec(I8, n))
        low = _field(builder, ql, args[2], 15)
        high = _field(builder, qh, args[4], 3)
        q = builder.sub(builder.or_(low, builder.shl(high, _splat(I8, n, 4))), _splat(I8, n, 32))
        pair = _load(context, builder, signature.args[0], args[0], args[5], _vec(I8, 2))
        scales = builder.shuffle_vector(pair, pair, ir.Constant(_vec(I32, n), [0] * 16 + [1] * 16))
        wide = _vec(I32, n)
        vx = _load(context, builder, signature.args[6], args[6], args[7], _vec(I8, n))
        product = builder.mul(builder.mul(builder.sext(q, wide), builder.sext(vx, wide)), builder.sext(scales, wide))
        return _reduce_add(builder, product)

    return sig, codegen


@intrinsic
def f16x16_to_f32(typingctx, src, so, dst, do):
    """dst[do:do+16] = float32(src[so:so+16]) for uint16 arrays holding IEEE halves (vcvtph2ps on x86)."""
    sig = types.void(src, so, dst, do)

    def codegen(context, builder, signature, args):
        n = 16
        bits = _load(context, builder, signature.args[0], args[0], args[1], _vec(I16, n), align=2)
        dst_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        dst_pointer = builder.bitcast(builder.gep(dst_data, [args[3]]), _vec(ir.FloatType(), n).as_pointer())
        builder.store(_half_to_float(builder, bits), dst_pointer, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dot_f32(typingctx, a, b, n):
    """sum(a[:n] * b[:n]) for float32 arrays, n a multiple of 16: lane-wise running sums of 16 (element j
    goes to lane j % 16), then a fixed pairwise tree (16 -> 8 -> 4 -> 2 -> 1); no fused multiply-add. SSE,
    AVX2 and AVX-512 code computes the very same float operations, so every CPU tier gets the same bits,
    and no reassociation (fastmath) is needed to vectorize it."""
    sig = types.float32(a, b, n)

    def codegen(context, builder, signature, args):
        lanes = 16
        vector = _vec(ir.FloatType(), lanes)
        total = cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * lanes))
        zero, step = ir.Constant(args[2].type, 0), ir.Constant(args[2].type, lanes)
        with cgutils.for_range_slice(builder, zero, args[2], step, inc=True) as (j, _):
            va = _load(context, builder, signature.args[0], args[0], j, vector, align=4)
            vb = _load(context, builder, signature.args[1], args[1], j, vector, align=4)
            builder.store(builder.fadd(builder.load(total), builder.fmul(va, vb)), total)
        v = builder.load(total)
        while lanes > 1:
            lanes //= 2
            low = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, lanes), list(range(lanes))))
            high = builder.shuffle_vector(v, v, ir.Constant(_vec(I32, lanes), list(range(lanes, 2 * lanes))))
            v = builder.fadd(low, high)
        return builder.extract_element(v, ir.Constant(I32, 0))

    return sig, codegen
