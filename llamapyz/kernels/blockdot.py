"""Row kernels: one weight row in its GGUF encoding against the int8 blocks of every token, as one LLVM loop.

`row_dot(fmt, w, wo, xq, xd, xs, xqs, out, col)` computes out[t, col] for every token t from the row of
format `fmt` (its ggml type id) that starts at byte `wo` of w (uint8: the weights' bytes) and x's int8
blocks from `quantize_q8` / `quantize_q8_k` (matvec.py; C-contiguous, as out). Tokens go four at a time
(each weight block is unpacked once for all four), then one at a time.

Each format's kernel is one `@row_kernel(name, activation)` function below, the code for one block (one
super-block of 256 for the K-quants, IQ4_XS, the grid IQs and the TQs) of a row against every token of a
pass; `ROW_KERNELS` collects them, keyed by the format table's records (`llamapyz/gguf/quants.py`), whose
block bytes are the kernels' strides. `row_dot` is generated from that table: one switch on the ggml type
id with a case per format (numba cannot pick a function by a runtime value), so adding a format adds no line
to any dispatch.

Why a hand-written loop: each output keeps its partial sums in vector registers for the whole row and
reduces them once, where a block-at-a-time dot product pays a horizontal reduction per 32 values. The
order of every operation is fixed here, not left to a compiler or a library:

- weights to int8 first, in registers: bit fields, IQ4_NL's and MXFP4's levels by a byte shuffle (`levels`),
  the other IQs' grid entries loaded from a constant table in the module (`_grid`, `_gather`) with their
  signs as byte masks, TQ1_0's base-3 digits by a byte multiply.
- integer part: each block's products go to 8 int32 lanes, lane j summing the products of elements
  4j..4j+3 (x86: pmaddubsw + pmaddwd, or vpdpbusd with VNNI; Arm dotprod: sdot; elsewhere plain vector
  arithmetic; integer sums are exact, so every instruction choice gives the same lanes). pmaddubsw cannot saturate here:
  weights are below 64 (or |w| <= 128 for signed weights, whose sign moves onto x) and |x| <= 127.
- float part, per block (per super-block for the 256-value formats, whose sub-block scales are applied in
  integers first, as in llama.cpp): acc = fma(float(lanes), d_w * d_x, acc) in 8 float lanes (llvm.fma:
  fused on every target, a library call where the CPU has no FMA, as llama.cpp's x86 code accumulates);
  offset terms (Q4_1's m, the K-quants' mins) in one float `off` per token, no fused multiply-add.
- the end: lanes summed as a fixed tree (8 -> 4 -> 2 -> 1), then + off.

So a token's result depends on nothing but its own row of x: not on how many tokens share the call, nor
on the CPU tier (SSSE3 splits each 8-lane vector in two, AVX-512 does not, the float operations are the
same). `tests/test_blockdot.py` holds the numpy twin of every format, operation for operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..gguf.iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID
from ..gguf.quants import (
    FORMATS_BY_NAME,
    IQ4_NL_VALUES,
    MXFP4_VALUES,
    PARITY_SIGNS,
    TRIT_POWERS,
    KernelTable,
    QuantFormat,
)
from ..gguf.quants import e8m0_half as e8m0_half_values
from ..machine.cpu import Target, active
from .simd import I8, I16, I32, _concat, _half_to_float, _splat, _vec

LANES = 8  # float/int32 lanes of one accumulator
QK = 32  # elements per int8 block of x
TILE = 4  # tokens per pass over a row
PREFETCH = 1024  # bytes ahead of the block in use: decode streams a step's weights from memory (measured
# on the 2-core EPYC, one thread: a step's matrix products 20-25% faster than with the hardware prefetcher
# alone; 2048 no better)
F32 = ir.FloatType()
V8I32, V8F32, V32I8 = _vec(I32, LANES), _vec(F32, LANES), _vec(I8, 32)


# --- int8 dot products into 8 lanes, per instruction set --------------------------------------------------

def _call(builder, name: str, result: ir.Type, *args: ir.Value) -> ir.Value:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, [a.type for a in args]), name)
    return builder.call(fn, list(args))


def _half(builder, v: ir.Value, upper: bool) -> ir.Value:
    n = v.type.count // 2
    return builder.shuffle_vector(v, v, ir.Constant(_vec(I32, n), list(range(n * upper, n * upper + n))))


def _lanes_generic(builder, u: ir.Value, s: ir.Value, unsigned: bool) -> ir.Value:
    wide = _vec(I32, 32)
    w = builder.zext(u, wide) if unsigned else builder.sext(u, wide)
    p = builder.mul(w, builder.sext(s, wide))
    parts = [builder.shuffle_vector(p, p, ir.Constant(V8I32, [4 * j + k for j in range(LANES)])) for k in range(4)]
    return builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3]))


def _lanes_avx2(builder, u: ir.Value, s: ir.Value) -> ir.Value:
    pairs = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", _vec(I16, 16), u, s)
    return _call(builder, "llvm.x86.avx2.pmadd.wd", V8I32, pairs, _splat(I16, 16, 1))


def _lanes_ssse3(builder, u: ir.Value, s: ir.Value) -> ir.Value:
    quads = []
    for upper in (False, True):
        pairs = _call(builder, "llvm.x86.ssse3.pmadd.ub.sw.128", _vec(I16, 8), _half(builder, u, upper),
                      _half(builder, s, upper))
        quads.append(_call(builder, "llvm.x86.sse2.pmadd.wd", _vec(I32, 4), pairs, _splat(I16, 8, 1)))
    return _concat(builder, quads[0], quads[1])


def _lanes_vnni(builder, u: ir.Value, s: ir.Value) -> ir.Value:
    zero = ir.Constant(V8I32, [0] * LANES)
    return _call(builder, "llvm.x86.avx512.vpdpbusd.256", V8I32, zero, builder.bitcast(u, V8I32),
                 builder.bitcast(s, V8I32))


def _lanes_sdot(builder, u: ir.Value, s: ir.Value) -> ir.Value:
    zero = ir.Constant(_vec(I32, 4), [0] * 4)
    quads = [_call(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", _vec(I32, 4), zero, _half(builder, u, upper),
                   _half(builder, s, upper)) for upper in (False, True)]
    return _concat(builder, quads[0], quads[1])


def _lanes_of(target: Target | None) -> Callable | None:
    """The target's instructions for 8 lanes of signed-x dot products (None: plain vector arithmetic)."""
    target = target or active()
    if target.tier.arch == "aarch64":
        return _lanes_sdot if "asimddp" in target.features else None
    if target.tier.arch != "x86_64":
        return None
    if "avx512_vnni" in target.features or "avx_vnni" in target.features:
        return _lanes_vnni
    return _lanes_avx2 if "avx2" in target.features else _lanes_ssse3


