"""ggml tensor formats as data, and their numpy reference dequantizers: one record per format.

One table, `FORMATS`, describes every ggml type: its ggml type id, elements per block and the block's field
layout as a numpy structured dtype, so the bytes per block are the sum of the fields. The GGUF reader derives
tensor byte sizes from it, kernels derive their strides from it, tests iterate over it.

The dequantizers here are the plain, readable references (bit-exact with ggml's `dequantize_row_*`): each
takes the blocks of a tensor as a structured array (a zero-copy view of the file) and returns float32
values of shape (n_blocks, block_size). Arithmetic follows ggml's order of float32 operations exactly. The
tables some formats' values come from are data beside them: IQ4_NL's and MXFP4's 16 levels here, the IQ
grids in `iq_grids.py`; the kernels compile them in.

A format's kernels live in the module of their kind, in higher layers; each attaches itself to its record
by name through a `KernelTable` of its kind, which refuses a name this table does not know and a second
kernel for one format. Every dispatch over formats, on the CPU and the GPU, is generated from those tables
and keyed by the record's ggml type id: there is one id space. Adding a format is its record, then each of
its kernels written once, beside the others of its kind; no table or dispatch is edited:
1. here: its `QuantFormat` in `_TABLE` and its numpy reference (`dequant_<fmt>`, bit-exact with gguf-py's);
2. `kernels/dequant.py`: `@DEQUANT.of(name)` on its numba dequantizer (bit-exact with 1);
3. `kernels/blockdot.py` (optional): `@row_kernel(name, activation)` on its integer row kernel, and its numpy
   twin `@twin(name)` in tests/test_blockdot.py; without one, its products decode rows (`steps.dot_rows`);
4. `gpu/formats.py` (optional): `@DEVICE_DOTS.of(name)` on its GPU block dot; without one, the layers that
   hold it stay on the CPU (`gpu/offload.py` says so).
The tests of each kind run over its table, so they take the new kernel up by themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from ..errors import GGUFError, UnsupportedQuantError
from .iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID

QK_K = 256  # elements per super-block of the k-quants

Dequantizer = Callable[[np.ndarray], np.ndarray]
K = TypeVar("K")


def _f32(a: np.ndarray) -> np.ndarray:
    """Field of shape (n_blocks,) as a float32 column (n_blocks, 1)."""
    return a.astype(np.float32).reshape(-1, 1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k): all low nibbles, then all high nibbles (the order of the 32-blocks)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh: np.ndarray, n_bits: int) -> np.ndarray:
    """(n, k) bytes -> (n, n_bits, k): bit b of byte l at [:, b, l]."""
    shifts = np.arange(n_bits, dtype=np.uint8).reshape(1, n_bits, 1)
    return (qh[:, None, :] >> shifts) & 1


# --- plain float and integer types -------------------------------------------------------------------


def dequant_float(blocks: np.ndarray) -> np.ndarray:
    """F32, F16, F64 and the integer types: a plain cast."""
    return blocks["v"].astype(np.float32).reshape(-1, 1)


def dequant_bf16(blocks: np.ndarray) -> np.ndarray:
    """BF16 is the top half of a float32."""
    return (blocks["v"].astype(np.uint32) << 16).view(np.float32).reshape(-1, 1)


# --- 32-element blocks -----------------------------------------------------------------------------


def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks["qs"]).astype(np.int8) - np.int8(8)
    return _f32(blocks["d"]) * q.astype(np.float32)


def dequant_q4_1(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks["qs"]).astype(np.float32)
    return _f32(blocks["d"]) * q + _f32(blocks["m"])


def _q5_values(blocks: np.ndarray) -> np.ndarray:
    """The 5-bit values of a Q5_0/Q5_1 block: low nibbles from qs, the fifth bit from the 32 bits of qh."""
    high = np.unpackbits(blocks["qh"], axis=-1, bitorder="little")
    return _nibbles(blocks["qs"]) | (high << 4)


def dequant_q5_0(blocks: np.ndarray) -> np.ndarray:
    q = _q5_values(blocks).astype(np.int8) - np.int8(16)
    return _f32(blocks["d"]) * q.astype(np.float32)


def dequant_q5_1(blocks: np.ndarray) -> np.ndarray:
    q = _q5_values(blocks).astype(np.float32)
    return _f32(blocks["d"]) * q + _f32(blocks["m"])


def dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f32(blocks["d"]) * blocks["qs"].astype(np.float32)


# --- k-quants: 256-element super-blocks of 16 or 8 sub-blocks ------------------------------------------


def dequant_q2_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    scales = blocks["scales"]  # (n, 16): low nibble scale, high nibble min, one per 16 values
    dl = (_f32(blocks["d"]) * (scales & 0x0F).astype(np.float32)).reshape(n, 16, 1)
    ml = (_f32(blocks["dmin"]) * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    # qs (n, 64): two halves of 32 bytes; each byte holds 4 values at shifts 0, 2, 4, 6
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((blocks["qs"].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(scales: np.ndarray) -> np.ndarray:
    """12 bytes -> 16 signed 6-bit scales: low nibbles from bytes 0..7, two high bits from bytes 8..11."""
    low = _nibbles(scales[:, :8])  # (n, 16)
    k = np.arange(16)
    high = (scales[:, 8 + k % 4] >> (2 * (k // 4)).astype(np.uint8)) & 3
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def dequant_q3_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    dl = (_f32(blocks["d"]) * _q3_k_scales(blocks["scales"]).astype(np.float32)).reshape(n, 16, 1)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    low = ((blocks["qs"].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    high_unset = _bits(blocks["hmask"], 8) ^ 1  # a cleared mask bit means "subtract 4"
    q = (low.astype(np.int8) - (high_unset << 2).astype(np.int8)).reshape(n, 16, 16).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


def _k4_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
    mn = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc, mn


def _k4_affine(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """y = d*scale * q - dmin*min over 8 sub-blocks of 32 values (Q4_K, Q5_K)."""
    n = len(blocks)
    sc, mn = _k4_scales_mins(blocks["scales"])
    d = (_f32(blocks["d"]) * sc.astype(np.float32)).reshape(n, 8, 1)
    dm = (_f32(blocks["dmin"]) * mn.astype(np.float32)).reshape(n, 8, 1)
    return (d * q.astype(np.float32) - dm).reshape(n, QK_K)


def _k4_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) -> (n, 8, 32): four 32-byte chunks, each giving its low then its high nibbles."""
    n = len(qs)
    shifts = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    return ((qs.reshape(n, 4, 1, 32) >> shifts) & 0x0F).reshape(n, 8, 32)


def dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    return _k4_affine(blocks, _k4_nibbles(blocks["qs"]))


def dequant_q5_k(blocks: np.ndarray) -> np.ndarray:
    q = _k4_nibbles(blocks["qs"]) | (_bits(blocks["qh"], 8) << 4)
    return _k4_affine(blocks, q)


def dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = len(blocks)
    d = (_f32(blocks["d"]) * blocks["scales"].astype(np.float32)).reshape(n, 16, 1)
    # ql (n, 128): two halves of 64 bytes; low nibbles give values 0..63 of a half, high nibbles 64..127
    low = ((blocks["ql"].reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F)
    # qh (n, 64): two halves of 32 bytes; shifts 0, 2, 4, 6 give the two high bits of the 4 quarter-halves
    high = (blocks["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low.reshape(n, 2, 4, 32) | (high << 4)).astype(np.int8) - np.int8(32)
    return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


# --- non-linear 4-bit values: a table of 16 int8 levels per nibble ---------------------------------------

# ggml's kvalues_iq4nl: IQ4_NL's and IQ4_XS's 16 levels, denser near 0
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
# ggml's kvalues_mxfp4: the FP4 (e2m1) values doubled, so that they are integers: 0, 0.5, 1, 1.5, 2, 3, 4, 6
# and their negatives; the block's E8M0 scale is halved to match (`e8m0_half`)
MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)


def _levels(values: tuple[int, ...], nibbles: np.ndarray) -> np.ndarray:
    """Nibbles (any shape) -> their levels in `values`, as float32."""
    return np.array(values, dtype=np.int8)[nibbles].astype(np.float32)


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """E8M0 exponents (uint8) -> 2^(e - 128) as float32: the scale 2^(e - 127) halved, as ggml's
    ggml_e8m0_to_fp32_half builds its bits (e < 2: a subnormal; no NaN for e = 255)."""
    e = e.astype(np.uint32)
    return np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23)).astype(np.uint32).view(np.float32)


