"""The row kernels (`llamapyz/kernels/blockdot.py`) against their numpy twin, bit for bit.

The twin unpacks each format's integer values from the raw blocks and repeats the kernels' arithmetic
operation for operation: 8 int32 lanes per block (lane j: elements 4j..4j+3), the K-quants' sub-block
scales applied in integers, acc = fma(float(lanes), d_w * d_x, acc) in float32, offsets in a float32 `off`,
the lanes summed 8 -> 4 -> 2 -> 1, then + off. Equality with it, for any number of tokens, is what makes
every output independent of the batch and the CPU tier.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from llamapyz.gguf.iq_grids import IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID
from llamapyz.gguf.quants import (
    FORMATS,
    FORMATS_BY_NAME,
    IQ4_NL_VALUES,
    MXFP4_VALUES,
    PARITY_SIGNS,
    TRIT_POWERS,
    dequantize,
    e8m0_half,
)
from llamapyz.kernels import KERNELS
from llamapyz.kernels.blockdot import ROW_KERNELS
from llamapyz.kernels.linear import MatrixGroup, QuantizedRows, QuantMatrix
from llamapyz.kernels.matvec import ACTIVATIONS, matmul_table
from tests.synth import random_blocks

F32 = np.float32
N_ROWS, N_COLS = 37, 512


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once (llvm.fma). In float64 a * b is exact and s = a * b + c is off by at
    most half a float64 ulp (e, by TwoSum); that only changes the float32 rounding when s is exactly a
    float32 midpoint (every such midpoint is a float64), where e's sign decides."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = np.broadcast_to(c, p.shape).astype(np.float64)
    s = p + c
    v = s - p
    e = (p - (s - v)) + (c - v)
    r = s.astype(F32)
    other = np.nextafter(r, np.where(s > r, np.inf, -np.inf).astype(F32))
    tie = (s == (r.astype(np.float64) + other.astype(np.float64)) / 2) & (e != 0)
    upper, lower = np.maximum(r, other), np.minimum(r, other)
    return np.where(tie, np.where(e > 0, upper, lower), r).astype(F32)


def _half(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[..., at:at + 2].copy().view(np.float16)[..., 0].astype(F32)


def _nibbles16(qs: np.ndarray) -> np.ndarray:
    q = qs.astype(np.int64)
    return np.concatenate([q & 15, q >> 4], axis=-1)


def _fifth(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=-1, bitorder="little").astype(np.int64) << 4


def _k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = s.astype(np.int64)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


TWINS: dict[str, Callable[[np.ndarray], dict]] = {}  # per row kernel: its steps' integers and scales


def twin(name: str) -> Callable:
    """`@twin("Q4_0")` above the numpy twin of format Q4_0's row kernel: blocks (n_rows, steps, step bytes)
    uint8 -> "q" (n_rows, steps, sub-blocks, 32) integers, "d", and what the format adds: "m" (an offset per
    block), "dmin", "sc"/"mn" (sub-block scales/mins), "lane_scale" (Q6_K: a scale per lane)."""

    def register(fn: Callable) -> Callable:
        assert name not in TWINS, f"a second twin for {name}"
        TWINS[name] = fn
        return fn

    return register


def unpack(name: str, raw: np.ndarray) -> dict:
    """The twin's view of raw (n_rows, row bytes), in steps of the format record's bytes per block."""
    return TWINS[name](raw.reshape(raw.shape[0], -1, ROW_KERNELS[name].step_bytes))


def _block32(b: np.ndarray, q: np.ndarray, offset: bool = False) -> dict:
    """A 32-value block: d f16 first, then m f16 where the format has an offset."""
    return {"q": q[:, :, None, :], "d": _half(b, 0)} | ({"m": _half(b, 2)} if offset else {})


@twin("Q4_0")
def _q4_0(b: np.ndarray) -> dict:
    return _block32(b, _nibbles16(b[..., 2:18]) - 8)


@twin("Q4_1")
def _q4_1(b: np.ndarray) -> dict:
    return _block32(b, _nibbles16(b[..., 4:20]), offset=True)


@twin("Q5_0")
def _q5_0(b: np.ndarray) -> dict:
    return _block32(b, (_nibbles16(b[..., 6:22]) | _fifth(b[..., 2:6])) - 16)


@twin("Q5_1")
def _q5_1(b: np.ndarray) -> dict:
    return _block32(b, _nibbles16(b[..., 8:24]) | _fifth(b[..., 4:8]), offset=True)


@twin("Q8_0")
def _q8_0(b: np.ndarray) -> dict:
    return _block32(b, b[..., 2:34].view(np.int8).astype(np.int64))


IQ4_NL = np.array(IQ4_NL_VALUES, np.int64)
FP4 = np.array(MXFP4_VALUES, np.int64)


@twin("IQ4_NL")
def _iq4_nl(b: np.ndarray) -> dict:
    return _block32(b, IQ4_NL[_nibbles16(b[..., 2:18])])


@twin("MXFP4")
def _mxfp4(b: np.ndarray) -> dict:
    return {"q": FP4[_nibbles16(b[..., 1:17])][:, :, None, :], "d": e8m0_half(b[..., 0])}


@twin("IQ4_XS")
def _iq4_xs(b: np.ndarray) -> dict:
    q = np.stack([IQ4_NL[_nibbles16(b[..., 8 + 16 * j:24 + 16 * j])] for j in range(8)], axis=2)
    high = b[..., 2].astype(np.int64) | (b[..., 3].astype(np.int64) << 8)
    sc = np.stack([((b[..., 4 + j // 2].astype(np.int64) >> (4 * (j & 1))) & 15 | (((high >> (2 * j)) & 3) << 4)) - 32
                   for j in range(8)], axis=-1)
    return {"q": q, "d": _half(b, 0), "sc": sc}


@twin("TQ2_0")
def _tq2_0(b: np.ndarray) -> dict:
    q = np.stack([((b[..., 32 * (j // 4):32 * (j // 4) + 32].astype(np.int64) >> (2 * (j % 4))) & 3) - 1
                  for j in range(8)], axis=2)
    return {"q": q, "d": _half(b, 64)}


def _trits(packed: np.ndarray, powers: np.ndarray) -> np.ndarray:
    return ((((packed.astype(np.int64) * powers) & 255) * 3) >> 8) - 1


@twin("TQ1_0")
def _tq1_0(b: np.ndarray) -> dict:
    powers = np.array(TRIT_POWERS)
    low, high, qh = b[..., 0:32], b[..., 32:48], b[..., 48:52]
    subs = [_trits(low, powers[j]) for j in range(5)]
    subs += [_trits(np.concatenate([high, high], axis=-1), np.repeat(powers[n:n + 2], 16)) for n in (0, 2)]
    tail = np.concatenate([high, np.tile(qh, 4)], axis=-1)
    subs.append(_trits(tail, np.concatenate([np.full(16, powers[4]), np.repeat(powers[:4], 4)])))
    return {"q": np.stack(subs, axis=2), "d": _half(b, 52)}


# IQ grids: the integer values (signs applied; IQ1's times 8 with the delta of 1/8 as +-1), the integer scale
# 2 s + 1 per sub-block or per 16 values (lanes 0-3 and 4-7), d with the power of two the scales leave out

def _u(b: np.ndarray, at: int, n: int) -> np.ndarray:
    """The little-endian unsigned n-byte word at byte `at` of each step, as int64."""
    return sum(b[..., at + i].astype(np.int64) << (8 * i) for i in range(n))


def _negate(values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """values (..., 32) negated where bit k of bits (...) is set."""
    return np.where((bits[..., None] >> np.arange(32)) & 1, -values, values)


def _parity(words: np.ndarray) -> np.ndarray:
    """4 7-bit sign fields -> 32 sign bits, each byte's eighth bit making its count even."""
    fields = (words[..., None] >> (7 * np.arange(4))) & 127
    return (np.array(PARITY_SIGNS, np.int64)[fields] << (8 * np.arange(4))).sum(axis=-1)


def _lane_scales(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.concatenate([np.repeat(first[..., None], 4, -1), np.repeat(second[..., None], 4, -1)], axis=-1)


def _grid_twin(values: list, scales: list, d: np.ndarray, per_16: bool = False) -> dict:
    scale = np.stack(scales, axis=2)
    return {"q": np.stack(values, axis=2), "d": d, ("lane_scale" if per_16 else "sc"): scale}


@twin("IQ2_XXS")
def _iq2_xxs(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        word = _u(b, 6 + 8 * j, 4)
        grid = IQ2XXS_GRID[b[..., 2 + 8 * j:6 + 8 * j]].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(_negate(grid, _parity(word)))
        scales.append(2 * (word >> 28) + 1)
    return _grid_twin(values, scales, _half(b, 0) * F32(0.125))


@twin("IQ2_XS")
def _iq2_xs(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        words = np.stack([_u(b, 2 + 8 * j + 2 * k, 2) for k in range(4)], axis=-1)
        grid = IQ2XS_GRID[words & 511].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(_negate(grid, _parity(((words >> 9) << (7 * np.arange(4))).sum(axis=-1))))
        sc = b[..., 66 + j].astype(np.int64)
        scales.append(_lane_scales(2 * (sc & 15) + 1, 2 * (sc >> 4) + 1))
    return _grid_twin(values, scales, _half(b, 0) * F32(0.125), per_16=True)


@twin("IQ2_S")
def _iq2_s(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        qh = b[..., 66 + j].astype(np.int64)[..., None]
        index = b[..., 2 + 4 * j:6 + 4 * j].astype(np.int64) | (((qh >> (2 * np.arange(4))) & 3) << 8)
        grid = IQ2S_GRID[index].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(_negate(grid, _u(b, 34 + 4 * j, 4)))
        sc = b[..., 74 + j].astype(np.int64)
        scales.append(_lane_scales(2 * (sc & 15) + 1, 2 * (sc >> 4) + 1))
    return _grid_twin(values, scales, _half(b, 0) * F32(0.125), per_16=True)


@twin("IQ3_XXS")
def _iq3_xxs(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        word = _u(b, 66 + 4 * j, 4)
        grid = IQ3XXS_GRID[b[..., 2 + 8 * j:10 + 8 * j]].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(_negate(grid, _parity(word)))
        scales.append(2 * (word >> 28) + 1)
    return _grid_twin(values, scales, _half(b, 0) * F32(0.25))


@twin("IQ3_S")
def _iq3_s(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        qh = b[..., 66 + j].astype(np.int64)[..., None]
        index = b[..., 2 + 8 * j:10 + 8 * j].astype(np.int64) | (((qh >> np.arange(8)) & 1) << 8)
        grid = IQ3S_GRID[index].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(_negate(grid, _u(b, 74 + 4 * j, 4)))
        scales.append(2 * ((b[..., 106 + j // 2].astype(np.int64) >> (4 * (j & 1))) & 15) + 1)
    return _grid_twin(values, scales, _half(b, 0))


@twin("IQ1_S")
def _iq1_s(b: np.ndarray) -> dict:
    values, scales = [], []
    for j in range(8):
        qh = _u(b, 34 + 2 * j, 2)
        index = b[..., 2 + 4 * j:6 + 4 * j].astype(np.int64) | (((qh[..., None] >> (3 * np.arange(4))) & 7) << 8)
        grid = IQ1S_GRID[index].astype(np.int64).reshape(*b.shape[:2], 32)
        values.append(8 * grid + np.where(qh >> 15, -1, 1)[..., None])
        scales.append(2 * ((qh >> 12) & 7) + 1)
    return _grid_twin(values, scales, _half(b, 0) * F32(0.125))


@twin("IQ1_M")
def _iq1_m(b: np.ndarray) -> dict:
    words = [_u(b, 48 + 2 * i, 2) for i in range(4)]
    bits = sum((w >> 12) << (4 * i) for i, w in enumerate(words))
    d = bits.astype(np.uint16).view(np.float16).astype(F32) * F32(0.125)
    values, scales = [], []
    for j in range(8):
        nibbles = np.stack([(b[..., 32 + 2 * j + k // 2].astype(np.int64) >> (4 * (k & 1))) & 15 for k in range(4)],
                           axis=-1)
        index = b[..., 4 * j:4 * j + 4].astype(np.int64) | ((nibbles & 7) << 8)
        grid = IQ1S_GRID[index].astype(np.int64)  # (rows, steps, 4, 8)
        values.append((8 * grid + np.where(nibbles & 8, -1, 1)[..., None]).reshape(*b.shape[:2], 32))
        word = words[j // 2]
        scales.append(_lane_scales(2 * ((word >> (6 * (j & 1))) & 7) + 1, 2 * ((word >> (6 * (j & 1) + 3)) & 7) + 1))
    return _grid_twin(values, scales, d, per_16=True)


def _k4(b: np.ndarray, qs: np.ndarray, qh: np.ndarray | None = None) -> dict:
    """Q4_K and Q5_K: d, dmin, 12 bytes of 6-bit scales and mins, then the values' nibbles (and fifth bits)."""
    q = np.stack([(qs[..., 32 * (j // 2):32 * (j // 2) + 32].astype(np.int64) >> (4 * (j & 1))) & 15
                  for j in range(8)], axis=2)
    if qh is not None:
        q |= np.stack([((qh.astype(np.int64) >> j) & 1) << 4 for j in range(8)], axis=2)
    sc, mn = _k4_scales(b[..., 4:16])
    return {"q": q, "d": _half(b, 0), "dmin": _half(b, 2), "sc": sc, "mn": mn}


@twin("Q4_K")
def _q4_k(b: np.ndarray) -> dict:
    return _k4(b, b[..., 16:144])


@twin("Q5_K")
def _q5_k(b: np.ndarray) -> dict:
    return _k4(b, b[..., 48:176], b[..., 16:48])


@twin("Q6_K")
def _q6_k(b: np.ndarray) -> dict:
    subs, scales = [], []
    for half in range(2):
        for k in range(4):
            low = (b[..., half * 64 + (k & 1) * 32:][..., :32].astype(np.int64) >> (4 * (k >> 1))) & 15
            high = (b[..., 128 + half * 32:][..., :32].astype(np.int64) >> (2 * k)) & 3
            subs.append((low | (high << 4)) - 32)
            pair = b[..., 192 + half * 8 + 2 * k:][..., :2].view(np.int8).astype(np.int64)
            scales.append(np.repeat(pair, 4, axis=-1))
    return {"q": np.stack(subs, axis=2), "d": _half(b, 208), "lane_scale": np.stack(scales, axis=2)}


def row_dots_twin(name: str, raw: np.ndarray, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray,
                  xqs: np.ndarray) -> np.ndarray:
    """out (n_tokens, n_rows), operation for operation as the kernel."""
    parts = unpack(name, raw)
    q = parts["q"]  # (n_rows, steps, subs, 32)
    n_rows, steps, subs, _ = q.shape
    out = np.empty((xq.shape[0], n_rows), F32)
    for t in range(xq.shape[0]):
        x = xq[t].astype(np.int64).reshape(steps, subs, 32)
        lanes = (q * x).reshape(n_rows, steps, subs, 8, 4).sum(axis=-1)  # (n_rows, steps, subs, 8)
        if "sc" in parts:
            lanes = lanes * parts["sc"][..., None]
        if "lane_scale" in parts:
            lanes = lanes * parts["lane_scale"]
        lanes = lanes.sum(axis=2)  # the sub-blocks' integer sum
        acc, off = np.zeros((n_rows, 8), F32), np.zeros(n_rows, F32)
        for s in range(steps):
            xb = s * subs
            acc = fma32(lanes[:, s].astype(F32), (parts["d"][:, s] * xd[t, xb])[:, None], acc)
            if "m" in parts:
                off = off + parts["m"][:, s] * xs[t, xb]
            if "mn" in parts:
                mins = (parts["mn"][:, s] * xqs[t, xb:xb + subs]).sum(axis=-1)
                off = off + (F32(0) - (parts["dmin"][:, s] * xd[t, xb]) * mins.astype(F32))
        v = acc[:, :4] + acc[:, 4:]
        v = v[:, :2] + v[:, 2:]
        out[t] = (v[:, 0] + v[:, 1]) + off
    return out


@pytest.mark.parametrize("name", sorted(ROW_KERNELS))
@pytest.mark.parametrize("n_tokens", [1, 3, 6])
def test_row_kernels_equal_their_twin_bit_for_bit(name, n_tokens):
    fmt = FORMATS_BY_NAME[name]
    raw = random_blocks(name, N_ROWS * N_COLS // fmt.block_size, np.random.default_rng(7)).reshape(N_ROWS, -1)
    x = np.random.default_rng(8).standard_normal((n_tokens, N_COLS)).astype(F32)
    x[0, :64] *= 1e-3  # small blocks beside large ones
    kernels = KERNELS[name]
    rows = QuantizedRows(x)
    form = rows.form(kernels.activation)
    out = np.full((n_tokens, N_ROWS), np.nan, F32)
    table = np.array([[kernels.format_id, 0, raw.shape[1], 0, N_ROWS, ACTIVATIONS.index(kernels.activation), 0]])
    matmul_table(raw.reshape(-1), table, rows.forms({kernels.activation}), out)
    np.testing.assert_array_equal(out, row_dots_twin(name, raw, *form))
    # and the twin is a dot product of the dequantized weights with the quantized x
    w = dequantize(raw, fmt, (N_ROWS, N_COLS)).astype(np.float64)
    xq, xd = form[0].astype(np.float64), np.repeat(form[1], 32, axis=1).astype(np.float64)
    exact = (xq * xd) @ w.T
    scale = np.abs(xq * xd) @ np.abs(w).T
    slack = 2.0 ** -10 if name in ("Q4_1", "Q5_1") else 1e-5  # their block sums are float16 (llama.cpp's q8_1)
    assert np.abs(out - exact).max() <= slack * scale.max()


def test_mxfp4_scales_of_every_finite_exponent_equal_the_twin():
    """E8M0 exponents 0 (a subnormal 2^-128) to 200, built as bits in the kernel and in the twin."""
    fmt = FORMATS_BY_NAME["MXFP4"]
    raw = random_blocks("MXFP4", N_ROWS * N_COLS // 32, np.random.default_rng(3))
    raw.view(fmt.block_dtype)["e"] = np.arange(N_ROWS * N_COLS // 32) % 201
    raw = raw.reshape(N_ROWS, -1)
    rows = QuantizedRows(np.random.default_rng(4).standard_normal((2, N_COLS)).astype(F32))
    out = np.full((2, N_ROWS), np.nan, F32)
    table = np.array([[fmt.type_id, 0, raw.shape[1], 0, N_ROWS, ACTIVATIONS.index("q8_0"), 0]])
    matmul_table(raw.reshape(-1), table, rows.forms({"q8_0"}), out)
    np.testing.assert_array_equal(out, row_dots_twin("MXFP4", raw, *rows.form("q8_0")))
    assert np.isfinite(out).all() and (np.abs(out[:, 0]) < 2.0**-100).all()


def test_matrices_sharing_an_input_in_one_pass_give_the_same_bits():
    rng = np.random.default_rng(9)
    names = ("Q4_K", "Q6_K", "Q8_0")  # x as q8_K for the first two, as q8_0 for the third: both in one pass
    blobs = [random_blocks(n, 16 * N_COLS // FORMATS_BY_NAME[n].block_size, rng) for n in names]
    buffer = np.concatenate([b.reshape(-1) for b in blobs])  # one buffer, as a file's tensors share the mmap
    starts = np.cumsum([0] + [b.size for b in blobs])
    biases = [None, None, rng.standard_normal(16).astype(F32)]
    matrices = [QuantMatrix(type("T", (), dict(name=n, shape=(16, N_COLS), format=FORMATS_BY_NAME[n],
                                               raw=buffer[a:b].reshape(16, -1))), bias)
                for n, a, b, bias in zip(names, starts[:-1], starts[1:], biases, strict=True)]
    parts = (matrices[0].slice_rows(3, 11), matrices[2], matrices[1], matrices[0].slice_rows(0, 5))
    group = MatrixGroup(parts)
    assert group.table is not None  # one buffer: one pass
    x = QuantizedRows(rng.standard_normal((5, N_COLS)).astype(F32))
    alone = [m.matvec(x) + (0 if m.bias is None else m.bias) for m in parts]
    for keep in (True, False):  # fresh arrays, or decode's buffers
        for fused, expected in zip(group.project(x.x, keep), alone, strict=True):
            np.testing.assert_array_equal(fused, expected)
    np.testing.assert_array_equal(parts[0].matvec(x), matrices[0].matvec(x)[:, 3:11])
    w = dequantize(matrices[1].raw, FORMATS_BY_NAME["Q6_K"], (16, N_COLS))
    assert np.abs(matrices[1].matvec(x) - x.x @ w.T).max() <= 0.02 * (np.abs(x.x) @ np.abs(w).T).max()


def test_every_row_kernel_is_reached_through_its_records_type_id_and_has_a_twin():
    """The one id space: `matmul_table`'s format column is the record's ggml type id, for every row kernel;
    each row kernel's format also has a dequantizer (embeddings, `QuantMatrix.rows`) and a numpy twin here."""
    assert len(ROW_KERNELS) >= 8 and set(TWINS) == set(ROW_KERNELS)
    for record, kernel in ROW_KERNELS.items():
        assert kernel.format is record and KERNELS[record.name].format_id == record.type_id
        assert KERNELS[record.name].row is kernel and kernel.activation in ACTIVATIONS
        assert kernel.x_blocks * 32 == record.block_size


@pytest.mark.parametrize("type_id", [FORMATS_BY_NAME["Q2_K"].type_id, FORMATS_BY_NAME["F16"].type_id, 99, -1])
def test_a_table_naming_a_format_without_a_row_kernel_gives_nan(type_id):
    """No format's product stands in for another's (the hand-written dispatch made any unknown id Q6_K)."""
    assert FORMATS.get(type_id) is None or FORMATS[type_id].name not in ROW_KERNELS
    raw = random_blocks("Q6_K", 4 * N_COLS // 256, np.random.default_rng(1)).reshape(4, -1)
    rows = QuantizedRows(np.random.default_rng(2).standard_normal((5, N_COLS)).astype(F32))
    out = np.zeros((5, 4), F32)
    table = np.array([[type_id, 0, raw.shape[1], 0, 4, ACTIVATIONS.index("q8_K"), 0]])
    matmul_table(raw.reshape(-1), table, rows.forms({"q8_K"}), out)
    assert np.isnan(out).all()