def dot4u(builder, u: ir.Value, s: ir.Value, target: Target | None = None) -> ir.Value:
    """<32 x i8> unsigned weights times signed x -> <8 x i32>, for `target` (default: the active one).
    Weights are below 128 (Arm's sdot reads them as signed), or |w| <= 128 from `dot4s` on x86."""
    lanes = _lanes_of(target)
    return lanes(builder, u, s) if lanes else _lanes_generic(builder, u, s, True)


def dot4s(builder, w: ir.Value, s: ir.Value, target: Target | None = None) -> ir.Value:
    """<32 x i8> signed weights times signed x -> <8 x i32>; on x86 as |w| times x with w's sign."""
    lanes = _lanes_of(target)
    if lanes is None:
        return _lanes_generic(builder, w, s, False)
    if lanes is _lanes_sdot:
        return lanes(builder, w, s)
    zero = ir.Constant(V32I8, [0] * 32)
    magnitude = builder.select(builder.icmp_signed("<", w, zero), builder.sub(zero, w), w)  # vpabsb
    return dot4u(builder, magnitude, _sign_of(builder, s, w, target), target)


def _sign_of(builder, s: ir.Value, w: ir.Value, target: Target | None) -> ir.Value:
    """s with w's sign: -s where w < 0, 0 where w == 0, s elsewhere (x86's psignb, one instruction; LLVM does
    not find it in the selects, which cost four per block and token)."""
    target = target or active()
    if "avx2" in target.features:
        return _call(builder, "llvm.x86.avx2.psign.b", V32I8, s, w)
    halves = [_call(builder, "llvm.x86.ssse3.psign.b.128", _vec(I8, 16), _half(builder, s, upper),
                    _half(builder, w, upper)) for upper in (False, True)]
    return _concat(builder, halves[0], halves[1])


def levels(builder, values: tuple[int, ...], nibbles: ir.Value, target: Target | None = None) -> ir.Value:
    """<32 x i8> nibbles (0..15) -> their levels in `values` (16 signed bytes: IQ4_NL's, MXFP4's), for
    `target`: a byte shuffle from a register (pshufb on x86, one 32-byte one with AVX2; tbl on Arm), else
    15 compare-and-selects."""
    target = target or active()
    v16 = _vec(I8, 16)
    table = ir.Constant(v16, list(values))
    if target.tier.arch == "x86_64" and "avx2" in target.features:
        return _call(builder, "llvm.x86.avx2.pshuf.b", V32I8, ir.Constant(V32I8, list(values) * 2), nibbles)
    if target.tier.arch in ("x86_64", "aarch64"):
        name = "llvm.x86.ssse3.pshuf.b.128" if target.tier.arch == "x86_64" else "llvm.aarch64.neon.tbl1.v16i8"
        halves = [_call(builder, name, v16, table, _half(builder, nibbles, upper)) for upper in (False, True)]
        return _concat(builder, halves[0], halves[1])
    out = _splat(I8, 32, values[0])
    for k in range(1, 16):
        out = builder.select(builder.icmp_unsigned("==", nibbles, _splat(I8, 32, k)), _splat(I8, 32, values[k]), out)
    return out


# --- reading blocks ----------------------------------------------------------------------------------------

class Block:
    """IR helpers for one block at pointer `p` (i8*)."""

    def __init__(self, builder, p: ir.Value) -> None:
        self.b, self.p = builder, p

    def at(self, offset: int, ty: ir.Type) -> ir.Value:
        pointer = self.b.gep(self.p, [ir.Constant(I32, offset)])
        return self.b.load(self.b.bitcast(pointer, ty.as_pointer()), align=1)

    # Scale fields: a single half converted on its own compiles to vpinsrw, which merges into whatever
    # register the allocator picks; when that held a loop accumulator, each block waited for the one before
    # (decode 2x slower). So a block's halves are read in pairs, or broadcast (vpbroadcastw writes the
    # whole register): LLVM narrows a pair whose second half goes unused back to the one half.

    def halves(self, offset: int) -> tuple[ir.Value, ir.Value]:
        """The IEEE halves at offset and offset + 2, as floats (one 4-byte vector load and conversion)."""
        pair = _half_to_float(self.b, self.at(offset, _vec(I16, 2)))
        return tuple(self.b.extract_element(pair, ir.Constant(I32, i)) for i in (0, 1))

    def half_splat(self, offset: int) -> ir.Value:
        """The IEEE half at offset in all 8 lanes of a float vector."""
        h = self.b.insert_element(ir.Constant(_vec(I16, LANES), None), self.at(offset, I16), ir.Constant(I32, 0))
        h = self.b.shuffle_vector(h, h, ir.Constant(_vec(I32, LANES), [0] * LANES))
        return _half_to_float(self.b, h)

    def byte(self, offset: int) -> ir.Value:
        return self.b.zext(self.at(offset, I8), I32)

    def field(self, offset: int, shift: int, mask: int) -> ir.Value:
        """(bytes[offset:offset+32] >> shift) & mask, <32 x i8>."""
        v = self.at(offset, V32I8)
        if shift:
            v = self.b.lshr(v, _splat(I8, 32, shift))
        return self.b.and_(v, _splat(I8, 32, mask))

    def nibbles16(self, offset: int) -> ir.Value:
        """16 packed bytes -> 32 values: low nibbles first, then high (Q4_0/Q4_1/Q5_* order)."""
        packed = self.at(offset, _vec(I8, 16))
        low = self.b.and_(packed, _splat(I8, 16, 15))
        return _concat(self.b, low, self.b.lshr(packed, _splat(I8, 16, 4)))


