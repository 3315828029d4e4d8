from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

from llamapyz.errors import UnsupportedQuantError
from llamapyz.gguf.quants import FORMATS, FORMATS_BY_NAME, dequantize
from llamapyz.gguf.reader import load_gguf
from tests.synth import edge_scale_blocks, random_blocks

REQUIRED = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
            "IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S",
            "IQ1_M"]
SUPPORTED = [f.name for f in FORMATS.values() if f.supported]
# ggml's block_q8_1 is two halves and 32 int8 (36 bytes); gguf-py's table still says 4 + 4 + 32
GGUF_PY_TABLE_DIFFERS = {"Q8_1"}


def test_every_required_format_is_supported():
    assert set(REQUIRED) <= set(SUPPORTED)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=lambda f: f.name)
def test_table_matches_ggml_block_sizes(fmt):
    assert fmt.type_id == gguf.GGMLQuantizationType[fmt.name].value
    if fmt.name not in GGUF_PY_TABLE_DIFFERS:
        assert (fmt.block_size, fmt.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[fmt.name]]
    assert fmt.n_bytes(fmt.block_size * 3) == 3 * fmt.type_size


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantize_is_bit_exact_with_gguf_on_random_blocks(name, seed):
    fmt = FORMATS_BY_NAME[name]
    rng = np.random.default_rng(seed)
    n_blocks = 4 * 256 // fmt.block_size
    raw = random_blocks(name, n_blocks, rng).reshape(4, -1)
    ours = dequantize(raw, fmt, (4, n_blocks * fmt.block_size // 4))
    ref = gguf_dequantize(raw, gguf.GGMLQuantizationType[name])
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.array_equal(ours.view(np.uint32), ref.astype(np.float32).view(np.uint32))
    assert np.isfinite(ours).all() and np.abs(ours).max() > 0


@pytest.mark.parametrize("name", [n for n in REQUIRED if FORMATS_BY_NAME[n].block_size > 1])
def test_dequantize_is_bit_exact_with_gguf_on_edge_scales(name):
    fmt = FORMATS_BY_NAME[name]
    raw = edge_scale_blocks(name, 18, np.random.default_rng(5))
    with np.errstate(over="ignore", invalid="ignore"):
        ours = dequantize(raw, fmt, (18 * fmt.block_size,))
        ref = gguf_dequantize(raw, gguf.GGMLQuantizationType[name]).astype(np.float32).reshape(-1)
    nan = np.isnan(ref)
    assert (np.isnan(ours) == nan).all() and np.isinf(ref).any()
    assert np.array_equal(ours[~nan].view(np.uint32), ref[~nan].view(np.uint32))


@pytest.mark.parametrize("name", ["I8", "I16", "I32", "I64", "F64"])
def test_plain_integer_and_double_types_are_cast(name):
    fmt = FORMATS_BY_NAME[name]
    raw = random_blocks(name, 16, np.random.default_rng(3))
    expected = raw.view(fmt.block_dtype["v"]).astype(np.float32)
    assert np.array_equal(dequantize(raw, fmt, (16,)), expected)


@pytest.mark.parametrize("name", [f.name for f in FORMATS.values() if not f.supported])
def test_layout_only_formats_refuse_to_decode_naming_type_and_tensor(name):
    fmt = FORMATS_BY_NAME[name]
    raw = np.zeros(fmt.type_size, dtype=np.uint8)
    with pytest.raises(UnsupportedQuantError, match=rf"'blk.3.attn_q.weight' has ggml type {name}"):
        dequantize(raw, fmt, (fmt.block_size,), tensor="blk.3.attn_q.weight")


@pytest.mark.real_model
def test_every_tensor_of_the_real_models_is_bit_exact_with_gguf(real_model):
    _, path = real_model
    ref = gguf.GGUFReader(str(path))
    seen = set()
    with load_gguf(path) as g:
        for t in ref.tensors:
            ours = g.tensor(t.name)
            seen.add(ours.type_name)
            expected = gguf_dequantize(t.data, t.tensor_type)
            got = ours.dequantize()
            assert got.shape == expected.shape, t.name
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), t.name
    assert seen & {"Q4_1", "Q4_K", "Q6_K", "Q5_0", "Q8_0"}


def test_a_kernel_table_takes_one_kernel_per_known_format_in_order():
    from llamapyz.gguf.quants import KernelTable

    table: KernelTable[str] = KernelTable("test kernel")
    assert table.of("Q6_K")("six") == "six" and table.add("Q4_0", "four") == "four"
    assert list(table) == ["Q6_K", "Q4_0"] and len(table) == 2 and "Q4_0" in table and "Q8_0" not in table
    assert table.formats() == [FORMATS_BY_NAME["Q6_K"], FORMATS_BY_NAME["Q4_0"]]
    assert table.items() == [(FORMATS_BY_NAME["Q6_K"], "six"), (FORMATS_BY_NAME["Q4_0"], "four")]
    assert table["Q4_0"] == "four" and table.get("Q8_0") is None
    with pytest.raises(KeyError, match="no such format"):
        table.add("Q4_2", "typo")
    with pytest.raises(KeyError, match="a second test kernel for Q4_0"):
        table.add("Q4_0", "again")
    assert list(table) == ["Q6_K", "Q4_0"]
