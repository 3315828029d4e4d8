"""Deterministic numpy encoders for F16, Q8_0, Q5_0, Q4_K, Q6_K and MXFP4, in ggml's block layouts.

Plain round-to-nearest / min-max encoders (no llama.cpp-style search for the best scale): good enough to make
test models, and bit-for-bit the same on every CPU and numpy version, because every decision about a byte
rests on elementwise IEEE operations (division, multiplication, np.rint), max/min/abs/argmax and float
casts: no sums, means, dot products or BLAS, whose rounding depends on the order a library picks.

Each encoder takes float32 values of shape (..., n) with n a multiple of the block size and returns the raw
bytes, uint8 of shape (..., n // block_size * type_size); the field layout comes from `llamapyz.gguf.quants`'
format table, so the bytes decode with `llamapyz.gguf.quants.dequantize` and `gguf.quants.dequantize` alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llamapyz.gguf.quants import FORMATS_BY_NAME, MXFP4_VALUES, e8m0_half

F32, F16 = np.float32, np.float16


def _blocks(x: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values as (n_blocks, block_size) float32, an empty structured array of n_blocks blocks)."""
    fmt = FORMATS_BY_NAME[type_name]
    if x.shape[-1] % fmt.block_size:
        raise ValueError(f"{type_name}: row length {x.shape[-1]} is not a multiple of {fmt.block_size}")
    values = np.ascontiguousarray(x, dtype=F32).reshape(-1, fmt.block_size)
    return values, np.zeros(len(values), dtype=fmt.block_dtype)