class Tokens:
    """The tokens of one pass: their x blocks, scales and accumulators (acc: 8 float lanes, off: float)."""

    def __init__(self, context, builder, sig, args, t0: ir.Value, count: int) -> None:
        self.b = builder
        arrays = {}
        for name, ty, value in zip(("xq", "xd", "xs", "xqs"), sig.args[2:6], args[2:6], strict=True):
            arrays[name] = context.make_array(ty)(context, builder, value)
        self.n_cols = cgutils.unpack_tuple(builder, arrays["xq"].shape)[1]
        self.n_blocks = cgutils.unpack_tuple(builder, arrays["xd"].shape)[1]
        self.arrays = arrays
        self.rows = [builder.add(t0, ir.Constant(t0.type, i)) for i in range(count)]
        self.acc = [cgutils.alloca_once_value(builder, ir.Constant(V8F32, [0.0] * LANES)) for _ in self.rows]
        self.off = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in self.rows]

    def _element(self, name: str, t: int, index: ir.Value, width: ir.Value) -> ir.Value:
        flat = self.b.add(self.b.mul(self.rows[t], width), index)
        return self.b.gep(self.arrays[name].data, [flat])

    def x(self, t: int, block: ir.Value) -> ir.Value:
        """Token t's int8 values of 32-block `block`, <32 x i8>."""
        column = self.b.mul(block, ir.Constant(block.type, QK))
        pointer = self._element("xq", t, column, self.n_cols)
        return self.b.load(self.b.bitcast(pointer, V32I8.as_pointer()), align=1)

    def scalar(self, name: str, t: int, block: ir.Value) -> ir.Value:
        return self.b.load(self._element(name, t, block, self.n_blocks))

    def splat(self, name: str, t: int, block: ir.Value) -> ir.Value:
        return _broadcast(self.b, self.scalar(name, t, block), V8F32)

    def add_lanes(self, t: int, lanes: ir.Value, scale: ir.Value) -> None:
        """acc = fma(float(lanes), scale, acc): rounded once (scale a float, or the same float in 8 lanes)."""
        if not isinstance(scale.type, ir.VectorType):
            scale = _broadcast(self.b, scale, V8F32)
        acc = _call(self.b, "llvm.fma.v8f32", V8F32, self.b.sitofp(lanes, V8F32), scale, self.b.load(self.acc[t]))
        self.b.store(acc, self.acc[t])

    def add_offset(self, t: int, value: ir.Value) -> None:
        self.b.store(self.b.fadd(self.b.load(self.off[t]), value), self.off[t])

    def total(self, t: int) -> ir.Value:
        v = self.b.load(self.acc[t])
        n = LANES
        while n > 1:
            n //= 2
            v = self.b.fadd(_half(self.b, v, False), _half(self.b, v, True))
        return self.b.fadd(self.b.extract_element(v, ir.Constant(I32, 0)), self.b.load(self.off[t]))


def _broadcast(b, scalar: ir.Value, ty: ir.VectorType = V8I32) -> ir.Value:
    v = b.insert_element(ir.Constant(ty, None), scalar, ir.Constant(I32, 0))
    return b.shuffle_vector(v, v, ir.Constant(_vec(I32, ty.count), [0] * ty.count))


# --- the formats: one block (or super-block) of a row against every token of the pass ---------------------

Step = Callable[[Block, Tokens, ir.Value], None]  # (block at its pointer, the pass's tokens, first x block)


@dataclass(frozen=True)
class RowKernel:
    """A format's row kernel: `step` emits one block of a row (its record's `type_size` bytes, which is the
    stride) against x's `x_blocks` blocks of 32 for every token of a pass."""

    format: QuantFormat
    step: Step
    activation: str  # the int8 form of x it takes (matvec.ACTIVATIONS): "q8_0" blocks of 32, "q8_K" super-blocks

    @property
    def step_bytes(self) -> int:
        return self.format.type_size

    @property
    def x_blocks(self) -> int:
        return self.format.block_size // QK


ROW_KERNELS: KernelTable[RowKernel] = KernelTable("CPU row kernel")


def row_kernel(name: str, activation: str) -> Callable[[Step], Step]:
    """`@row_kernel("Q4_0", "q8_0")` above a step: format Q4_0's row kernel, taking x as q8_0."""

    def register(step: Step) -> Step:
        ROW_KERNELS.add(name, RowKernel(FORMATS_BY_NAME[name], step, activation))
        return step

    return register


@row_kernel("Q4_0", "q8_0")
def _q4_0(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | qs 16 bytes; value = d * (nibble - 8)
    b = blk.b
    d, q = blk.half_splat(0), b.sub(blk.nibbles16(2), _splat(I8, 32, 8))
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4s(b, q, toks.x(t, xb)), b.fmul(d, toks.splat("xd", t, xb)))


