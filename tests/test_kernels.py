"""Every numba kernel against its plain numpy twin.

- Dequantization kernels: bit-exact with `llamapyz/gguf/quants.py` (itself bit-exact with gguf-py).
- The int8 quantizers of x (llama.cpp's q8_0/q8_1 and q8_K) against their twin; the integer row kernels
  have their own file (tests/test_blockdot.py). `QuantMatrix` against dequantized products.
- SIMD building blocks (`simd.py`): exact results against numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamapyz.gguf.quants import FORMATS_BY_NAME, dequantize
from llamapyz.kernels import KERNELS, simd
from llamapyz.kernels.linear import QuantizedRows, QuantMatrix
from tests.synth import edge_scale_blocks, random_blocks

N_ROWS = 37


def random_matrix(type_name: str, n_cols: int, seed: int) -> np.ndarray:
    fmt = FORMATS_BY_NAME[type_name]
    raw = random_blocks(type_name, N_ROWS * n_cols // fmt.block_size, np.random.default_rng(seed))
    return raw.reshape(N_ROWS, -1)


@pytest.mark.parametrize("type_name", sorted(KERNELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_dequant_kernel_is_bit_exact(type_name, seed):
    raw = random_matrix(type_name, 512, seed)
    expected = dequantize(raw, FORMATS_BY_NAME[type_name], (N_ROWS, 512))
    out = np.full((N_ROWS, 512), np.nan, np.float32)
    KERNELS[type_name].dequant(raw, out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("type_name", sorted(n for n in KERNELS if FORMATS_BY_NAME[n].block_size > 1))
def test_dequant_kernel_is_bit_exact_on_edge_scales(type_name):
    """Zero, subnormal, largest and infinite float16 scales, every kind of E8M0 exponent (tests/synth.py)."""
    fmt = FORMATS_BY_NAME[type_name]
    raw = edge_scale_blocks(type_name, 4 * 256 // fmt.block_size * 9, np.random.default_rng(6)).reshape(4, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = dequantize(raw, fmt, (4, raw.shape[1] // fmt.type_size * fmt.block_size))
    out = np.full(expected.shape, np.nan, np.float32)
    KERNELS[type_name].dequant(raw, out)
    nan = np.isnan(expected)
    assert (np.isnan(out) == nan).all()
    np.testing.assert_array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def quantized_twin(x: np.ndarray, kind: str = "q8_0") -> np.ndarray:
    """Numpy twin of quantize_q8 / quantize_q8_k (llama.cpp's q8_0 and q8_K): what the integer kernels see
    of x (1-d)."""
    if kind == "q8_0":
        blocks = x.reshape(-1, 32)
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)  # the scale is kept as float16
        return (np.rint(blocks * inv) * d).reshape(-1).astype(np.float32)
    blocks = x.reshape(-1, 256)
    top = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)][:, None]  # first largest magnitude
    iscale = np.where(top != 0, np.float32(-127) / np.where(top != 0, top, 1), 0).astype(np.float32)
    d = np.where(top != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (np.minimum(127, np.rint(blocks * iscale)) * d).reshape(-1).astype(np.float32)


@pytest.mark.parametrize("kind", ["q8_0", "q8_K"])
def test_quantize_q8_matches_twin(kind):
    x = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    x[:32] = 0  # an all-zero block has scale 0
    x[256:512] *= 1e-6  # small scales: float16's subnormal range
    xq, xd, xs, xqs = QuantizedRows(x[None, :]).form(kind)
    np.testing.assert_array_equal(xq[0].astype(np.float32) * np.repeat(xd[0], 32), quantized_twin(x, kind))
    assert (xqs[0] == xq[0].reshape(-1, 32).astype(np.int32).sum(axis=1)).all()
    sums = xd[0] * xqs[0].astype(np.float32)  # the block sums as quantized
    if kind == "q8_0":  # llama.cpp's q8_1 keeps d * sum(q) as float16
        d = np.abs(x.reshape(-1, 32)).max(axis=1) / np.float32(127)
        sums = (d * xqs[0].astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(xs[0], sums)
    assert np.abs(x - quantized_twin(x, kind)).max() <= np.abs(x).max() / 254 * 1.001 + 1e-7


@pytest.mark.parametrize("kind", ["q8_0", "q8_K"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_quantizers_take_non_finite_x_without_raising(kind, bad):
    # a corrupt file's weights can make an activation inf: q8_K's d = 1 / (-127 / inf) divided by zero and
    # raised ZeroDivisionError in the middle of a forward pass (CI, issue 14's fuzz seed 1001392)
    x = np.random.default_rng(4).standard_normal(512).astype(np.float32)
    x[3] = bad
    xq, xd, xs, xqs = QuantizedRows(x[None, :]).form(kind)
    assert np.isfinite(xd[0, 8:]).all() and xq.shape == (1, 512)  # the second super-block is untouched


def test_every_kernel_keeps_numpy_error_model():
    """By construction, not by what LLVM makes of a zero check on one CPU: no kernel raises on inf or NaN."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import llamapyz.kernels as package

    dispatchers = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        dispatchers += [(info.name, name, value) for name, value in vars(module).items()
                        if isinstance(value, CPUDispatcher) and value.__module__ == module.__name__]
    assert len(dispatchers) > 20
    wrong = [f"{m}.{n}" for m, n, d in dispatchers if d.targetoptions.get("error_model") != "numpy"]
    assert not wrong


def test_float16_rounding_is_exact():
    from llamapyz.kernels.matvec import round_to_f16

    values = np.concatenate([np.random.default_rng(4).standard_normal(2000) * 10.0 ** np.arange(-7, 3).repeat(200),
                             [0.0, 6.1e-5, 5.96e-8, 1e-9, 65504.0]]).astype(np.float32)
    expected = values.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.array([round_to_f16(v) for v in values], np.float32), expected)


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q4_1", "Q3_K", "Q6_K"])
def test_quant_matrix_matvec_and_matmul(type_name, monkeypatch):
    monkeypatch.setattr("llamapyz.kernels.linear.TILE_ELEMENTS", 512 * 8)  # several tiles
    fmt = FORMATS_BY_NAME[type_name]
    raw = random_matrix(type_name, 512, 5)
    tensor = type("T", (), dict(name="w", shape=(N_ROWS, 512), format=fmt, raw=raw))
    matrix = QuantMatrix(tensor)
    w = dequantize(raw, fmt, (N_ROWS, 512))
    x = np.random.default_rng(6).standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_allclose(matrix.matmul(x), x @ w.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(matrix.rows([4, 0, 4]), w[[4, 0, 4]])
    out = matrix.matvec(QuantizedRows(x))
    assert np.abs(out - x @ w.T).max() <= 0.02 * (np.abs(x) @ np.abs(w).T).max()


# --- SIMD building blocks ------------------------------------------------------------------------------

RNG = np.random.default_rng(42)
BYTES = RNG.integers(0, 256, 80, dtype=np.uint8)
X8 = RNG.integers(-128, 128, 64, dtype=np.int8)


def test_f16_at():
    halves = np.array([0.0, -1.5, 65504.0, 6e-8, np.inf], np.float16)
    raw = np.concatenate([[7], halves.view(np.uint8)]).astype(np.uint8)
    got = [simd_f16(raw, 1 + 2 * i) for i in range(len(halves))]
    np.testing.assert_array_equal(np.array(got, np.float32), halves.astype(np.float32))


def test_half_to_float_by_integer_operations_is_exact_for_every_half():
    """The ssse3 tier's conversion (no F16C), here on any tier: all 65536 bit patterns, bit for bit
    (NaNs keep their payload and sign, as vcvtph2ps and numpy keep them)."""
    from numba import njit

    @njit
    def convert_all(raw, out):
        for i in range(out.shape[0]):
            out[i] = simd.f16_at_integer(raw, 2 * i)

    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(1 << 16, np.float32)
    convert_all(bits.view(np.uint8), out)
    np.testing.assert_array_equal(out.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("n", [16, 64, 256])
def test_dot_f32_is_its_lane_and_tree_order_exactly(n):
    """Bit-equal to the same order in numpy: element j into lane j % 16 in turn, then pairwise halves."""
    from numba import njit

    a, b = (RNG.standard_normal(n).astype(np.float32) for _ in range(2))
    lanes = np.zeros(16, np.float32)
    for chunk in (a * b).reshape(-1, 16):
        lanes = lanes + chunk
    while len(lanes) > 1:
        lanes = lanes[: len(lanes) // 2] + lanes[len(lanes) // 2:]
    got = njit(lambda a, b, n: simd.dot_f32(a, b, n))(a, b, n)
    assert np.float32(got).view(np.uint32) == lanes[0].view(np.uint32)
    assert abs(got - float(a.astype(np.float64) @ b)) < 1e-4 * n


def simd_f16(raw, offset):
    from numba import njit

    return njit(lambda b, o: simd.f16_at(b, o))(raw, offset)


def test_every_quantized_format_the_reference_decodes_has_a_dequant_kernel():
    """`QuantMatrix` never decodes a quant format's rows with the numpy reference; plain numbers (block size 1)
    are numpy casts. KERNELS is made from the formats' tables, keyed by their records."""
    from llamapyz.gguf.quants import FORMATS

    assert set(KERNELS) == {f.name for f in FORMATS.values() if f.supported and f.block_size > 1}
    assert all(k.format is FORMATS_BY_NAME[name] for name, k in KERNELS.items())