def _as_bytes(blocks: np.ndarray, shape: tuple[int, ...], type_name: str) -> np.ndarray:
    fmt = FORMATS_BY_NAME[type_name]
    return blocks.view(np.uint8).reshape(*shape[:-1], shape[-1] // fmt.block_size * fmt.type_size)


def _safe(d: np.ndarray) -> np.ndarray:
    """Divisors with 0 replaced by 1 (a zero scale decodes every value to 0 or the offset anyway)."""
    return np.where(d == 0, F32(1), d)


def _f16_scale(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float32 scale rounded to f16: (the f16 field, its float32 value that the decoder will use)."""
    d16 = value.astype(F16)
    return d16, d16.astype(F32)


def _abs_argmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The value of largest magnitude along `axis`, with its sign (the first one on ties)."""
    idx = np.expand_dims(np.argmax(np.abs(x), axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)


# --- encoders ---------------------------------------------------------------------------------------------


def encode_f16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=F32).astype(F16).view(np.uint8)


def encode_q8_0(x: np.ndarray) -> np.ndarray:
    """32 values per block: d = max|x| / 127 (f16), q = round(x / d) in -127..127."""
    v, blocks = _blocks(x, "Q8_0")
    blocks["d"], d = _f16_scale(np.abs(v).max(axis=1) / F32(127))
    blocks["qs"] = np.clip(np.rint(v / _safe(d)[:, None]), -127, 127).astype(np.int8)
    return _as_bytes(blocks, x.shape, "Q8_0")


def encode_q5_0(x: np.ndarray) -> np.ndarray:
    """32 values per block: d = -x_max / 16 for the value of largest magnitude, q = round(x / d) + 16 in 0..31."""
    v, blocks = _blocks(x, "Q5_0")
    blocks["d"], d = _f16_scale(_abs_argmax(v, axis=1) / F32(-16))
    q = np.clip(np.rint(v / _safe(d)[:, None]) + F32(16), 0, 31).astype(np.uint8)
    blocks["qs"] = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)  # value j low nibble, j + 16 high nibble
    blocks["qh"] = np.packbits(q >> 4, axis=1, bitorder="little")  # bit j of the little-endian u32: value j
    return _as_bytes(blocks, x.shape, "Q5_0")


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    """256 values per super-block, 8 sub-blocks of 32 with y = d*sc * q - dmin*m, q in 0..15.

    Per sub-block min-max: scale = (max - min) / 15 and offset m = -min (min clamped to <= 0, as ggml stores
    a positive offset that is subtracted); the 8 scales and 8 offsets are quantized to 6 bits against the
    super-block's f16 d = max scale / 63 and dmin = max offset / 63; the values are then rounded against the
    decoded 6-bit scales and offsets.
    """
    v, blocks = _blocks(x, "Q4_K")
    sub = v.reshape(-1, 8, 32)
    low = np.minimum(sub.min(axis=2), F32(0))  # (n, 8)
    scale = (sub.max(axis=2) - low) / F32(15)
    offset = -low
    blocks["d"], d = _f16_scale(scale.max(axis=1) / F32(63))
    blocks["dmin"], dmin = _f16_scale(offset.max(axis=1) / F32(63))
    sc = np.clip(np.rint(scale / _safe(d)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(offset / _safe(dmin)[:, None]), 0, 63).astype(np.uint8)
    sub_d = (d[:, None] * sc.astype(F32))[:, :, None]  # the decoder's float32 products
    sub_m = (dmin[:, None] * m.astype(F32))[:, :, None]
    q = np.clip(np.rint((sub + sub_m) / _safe(sub_d)), 0, 15).astype(np.uint8)  # (n, 8, 32)
    # 12 scale bytes (ggml's get_scale_min_k4 inverted): sub-blocks 0..3 in the low 6 bits of bytes 0..7,
    # sub-blocks 4..7 as nibbles in bytes 8..11 plus their top two bits in the top bits of bytes 0..7
    blocks["scales"][:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    blocks["scales"][:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    blocks["scales"][:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    # 128 bytes: four 32-byte chunks, chunk j holding sub-block 2j in its low and 2j + 1 in its high nibbles
    blocks["qs"] = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    return _as_bytes(blocks, x.shape, "Q4_K")


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """256 values per super-block, 16 sub-blocks of 16 with y = d*sc * (q - 32), q in 0..63, sc int8.

    Per sub-block symmetric: s = -x_max / 32 for its value of largest magnitude; the 16 scales quantized to
    int8 against the f16 d = -s_max / 128; the values rounded against the decoded scales.
    """
    v, blocks = _blocks(x, "Q6_K")
    sub = v.reshape(-1, 16, 16)
    scale = _abs_argmax(sub, axis=2) / F32(-32)  # (n, 16)
    blocks["d"], d = _f16_scale(_abs_argmax(scale, axis=1) / F32(-128))
    sc = np.clip(np.rint(scale / _safe(d)[:, None]), -128, 127).astype(np.int8)
    sub_d = (d[:, None] * sc.astype(F32))[:, :, None]
    q = (np.clip(np.rint(sub / _safe(sub_d)), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # per 128-value half: ql byte l holds values l (low) and l + 64 (high nibble), byte l + 32 values l + 32
    # and l + 96; qh byte l holds the top two bits of values l, l + 32, l + 64, l + 96 at shifts 0, 2, 4, 6
    low = q & 0x0F
    blocks["ql"] = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(-1, 128)
    high = q >> 4
    blocks["qh"] = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
                    ).reshape(-1, 64)
    blocks["scales"] = sc
    return _as_bytes(blocks, x.shape, "Q6_K")


def encode_mxfp4(x: np.ndarray) -> np.ndarray:
    """ggml's MXFP4 reference encoder: the block's exponent floor(log2(amax)) - 2 (from frexp, exact, where a
    library's log2 could round near a power of two), each value the nearest of the 16 E2M1 levels times
    2^(e - 128) (the first on a tie, as argmin picks)."""
    values, blocks = _blocks(x, "MXFP4")
    amax = np.abs(values).max(axis=1)
    e = np.where(amax > 0, np.frexp(amax)[1] - 1 - 2 + 127, 0).astype(np.uint8)
    levels = np.array(MXFP4_VALUES, dtype=F32)
    errors = np.abs(e8m0_half(e)[:, None, None] * levels[None, None, :] - values[:, :, None])
    nibbles = np.argmin(errors, axis=2).astype(np.uint8)  # (blocks, 32)
    blocks["e"] = e
    blocks["qs"] = nibbles[:, :16] | (nibbles[:, 16:] << np.uint8(4))
    return _as_bytes(blocks, x.shape, "MXFP4")


ENCODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F16": encode_f16, "Q8_0": encode_q8_0, "Q5_0": encode_q5_0, "Q4_K": encode_q4_k, "Q6_K": encode_q6_k,
    "MXFP4": encode_mxfp4,
}


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """`x` (..., n) float32 encoded as `type_name`: uint8 raw bytes (..., bytes per row)."""
    return ENCODERS[type_name](x)