@row_kernel("Q4_1", "q8_0")
def _q4_1(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | m f16 | qs 16 bytes; value = d * nibble + m
    b = blk.b
    (d, m), q = blk.halves(0), blk.nibbles16(4)
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4u(b, q, toks.x(t, xb)), b.fmul(d, toks.scalar("xd", t, xb)))
        toks.add_offset(t, b.fmul(m, toks.scalar("xs", t, xb)))


def _fifth_bits(builder, word: ir.Value) -> ir.Value:
    """A 32-bit word -> <32 x i8> holding 16 where bit j is set, else 0."""
    bits = builder.zext(builder.bitcast(word, _vec(ir.IntType(1), 32)), _vec(I8, 32))
    return builder.shl(bits, _splat(I8, 32, 4))


def _q5(blk: Block, qh: int, qs: int) -> ir.Value:
    return blk.b.or_(blk.nibbles16(qs), _fifth_bits(blk.b, blk.at(qh, I32)))


@row_kernel("Q5_0", "q8_0")
def _q5_0(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | qh 4 bytes (fifth bits) | qs 16 bytes; value = d * (q5 - 16)
    b = blk.b
    d, q = blk.half_splat(0), b.sub(_q5(blk, 2, 6), _splat(I8, 32, 16))
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4s(b, q, toks.x(t, xb)), b.fmul(d, toks.splat("xd", t, xb)))


@row_kernel("Q5_1", "q8_0")
def _q5_1(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | m f16 | qh 4 bytes | qs 16 bytes; value = d * q5 + m
    b = blk.b
    (d, m), q = blk.halves(0), _q5(blk, 4, 8)
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4u(b, q, toks.x(t, xb)), b.fmul(d, toks.scalar("xd", t, xb)))
        toks.add_offset(t, b.fmul(m, toks.scalar("xs", t, xb)))


@row_kernel("Q8_0", "q8_0")
def _q8_0(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | qs 32 int8
    b = blk.b
    d, q = blk.half_splat(0), blk.at(2, V32I8)
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4s(b, q, toks.x(t, xb)), b.fmul(d, toks.splat("xd", t, xb)))


@row_kernel("IQ4_NL", "q8_0")
def _iq4_nl(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | qs 16 bytes; value = d * IQ4_NL_VALUES[nibble], low nibbles first
    b = blk.b
    d, q = blk.half_splat(0), levels(b, IQ4_NL_VALUES, blk.nibbles16(2))
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4s(b, q, toks.x(t, xb)), b.fmul(d, toks.splat("xd", t, xb)))


def e8m0_half(builder, e: ir.Value) -> ir.Value:
    """An E8M0 byte (i32) -> 2^(e - 128) as float: entry e of a 256-float table in the module, built from
    ggml_e8m0_to_fp32_half's bits (`gguf.quants.e8m0_half`); one load that the broadcast takes straight from
    memory, where computing the bits cost a fifth of MXFP4's decode time."""
    table = builder.module.globals.get("llamapyz.e8m0_half")
    if table is None:
        values = e8m0_half_values(np.arange(256, dtype=np.uint8)).view(np.int32)
        ty = ir.ArrayType(I32, 256)
        constant = ir.Constant(ty, [int(v) for v in values])
        table = cgutils.global_constant(builder.module, "llamapyz.e8m0_half", constant)
    bits = builder.load(builder.gep(table, [ir.Constant(I32, 0), e]))
    return builder.bitcast(bits, F32)