def dequant_iq4_nl(blocks: np.ndarray) -> np.ndarray:
    return _f32(blocks["d"]) * _levels(IQ4_NL_VALUES, _nibbles(blocks["qs"]))


def dequant_iq4_xs(blocks: np.ndarray) -> np.ndarray:
    """8 sub-blocks of 32, each IQ4_NL's nibble order, with a signed 6-bit scale: its low nibble in
    scales_l[j // 2] (low then high nibble), its two high bits at bits 2j of scales_h."""
    n = len(blocks)
    j = np.arange(8)
    low = (blocks["scales_l"][:, j // 2] >> (4 * (j % 2)).astype(np.uint8)) & 0x0F
    high = (blocks["scales_h"].reshape(n, 1) >> (2 * j).astype(np.uint16)) & 3
    scale = (low | (high << 4)).astype(np.int8) - np.int8(32)  # (n, 8)
    dl = (_f32(blocks["d"]) * scale.astype(np.float32)).reshape(n, 8, 1)
    q = _levels(IQ4_NL_VALUES, _nibbles(blocks["qs"].reshape(n, 8, 16)))  # (n, 8, 32)
    return (dl * q).reshape(n, QK_K)


def dequant_mxfp4(blocks: np.ndarray) -> np.ndarray:
    return e8m0_half(blocks["e"]).reshape(-1, 1) * _levels(MXFP4_VALUES, _nibbles(blocks["qs"]))


# --- ternary: values -1, 0, 1 (TQ2_0: 2 bits each; TQ1_0: 5 or 4 base-3 digits per byte) -------------------

TRIT_POWERS = (1, 3, 9, 27, 81)  # TQ1_0: digit n of a byte is read as ((byte * 3^n mod 256) * 3) >> 8


def _trits(packed: np.ndarray, n: int) -> np.ndarray:
    """(blocks, k) bytes -> (blocks, n * k) base-3 digits 0..2: digit 0 of every byte, then digit 1, ..."""
    scaled = packed[:, None, :] * np.array(TRIT_POWERS[:n], dtype=np.uint8).reshape(1, n, 1)  # mod 256
    return ((scaled.astype(np.uint16) * 3) >> 8).reshape(len(packed), -1)


def dequant_tq1_0(blocks: np.ndarray) -> np.ndarray:
    """qs: 32 bytes of 5 digits (values 0..159), 16 bytes of 5 (160..239); qh: 4 bytes of 4 (240..255)."""
    qs = blocks["qs"]
    digits = np.concatenate([_trits(qs[:, :32], 5), _trits(qs[:, 32:], 5), _trits(blocks["qh"], 4)], axis=-1)
    return _f32(blocks["d"]) * (digits.astype(np.int8) - np.int8(1)).astype(np.float32)


def dequant_tq2_0(blocks: np.ndarray) -> np.ndarray:
    """qs (64): two halves of 32 bytes; each byte holds 4 values at shifts 0, 2, 4, 6, as Q2_K's."""
    n = len(blocks)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((blocks["qs"].reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, QK_K)
    return _f32(blocks["d"]) * (q.astype(np.int8) - np.int8(1)).astype(np.float32)


# --- IQ grids: each 8 (or 4) values one entry of a fixed grid (`iq_grids.py`), signs and scales apart -----

# ggml's ksigns_iq2xs: 7 stored sign bits and an eighth that makes the count of negatives even
PARITY_SIGNS = tuple(k | (bin(k).count("1") & 1) << 7 for k in range(128))
IQ1_DELTA = 0.125  # ggml's IQ1S_DELTA (IQ1_M's too): every IQ1 value is grid +- 1/8


def _bytes_of(words: np.ndarray, n: int) -> np.ndarray:
    """Unsigned words (...) -> their n little-endian bytes (..., n), as int64."""
    return (words.astype(np.int64)[..., None] >> (8 * np.arange(n))) & 0xFF


def _signs(signs: np.ndarray) -> np.ndarray:
    """Sign bytes (..., k) -> (..., 8k) float32 +-1: bit j of byte i (set: negative) is value 8i + j's."""
    bits = (signs.astype(np.int64)[..., None] >> np.arange(8)) & 1
    return np.where(bits == 1, np.float32(-1), np.float32(1)).reshape(*signs.shape[:-1], -1)


def _parity_signs(words: np.ndarray, n: int) -> np.ndarray:
    """Words (...) holding n 7-bit sign fields (at bits 0, 7, 14, 21) -> (..., 8n) float32 +-1."""
    fields = (words.astype(np.int64)[..., None] >> (7 * np.arange(n))) & 127
    return _signs(np.array(PARITY_SIGNS, dtype=np.uint8)[fields])


def _nibble_scales(scales: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) 4-bit scales, low nibble first, as float32."""
    return np.stack([scales & 0x0F, scales >> 4], axis=-1).reshape(len(scales), -1).astype(np.float32)


def dequant_iq2_xxs(blocks: np.ndarray) -> np.ndarray:
    """Per 32 values two words: 4 bytes of grid indices (8 values each), then 4 7-bit sign fields and a
    4-bit scale s at bits 28..31: d * (0.5 + s) * 0.25."""
    n = len(blocks)
    qs = blocks["qs"].reshape(n, 8, 2)
    db = _f32(blocks["d"]) * (np.float32(0.5) + (qs[..., 1] >> 28).astype(np.float32)) * np.float32(0.25)
    grid = IQ2XXS_GRID[_bytes_of(qs[..., 0], 4)].astype(np.float32).reshape(n, 8, 32)
    return (db[..., None] * grid * _parity_signs(qs[..., 1], 4)).reshape(n, QK_K)


def _scales_16(blocks: np.ndarray) -> np.ndarray:
    """IQ2_XS's and IQ2_S's scale per 16 values, d * (0.5 + nibble) * 0.25: (n, 16, 1)."""
    return (_f32(blocks["d"]) * (np.float32(0.5) + _nibble_scales(blocks["scales"])) * np.float32(0.25))[..., None]


def dequant_iq2_xs(blocks: np.ndarray) -> np.ndarray:
    """Per 8 values a 16-bit word: a 9-bit index into the 512-entry grid, a 7-bit sign field above it."""
    n = len(blocks)
    qs = blocks["qs"].astype(np.int64)
    grid = IQ2XS_GRID[qs & 511].astype(np.float32).reshape(n, 16, 16)
    signs = _signs(np.array(PARITY_SIGNS, dtype=np.uint8)[qs >> 9]).reshape(n, 16, 16)
    return (_scales_16(blocks) * grid * signs).reshape(n, QK_K)


def dequant_iq2_s(blocks: np.ndarray) -> np.ndarray:
    """Per 8 values a 10-bit index into the 1024-entry grid (a byte of qs, two bits of qh[j // 4]) and a
    byte of explicit signs."""
    n = len(blocks)
    high = (blocks["qh"].astype(np.int64)[..., None] >> (2 * np.arange(4))) & 3  # (n, 8, 4)
    index = blocks["qs"].astype(np.int64) | (high.reshape(n, 32) << 8)
    grid = IQ2S_GRID[index].astype(np.float32).reshape(n, 16, 16)
    return (_scales_16(blocks) * grid * _signs(blocks["signs"]).reshape(n, 16, 16)).reshape(n, QK_K)


def dequant_iq3_xxs(blocks: np.ndarray) -> np.ndarray:
    """Per 4 values a byte index into the 256-entry grid; per 32 a word of 4 7-bit sign fields and a 4-bit
    scale s at bits 28..31: d * (0.5 + s) * 0.5."""
    n = len(blocks)
    words = blocks["scales_signs"]
    db = _f32(blocks["d"]) * (np.float32(0.5) + (words >> 28).astype(np.float32)) * np.float32(0.5)
    grid = IQ3XXS_GRID[blocks["qs"]].astype(np.float32).reshape(n, 8, 32)
    return (db[..., None] * grid * _parity_signs(words, 4)).reshape(n, QK_K)


def dequant_iq3_s(blocks: np.ndarray) -> np.ndarray:
    """Per 4 values a 9-bit index into the 512-entry grid (a byte of qs, bit k of qh[j // 8]); explicit sign
    bytes; per 32 a 4-bit scale s (low nibble first): d * (1 + 2 s)."""
    n = len(blocks)
    high = (blocks["qh"].astype(np.int64)[..., None] >> np.arange(8)) & 1  # (n, 8, 8)
    index = blocks["qs"].astype(np.int64) | (high.reshape(n, 64) << 8)
    grid = IQ3S_GRID[index].astype(np.float32).reshape(n, 8, 32)
    db = _f32(blocks["d"]) * (1 + 2 * _nibble_scales(blocks["scales"]))
    return (db[..., None] * grid * _signs(blocks["signs"]).reshape(n, 8, 32)).reshape(n, QK_K)


def dequant_iq1_s(blocks: np.ndarray) -> np.ndarray:
    """Per 32 values a 16-bit qh: 4 times the 3 high bits of an 11-bit index into the 2048-entry grid of
    -1/0/1 (the low 8 in qs), a 3-bit scale s at bits 12..14 (d * (2 s + 1)), the delta's sign at bit 15."""
    n = len(blocks)
    qh = blocks["qh"].astype(np.int64)  # (n, 8)
    index = blocks["qs"].astype(np.int64).reshape(n, 8, 4) | (((qh[..., None] >> (3 * np.arange(4))) & 7) << 8)
    dl = _f32(blocks["d"]) * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    delta = np.where(qh & 0x8000, np.float32(-IQ1_DELTA), np.float32(IQ1_DELTA))
    grid = IQ1S_GRID[index].astype(np.float32).reshape(n, 8, 32)
    return (dl[..., None] * (grid + delta[..., None])).reshape(n, QK_K)


def iq1_m_scale(scales: np.ndarray) -> np.ndarray:
    """IQ1_M's float16 super-block scale, whose 4 nibbles are the top nibbles of its 4 16-bit scale words."""
    s = scales.astype(np.uint16)
    bits = (s[:, 0] >> 12) | ((s[:, 1] >> 8) & 0x00F0) | ((s[:, 2] >> 4) & 0x0F00) | (s[:, 3] & 0xF000)
    return bits.astype(np.uint16).view(np.float16)


def dequant_iq1_m(blocks: np.ndarray) -> np.ndarray:
    """Per 8 values an 11-bit grid index (a byte of qs, a nibble of qh: 3 high bits, then the delta's sign);
    per 16 a 3-bit scale s (4 per 16-bit word, bits 0..11): d * (2 s + 1)."""
    n = len(blocks)
    nibbles = (blocks["qh"].astype(np.int64)[..., None] >> np.array([0, 4])).reshape(n, 32)
    index = blocks["qs"].astype(np.int64) | ((nibbles & 7) << 8)
    delta = np.where(nibbles & 8, np.float32(-IQ1_DELTA), np.float32(IQ1_DELTA)).reshape(n, 16, 2, 1)
    s = (blocks["scales"].astype(np.int64)[..., None] >> (3 * np.arange(4))) & 7  # (n, 4, 4): per 16 values
    dl = (_f32(iq1_m_scale(blocks["scales"])) * (2 * s.reshape(n, 16) + 1).astype(np.float32)).reshape(n, 16, 1, 1)
    grid = IQ1S_GRID[index].astype(np.float32).reshape(n, 16, 2, 8)
    return (dl * (grid + delta)).reshape(n, QK_K)


# --- the table ---------------------------------------------------------------------------------------

Field = tuple[str, str, int]  # (name, numpy dtype, count)


@dataclass(frozen=True)
class QuantFormat:
    """One ggml type: `block_size` elements are stored in one block of `fields`."""

    name: str
    type_id: int
    block_size: int
    fields: tuple[Field, ...]
    dequantize_blocks: Dequantizer | None = None  # None: llamapyz reads the layout but cannot decode it
    block_dtype: np.dtype = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = [(name, dt) if count == 1 else (name, dt, (count,)) for name, dt, count in self.fields]
        object.__setattr__(self, "block_dtype", np.dtype(spec))

    @property
    def type_size(self) -> int:
        """Bytes per block: the sum of the field sizes."""
        return self.block_dtype.itemsize

    @property
    def supported(self) -> bool:
        return self.dequantize_blocks is not None

    def n_bytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.type_size


def _opaque(n_bytes: int) -> tuple[Field, ...]:
    """Layout of a type llamapyz does not decode: its block size is all the reader needs."""
    return (("raw", "u1", n_bytes),)


_F16 = ("d", "<f2", 1)
_E8M0 = ("e", "u1", 1)  # a power-of-two scale, 2^(e - 127) (tests/synth.py draws such fields apart)
_TABLE: tuple[QuantFormat, ...] = (
    QuantFormat("F32", 0, 1, (("v", "<f4", 1),), dequant_float),
    QuantFormat("F16", 1, 1, (("v", "<f2", 1),), dequant_float),
    QuantFormat("Q4_0", 2, 32, (_F16, ("qs", "u1", 16)), dequant_q4_0),
    QuantFormat("Q4_1", 3, 32, (_F16, ("m", "<f2", 1), ("qs", "u1", 16)), dequant_q4_1),
    QuantFormat("Q5_0", 6, 32, (_F16, ("qh", "u1", 4), ("qs", "u1", 16)), dequant_q5_0),
    QuantFormat("Q5_1", 7, 32, (_F16, ("m", "<f2", 1), ("qh", "u1", 4), ("qs", "u1", 16)), dequant_q5_1),
    QuantFormat("Q8_0", 8, 32, (_F16, ("qs", "i1", 32)), dequant_q8_0),
    QuantFormat("Q8_1", 9, 32, (_F16, ("s", "<f2", 1), ("qs", "i1", 32))),
    QuantFormat("Q2_K", 10, QK_K, (("scales", "u1", 16), ("qs", "u1", 64), _F16, ("dmin", "<f2", 1)),
                dequant_q2_k),
    QuantFormat("Q3_K", 11, QK_K, (("hmask", "u1", 32), ("qs", "u1", 64), ("scales", "u1", 12), _F16),
                dequant_q3_k),
    QuantFormat("Q4_K", 12, QK_K, (_F16, ("dmin", "<f2", 1), ("scales", "u1", 12), ("qs", "u1", 128)),
                dequant_q4_k),
    QuantFormat("Q5_K", 13, QK_K,
                (_F16, ("dmin", "<f2", 1), ("scales", "u1", 12), ("qh", "u1", 32), ("qs", "u1", 128)),
                dequant_q5_k),
    QuantFormat("Q6_K", 14, QK_K, (("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), _F16),
                dequant_q6_k),
    QuantFormat("Q8_K", 15, QK_K, (("d", "<f4", 1), ("qs", "i1", 256), ("bsums", "<i2", 16))),
    QuantFormat("IQ2_XXS", 16, QK_K, (_F16, ("qs", "<u4", 16)), dequant_iq2_xxs),
    QuantFormat("IQ2_XS", 17, QK_K, (_F16, ("qs", "<u2", 32), ("scales", "u1", 8)), dequant_iq2_xs),
    QuantFormat("IQ3_XXS", 18, QK_K, (_F16, ("qs", "u1", 64), ("scales_signs", "<u4", 8)), dequant_iq3_xxs),
    QuantFormat("IQ1_S", 19, QK_K, (_F16, ("qs", "u1", 32), ("qh", "<u2", 8)), dequant_iq1_s),
    QuantFormat("IQ4_NL", 20, 32, (_F16, ("qs", "u1", 16)), dequant_iq4_nl),
    QuantFormat("IQ3_S", 21, QK_K,
                (_F16, ("qs", "u1", 64), ("qh", "u1", 8), ("signs", "u1", 32), ("scales", "u1", 4)), dequant_iq3_s),
    QuantFormat("IQ2_S", 22, QK_K,
                (_F16, ("qs", "u1", 32), ("signs", "u1", 32), ("qh", "u1", 8), ("scales", "u1", 8)), dequant_iq2_s),
    QuantFormat("IQ4_XS", 23, QK_K, (_F16, ("scales_h", "<u2", 1), ("scales_l", "u1", 4), ("qs", "u1", 128)),
                dequant_iq4_xs),
    QuantFormat("I8", 24, 1, (("v", "i1", 1),), dequant_float),
    QuantFormat("I16", 25, 1, (("v", "<i2", 1),), dequant_float),
    QuantFormat("I32", 26, 1, (("v", "<i4", 1),), dequant_float),
    QuantFormat("I64", 27, 1, (("v", "<i8", 1),), dequant_float),
    QuantFormat("F64", 28, 1, (("v", "<f8", 1),), dequant_float),
    QuantFormat("IQ1_M", 29, QK_K, (("qs", "u1", 32), ("qh", "u1", 16), ("scales", "<u2", 4)), dequant_iq1_m),
    QuantFormat("BF16", 30, 1, (("v", "<u2", 1),), dequant_bf16),
    QuantFormat("TQ1_0", 34, QK_K, (("qs", "u1", 48), ("qh", "u1", 4), _F16), dequant_tq1_0),
    QuantFormat("TQ2_0", 35, QK_K, (("qs", "u1", 64), _F16), dequant_tq2_0),
    QuantFormat("MXFP4", 39, 32, (_E8M0, ("qs", "u1", 16)), dequant_mxfp4),
)

FORMATS: dict[int, QuantFormat] = {f.type_id: f for f in _TABLE}
FORMATS_BY_NAME: dict[str, QuantFormat] = {f.name: f for f in _TABLE}


def format_of(type_id: int, *, tensor: str = "?") -> QuantFormat:
    """The format of ggml type `type_id`; a GGUFError naming the tensor when the id is unknown."""
    try:
        return FORMATS[type_id]
    except KeyError:
        raise GGUFError(f"tensor {tensor!r}: unknown ggml type id {type_id}") from None


def dequantize(raw: np.ndarray, fmt: QuantFormat, shape: tuple[int, ...], *, tensor: str = "?") -> np.ndarray:
    """Decode the raw bytes of a tensor (uint8, any shape) to float32 of numpy `shape` (rows last-major)."""
    if fmt.dequantize_blocks is None:
        supported = ", ".join(f.name for f in _TABLE if f.supported)
        raise UnsupportedQuantError(
            f"tensor {tensor!r} has ggml type {fmt.name}, which llamapyz cannot decode (supported: {supported})"
        )
    blocks = np.ascontiguousarray(raw).reshape(-1).view(fmt.block_dtype)
    return fmt.dequantize_blocks(blocks).reshape(shape)


class KernelTable(Generic[K]):
    """The kernels of one kind (a CPU dequantizer, a CPU row product, a GPU block dot), at most one per format,
    in the order they were added. `add(name, kernel)`, or `@table.of(name)` above a kernel, attaches a kernel
    to the record `FORMATS_BY_NAME[name]`: a name the table does not know, or a second kernel for one format,
    fails at import, so every kernel belongs to exactly one record and is reached through its ggml type id."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._kernels: dict[str, K] = {}

    def add(self, name: str, kernel: K) -> K:
        if name not in FORMATS_BY_NAME:
            raise KeyError(f"{self.kind} for {name!r}: no such format in llamapyz.gguf.quants")
        if name in self._kernels:
            raise KeyError(f"a second {self.kind} for {name}")
        self._kernels[name] = kernel
        return kernel

    def of(self, name: str) -> Callable[[K], K]:
        """Decorator: `@table.of("Q4_0")` above the kernel."""
        return lambda kernel: self.add(name, kernel)

    def formats(self) -> list[QuantFormat]:
        """The records that have a kernel of this kind, in the order they were added."""
        return [FORMATS_BY_NAME[name] for name in self._kernels]

    def __getitem__(self, name: str) -> K:
        return self._kernels[name]

    def get(self, name: str) -> K | None:
        return self._kernels.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kernels

    def __iter__(self) -> Iterator[str]:
        return iter(self._kernels)

    def __len__(self) -> int:
        return len(self._kernels)

    def items(self) -> list[tuple[QuantFormat, K]]:
        """(record, kernel) pairs, in the order they were added."""
        return [(FORMATS_BY_NAME[name], kernel) for name, kernel in self._kernels.items()]