@row_kernel("MXFP4", "q8_0")
def _mxfp4(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # e (E8M0) | qs 16 bytes; value = 2^(e - 128) * MXFP4_VALUES[nibble] (FP4 doubled), low nibbles first
    b = blk.b
    d = _broadcast(b, e8m0_half(b, blk.byte(0)), V8F32)
    q = levels(b, MXFP4_VALUES, blk.nibbles16(1))
    for t in range(len(toks.rows)):
        toks.add_lanes(t, dot4s(b, q, toks.x(t, xb)), b.fmul(d, toks.splat("xd", t, xb)))


def _k4_scales(blk: Block, o: int) -> list[tuple[ir.Value, ir.Value]]:
    """The 8 (scale, min) pairs, 6 bits each, packed in the 12 bytes at o (ggml's get_scale_min_k4)."""
    b = blk.b
    s = [blk.byte(o + i) for i in range(12)]
    c = lambda v: ir.Constant(I32, v)  # noqa: E731
    pairs = []
    for j in range(8):
        if j < 4:
            pairs.append((b.and_(s[j], c(63)), b.and_(s[j + 4], c(63))))
        else:
            sc = b.or_(b.and_(s[j + 4], c(15)), b.shl(b.lshr(s[j - 4], c(6)), c(4)))
            mn = b.or_(b.lshr(s[j + 4], c(4)), b.shl(b.lshr(s[j], c(6)), c(4)))
            pairs.append((sc, mn))
    return pairs


def _k_quant(blk: Block, toks: Tokens, xb: ir.Value, values: list[ir.Value]) -> None:
    """Q4_K/Q5_K super-block: d | dmin | scales 12 at 4; `values` the 8 sub-blocks' 32 unsigned values.
    Integer sums sum_j sc_j * lanes_j and sum_j mn_j * xqs_j first, then d and dmin (as llama.cpp)."""
    b = blk.b
    d, dmin = blk.halves(0)
    scales = _k4_scales(blk, 4)
    for t in range(len(toks.rows)):
        lanes, mins = None, None
        for j, (sc, mn) in enumerate(scales):
            sub = b.add(xb, ir.Constant(xb.type, j))
            part = b.mul(dot4u(b, values[j], toks.x(t, sub)), _broadcast(b, sc))
            lanes = part if lanes is None else b.add(lanes, part)
            term = b.mul(mn, toks.scalar("xqs", t, sub))
            mins = term if mins is None else b.add(mins, term)
        xd = toks.scalar("xd", t, xb)
        toks.add_lanes(t, lanes, b.fmul(d, xd))
        toks.add_offset(t, b.fsub(ir.Constant(F32, 0.0), b.fmul(b.fmul(dmin, xd), b.sitofp(mins, F32))))


@row_kernel("Q4_K", "q8_K")
def _q4_k(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | dmin | scales 12 | qs 128; sub-block j: low (even j) / high (odd j) nibbles of qs[32*(j//2):][:32]
    _k_quant(blk, toks, xb, [blk.field(16 + 32 * (j // 2), 4 * (j & 1), 15) for j in range(8)])


@row_kernel("Q5_K", "q8_K")
def _q5_k(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | dmin | scales 12 | qh 32 | qs 128: Q4_K's nibbles at 48 plus 16 * bit j of qh[l]
    b = blk.b
    values = [b.or_(blk.field(48 + 32 * (j // 2), 4 * (j & 1), 15), b.shl(blk.field(16, j, 1), _splat(I8, 32, 4)))
              for j in range(8)]
    _k_quant(blk, toks, xb, values)


@row_kernel("Q6_K", "q8_K")
def _q6_k(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # ql 128 | qh 64 | scales 16 int8 | d f16; halves of 128, quarters k of 32: nibble of ql[64h+32(k&1)],
    # bits 2k..2k+1 of qh[128+32h], value q - 32; scales per 16 values, applied in integers
    b = blk.b
    d = blk.half_splat(208)
    subs = []
    for half in range(2):
        for k in range(4):
            low = blk.field(half * 64 + (k & 1) * 32, 4 * (k >> 1), 15)
            high = b.shl(blk.field(128 + half * 32, 2 * k, 3), _splat(I8, 32, 4))
            q = b.sub(b.or_(low, high), _splat(I8, 32, 32))
            first, second = (b.sext(blk.at(192 + half * 8 + 2 * k + i, I8), I32) for i in (0, 1))
            scale = b.insert_element(ir.Constant(V8I32, None), first, ir.Constant(I32, 0))
            scale = b.insert_element(scale, second, ir.Constant(I32, 4))
            subs.append((q, b.shuffle_vector(scale, scale, ir.Constant(V8I32, [0] * 4 + [4] * 4))))
    for t in range(len(toks.rows)):
        lanes = None
        for j, (q, scale) in enumerate(subs):
            part = b.mul(dot4s(b, q, toks.x(t, b.add(xb, ir.Constant(xb.type, j)))), scale)
            lanes = part if lanes is None else b.add(lanes, part)
        toks.add_lanes(t, lanes, b.fmul(d, toks.splat("xd", t, xb)))


def _sub_blocks(blk: Block, toks: Tokens, xb: ir.Value, d: ir.Value, values: list[ir.Value],
                scales: list[ir.Value] | None = None) -> None:
    """A super-block of 8 signed 32-value sub-blocks and one float scale d (8 lanes): each sub-block's lanes
    times its integer scale (<8 x i32>: one per sub-block, or per lane for scales per 16 values), summed in
    integers (as llama.cpp), then acc = fma(float(lanes), d * xd, acc)."""
    b = blk.b
    for t in range(len(toks.rows)):
        lanes = None
        for j, q in enumerate(values):
            part = dot4s(b, q, toks.x(t, b.add(xb, ir.Constant(xb.type, j))))
            part = part if scales is None else b.mul(part, scales[j])
            lanes = part if lanes is None else b.add(lanes, part)
        toks.add_lanes(t, lanes, b.fmul(d, toks.splat("xd", t, xb)))


@row_kernel("IQ4_XS", "q8_K")
def _iq4_xs(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d f16 | scales_h u16 | scales_l 4 | qs 128: sub-block j is IQ4_NL's 16 bytes at 8 + 16 j, its scale
    # (6 bits, minus 32) the low (even j) or high nibble of scales_l[j // 2] below bits 2j of scales_h
    b = blk.b
    high = b.zext(blk.at(2, I16), I32)
    values, scales = [], []
    for j in range(8):
        low = b.and_(b.lshr(blk.byte(4 + j // 2), _i32(4 * (j & 1))), _i32(15))
        scale = b.sub(b.or_(low, b.shl(b.and_(b.lshr(high, _i32(2 * j)), _i32(3)), _i32(4))), _i32(32))
        values.append(levels(b, IQ4_NL_VALUES, blk.nibbles16(8 + 16 * j)))
        scales.append(_broadcast(b, scale))
    _sub_blocks(blk, toks, xb, blk.half_splat(0), values, scales)


@row_kernel("TQ2_0", "q8_K")
def _tq2_0(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # qs 64 | d f16: sub-block j is bits 2(j%4)..+1 of qs[32*(j//4)][:32], minus 1 (Q2_K's order)
    one = _splat(I8, 32, 1)
    values = [blk.b.sub(blk.field(32 * (j // 4), 2 * (j % 4), 3), one) for j in range(8)]
    _sub_blocks(blk, toks, xb, blk.half_splat(64), values)


def _trits(b, packed: ir.Value, powers: list[int]) -> ir.Value:
    """<n x i8> bytes, <n x i8> powers of 3 -> the base-3 digits ((byte * power mod 256) * 3) >> 8, minus 1."""
    n = packed.type.count
    scaled = b.zext(b.mul(packed, ir.Constant(_vec(I8, n), powers)), _vec(I16, n))
    digits = b.trunc(b.lshr(b.mul(scaled, _splat(I16, n, 3)), _splat(I16, n, 8)), _vec(I8, n))
    return b.sub(digits, _splat(I8, n, 1))


@row_kernel("TQ1_0", "q8_K")
def _tq1_0(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # qs 48 | qh 4 | d f16: sub-blocks 0..4 are digit j of qs[0:32]; 5 and 6 digits 0, 1 and 2, 3 of
    # qs[32:48]; 7 digit 4 of qs[32:48], then digits 0..3 of qh's 4 bytes
    b = blk.b
    low, high = blk.at(0, V32I8), blk.at(32, _vec(I8, 16))
    qh = blk.at(48, _vec(I8, 4))
    pairs = b.shuffle_vector(high, high, ir.Constant(_vec(I32, 32), list(range(16)) * 2))
    tail = _concat(b, high, b.shuffle_vector(qh, qh, ir.Constant(_vec(I32, 16), list(range(4)) * 4)))
    values = [_trits(b, low, [TRIT_POWERS[j]] * 32) for j in range(5)]
    values += [_trits(b, pairs, [TRIT_POWERS[n]] * 16 + [TRIT_POWERS[n + 1]] * 16) for n in (0, 2)]
    values.append(_trits(b, tail, [TRIT_POWERS[4]] * 16 + [p for p in TRIT_POWERS[:4] for _ in range(4)]))
    _sub_blocks(blk, toks, xb, blk.half_splat(52), values)


# --- IQ grids: per 8 (or 4) values a grid entry (`gguf/iq_grids.py`), signs and integer scales apart --------

def _i32(value: int) -> ir.Constant:
    return ir.Constant(I32, value)


def _grid(b, name: str, grid: np.ndarray) -> ir.Value:
    """The grid as a constant array of its entries' little-endian words (i64: 8 values, i32: 4) in the
    module being built (one per module; internal linkage)."""
    table = b.module.globals.get(name)
    if table is None:
        width = grid.shape[1]
        words = np.ascontiguousarray(grid).view("<i8" if width == 8 else "<i4").reshape(-1)
        ty = ir.ArrayType(ir.IntType(8 * width), len(words))
        table = cgutils.global_constant(b.module, name, ir.Constant(ty, [int(w) for w in words]))
    return table


def _gather(b, table: ir.Value, indices: list[ir.Value]) -> ir.Value:
    """The grid entries at `indices` (i32 each; 4 of 8 values or 8 of 4) one after another, <32 x i8>."""
    word = table.type.pointee.element
    vec = ir.Constant(_vec(word, len(indices)), None)
    for k, index in enumerate(indices):
        vec = b.insert_element(vec, b.load(b.gep(table, [_i32(0), index])), _i32(k))
    return b.bitcast(vec, V32I8)


def _byte_mask(b, bits: ir.Value) -> ir.Value:
    """An i32 -> <32 x i8>: -1 where bit k is set, else 0."""
    return b.sext(b.bitcast(bits, _vec(ir.IntType(1), 32)), V32I8)


def _negate_where(b, values: ir.Value, bits: ir.Value) -> ir.Value:
    """<32 x i8> values with value k negated where bit k of the i32 `bits` is set: (v ^ m) - m."""
    m = _byte_mask(b, bits)
    return b.sub(b.xor(values, m), m)


# per 7-bit sign field, the 8 bytes of its mask (0xFF: negative), the eighth making the count even
PARITY_MASKS = np.unpackbits(np.array(PARITY_SIGNS, np.uint8)[:, None], axis=1, bitorder="little") * np.uint8(255)


def _parity_negate(b, values: ir.Value, fields: list[ir.Value]) -> ir.Value:
    """<32 x i8> values with 8-value group k negated by 7-bit sign field k (i32; ggml's ksigns_iq2xs): four
    8-byte masks gathered from a table, (v ^ m) - m."""
    m = _gather(b, _grid(b, "llamapyz.parity_masks", PARITY_MASKS), fields)
    return b.sub(b.xor(values, m), m)


def _sign_fields(b, word: ir.Value) -> list[ir.Value]:
    """The 4 7-bit sign fields at bits 0, 7, 14, 21 of an i32."""
    return [b.and_(b.lshr(word, _i32(7 * k)), _i32(127)) for k in range(4)]


def _per_16(b, first: ir.Value, second: ir.Value) -> ir.Value:
    """Two i32 scales -> <8 x i32>: the first in the lanes of a sub-block's first 16 values, the second after."""
    v = b.insert_element(ir.Constant(V8I32, None), first, _i32(0))
    v = b.insert_element(v, second, _i32(4))
    return b.shuffle_vector(v, v, ir.Constant(V8I32, [0] * 4 + [4] * 4))


def _odd(b, s: ir.Value) -> ir.Value:
    """2 s + 1: the IQ2/IQ3_XXS/IQ1 scales' integer part."""
    return b.add(b.shl(s, _i32(1)), _i32(1))


def _scaled_d(blk: Block, offset: int, factor: float) -> ir.Value:
    """The half at offset times an exact power of two, in 8 float lanes."""
    return blk.b.fmul(blk.half_splat(offset), ir.Constant(V8F32, [factor] * LANES))


@row_kernel("IQ2_XXS", "q8_K")
def _iq2_xxs(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | per 32 values: 4 index bytes (grid entries of 8), a word of 4 7-bit sign fields and s at bits 28..31;
    # value = d * (2 s + 1) / 8 * +-grid
    b = blk.b
    table = _grid(b, "llamapyz.iq2xxs_grid", IQ2XXS_GRID)
    values, scales = [], []
    for j in range(8):
        q = 2 + 8 * j
        word = blk.at(q + 4, I32)
        grid = _gather(b, table, [blk.byte(q + k) for k in range(4)])
        values.append(_parity_negate(b, grid, _sign_fields(b, word)))
        scales.append(_broadcast(b, _odd(b, b.lshr(word, _i32(28)))))
    _sub_blocks(blk, toks, xb, _scaled_d(blk, 0, 0.125), values, scales)


def _nibble(blk: Block, offset: int, upper: int) -> ir.Value:
    return blk.b.and_(blk.b.lshr(blk.byte(offset), _i32(4 * upper)), _i32(15))


@row_kernel("IQ2_XS", "q8_K")
def _iq2_xs(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | qs 32 words (9-bit index into 512 entries of 8, 7-bit sign field) | scales 8: a nibble s per 16
    # values; value = d * (2 s + 1) / 8 * +-grid
    b = blk.b
    table = _grid(b, "llamapyz.iq2xs_grid", IQ2XS_GRID)
    values, scales = [], []
    for j in range(8):
        words = [b.zext(blk.at(2 + 8 * j + 2 * k, I16), I32) for k in range(4)]
        grid = _gather(b, table, [b.and_(w, _i32(511)) for w in words])
        values.append(_parity_negate(b, grid, [b.lshr(w, _i32(9)) for w in words]))
        scales.append(_per_16(b, _odd(b, _nibble(blk, 66 + j, 0)), _odd(b, _nibble(blk, 66 + j, 1))))
    _sub_blocks(blk, toks, xb, _scaled_d(blk, 0, 0.125), values, scales)


@row_kernel("IQ2_S", "q8_K")
def _iq2_s(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | qs 32 | signs 32 | qh 8 | scales 8: per 8 values index qs[k] | bits 2(k%4).. of qh[k//4] << 8 into
    # 1024 entries, a sign byte; a nibble s per 16 values; value = d * (2 s + 1) / 8 * +-grid
    b = blk.b
    table = _grid(b, "llamapyz.iq2s_grid", IQ2S_GRID)
    values, scales = [], []
    for j in range(8):
        qh = blk.byte(66 + j)
        indices = [b.or_(blk.byte(2 + 4 * j + k), b.shl(b.and_(b.lshr(qh, _i32(2 * k)), _i32(3)), _i32(8)))
                   for k in range(4)]
        values.append(_negate_where(b, _gather(b, table, indices), blk.at(34 + 4 * j, I32)))
        scales.append(_per_16(b, _odd(b, _nibble(blk, 74 + j, 0)), _odd(b, _nibble(blk, 74 + j, 1))))
    _sub_blocks(blk, toks, xb, _scaled_d(blk, 0, 0.125), values, scales)


@row_kernel("IQ3_XXS", "q8_K")
def _iq3_xxs(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | qs 64 (an index per 4 values into 256 entries) | 8 words of 4 7-bit sign fields and s at bits 28..31;
    # value = d * (2 s + 1) / 4 * +-grid
    b = blk.b
    table = _grid(b, "llamapyz.iq3xxs_grid", IQ3XXS_GRID)
    values, scales = [], []
    for j in range(8):
        word = blk.at(66 + 4 * j, I32)
        grid = _gather(b, table, [blk.byte(2 + 8 * j + m) for m in range(8)])
        values.append(_parity_negate(b, grid, _sign_fields(b, word)))
        scales.append(_broadcast(b, _odd(b, b.lshr(word, _i32(28)))))
    _sub_blocks(blk, toks, xb, _scaled_d(blk, 0, 0.25), values, scales)


@row_kernel("IQ3_S", "q8_K")
def _iq3_s(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | qs 64 | qh 8 | signs 32 | scales 4: per 4 values index qs[m] | bit m%8 of qh[m//8] << 8 into 512
    # entries; sign bytes; a nibble s per 32 values; value = d * (2 s + 1) * +-grid
    b = blk.b
    table = _grid(b, "llamapyz.iq3s_grid", IQ3S_GRID)
    values, scales = [], []
    for j in range(8):
        qh = blk.byte(66 + j)
        indices = [b.or_(blk.byte(2 + 8 * j + m), b.shl(b.and_(b.lshr(qh, _i32(m)), _i32(1)), _i32(8)))
                   for m in range(8)]
        values.append(_negate_where(b, _gather(b, table, indices), blk.at(74 + 4 * j, I32)))
        scales.append(_broadcast(b, _odd(b, _nibble(blk, 106 + j // 2, j & 1))))
    _sub_blocks(blk, toks, xb, blk.half_splat(0), values, scales)


def _iq1_values(b, grid: ir.Value, negative: ir.Value) -> ir.Value:
    """8 * grid (-1/0/1) + delta, delta -1 where the byte mask of `negative` (i32 bits) is set, else +1: IQ1's
    values times 8, so that the delta of 1/8 is an integer."""
    m = _byte_mask(b, negative)
    return b.add(b.shl(grid, _splat(I8, 32, 3)), b.or_(m, _splat(I8, 32, 1)))


@row_kernel("IQ1_S", "q8_K")
def _iq1_s(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # d | qs 32 | qh 8 words: per 8 values index qs[k] | 3 bits of qh << 8 into 2048 entries of -1/0/1; per
    # 32 s at bits 12..14 and the delta's sign at 15; value = d * (2 s + 1) / 8 * (8 grid +- 1)
    b = blk.b
    table = _grid(b, "llamapyz.iq1s_grid", IQ1S_GRID)
    values, scales = [], []
    for j in range(8):
        qh = b.zext(blk.at(34 + 2 * j, I16), I32)
        indices = [b.or_(blk.byte(2 + 4 * j + k), b.shl(b.and_(b.lshr(qh, _i32(3 * k)), _i32(7)), _i32(8)))
                   for k in range(4)]
        negative = b.sub(_i32(0), b.lshr(qh, _i32(15)))  # all 32 bits, or none
        values.append(_iq1_values(b, _gather(b, table, indices), negative))
        scales.append(_broadcast(b, _odd(b, b.and_(b.lshr(qh, _i32(12)), _i32(7)))))
    _sub_blocks(blk, toks, xb, _scaled_d(blk, 0, 0.125), values, scales)


@row_kernel("IQ1_M", "q8_K")
def _iq1_m(blk: Block, toks: Tokens, xb: ir.Value) -> None:
    # qs 32 | qh 16 | scales 4 words: per 8 values index qs[k] | 3 bits of a qh nibble << 8 into IQ1_S's grid,
    # the nibble's top bit the delta's sign; per 16 values a 3-bit scale s (bits 0..11 of the words), the
    # words' top nibbles the f16 d; value = d * (2 s + 1) / 8 * (8 grid +- 1)
    b = blk.b
    table = _grid(b, "llamapyz.iq1s_grid", IQ1S_GRID)
    words = [b.zext(blk.at(48 + 2 * i, I16), I32) for i in range(4)]
    bits = None
    for i, w in enumerate(words):  # nibble i of d: bits 12..15 of word i
        part = b.shl(b.lshr(w, _i32(12)), _i32(4 * i))
        bits = part if bits is None else b.or_(bits, part)
    h = b.insert_element(ir.Constant(_vec(I16, LANES), None), b.trunc(bits, I16), _i32(0))
    d = b.fmul(_half_to_float(b, b.shuffle_vector(h, h, ir.Constant(_vec(I32, LANES), [0] * LANES))),
               ir.Constant(V8F32, [0.125] * LANES))
    values, scales = [], []
    for j in range(8):
        indices, negative = [], None
        for k in range(4):
            nibble = _nibble(blk, 32 + 2 * j + k // 2, k & 1)
            indices.append(b.or_(blk.byte(4 * j + k), b.shl(b.and_(nibble, _i32(7)), _i32(8))))
            flag = b.shl(b.mul(b.lshr(nibble, _i32(3)), _i32(0xFF)), _i32(8 * k))
            negative = flag if negative is None else b.or_(negative, flag)
        values.append(_iq1_values(b, _gather(b, table, indices), negative))
        word = words[j // 2]
        first, second = (b.and_(b.lshr(word, _i32(6 * (j & 1) + 3 * h)), _i32(7)) for h in (0, 1))
        scales.append(_per_16(b, _odd(b, first), _odd(b, second)))
    _sub_blocks(blk, toks, xb, d, values, scales)


def _pass(context, builder, sig, args, t0: ir.Value, count: int, kernel: RowKernel) -> None:
    """out[t0:t0+count, r] for one row: the loop over the row's blocks, then the stores."""
    row = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[1]])
    toks = Tokens(context, builder, sig, args, t0, count)
    n_steps = builder.udiv(toks.n_blocks, ir.Constant(toks.n_blocks.type, kernel.x_blocks))
    with cgutils.for_range(builder, n_steps) as loop:
        i = loop.index
        p = builder.gep(row, [builder.mul(i, ir.Constant(i.type, kernel.step_bytes))])
        if PREFETCH:  # llvm.prefetch(address, read, high locality, data cache): a hint, no effect on results
            _call(builder, "llvm.prefetch.p0", ir.VoidType(), builder.gep(p, [ir.Constant(I32, PREFETCH)]),
                  ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1))
        kernel.step(Block(builder, p), toks, builder.mul(i, ir.Constant(i.type, kernel.x_blocks)))
    out = context.make_array(sig.args[6])(context, builder, args[6])
    n_rows = cgutils.unpack_tuple(builder, out.shape)[1]
    for t in range(count):
        index = builder.add(builder.mul(toks.rows[t], n_rows), args[7])
        builder.store(toks.total(t), builder.gep(out.data, [index]))


def _row(context, builder, sig, args, kernel: RowKernel) -> None:
    """Every token's output for one row of `kernel`'s format: TILE tokens a pass, then one at a time."""
    n = cgutils.unpack_tuple(builder, context.make_array(sig.args[2])(context, builder, args[2]).shape)[0]
    tiles = builder.udiv(n, ir.Constant(n.type, TILE))
    with cgutils.for_range(builder, tiles) as loop:
        t0 = builder.mul(loop.index, ir.Constant(n.type, TILE))
        _pass(context, builder, sig, args, t0, TILE, kernel)
    with cgutils.for_range_slice(builder, builder.mul(tiles, ir.Constant(n.type, TILE)), n,
                                 ir.Constant(n.type, 1), inc=True) as (t, _):
        _pass(context, builder, sig, args, t, 1, kernel)


def _not_a_row_format(context, builder, sig, args) -> None:
    """out[:, col] = NaN: the table named a format without a row kernel (`QuantMatrix` never does)."""
    out = context.make_array(sig.args[6])(context, builder, args[6])
    n, n_rows = cgutils.unpack_tuple(builder, out.shape)
    with cgutils.for_range(builder, n) as loop:
        index = builder.add(builder.mul(loop.index, n_rows), args[7])
        builder.store(ir.Constant(F32, float("nan")), builder.gep(out.data, [index]))


@intrinsic
def row_dot(typingctx, fmt, w, wo, xq, xd, xs, xqs, out, col):
    """out[:, col] = x @ the row at byte wo of w, in the format whose ggml type id is fmt (see the module
    docstring): a switch over `ROW_KERNELS` with one case per format, made from the table."""
    sig = types.void(fmt, w, wo, xq, xd, xs, xqs, out, col)

    def codegen(context, builder, signature, args):
        row_sig, row_args = types.void(*signature.args[1:]), args[1:]
        unknown = builder.append_basic_block("row_dot.unknown")
        done = builder.append_basic_block("row_dot.done")
        switch = builder.switch(args[0], unknown)
        for record, kernel in ROW_KERNELS.items():
            case = builder.append_basic_block(f"row_dot.{record.name}")
            switch.add_case(ir.Constant(args[0].type, record.type_id), case)
            builder.position_at_end(case)
            _row(context, builder, row_sig, row_args, kernel)
            builder.branch(done)
        builder.position_at_end(unknown)
        _not_a_row_format(context, builder, row_sig, row_args)
        builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen
