from __future__ import annotations

import mmap
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamapyz.errors import GGUFError, UnsupportedQuantError
from llamapyz.gguf.reader import load_gguf
from tests.synth import (
    ARRAY,
    METADATA,
    SMALL_TENSORS,
    STRING,
    U32,
    gguf_bytes,
    gstr,
    kv,
    kv_u32,
    tensor_info,
    write_gguf,
)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "case.gguf"
    path.write_bytes(data)
    return path


# --- well-formed files ----------------------------------------------------------------------------------


def test_every_metadata_type_reads_back(small_gguf):
    path, _ = small_gguf
    with load_gguf(path) as g:
        assert g.version == 3
        assert g.architecture == "llama"
        for key, (kind, expected) in METADATA.items():
            value = g.metadata[key]
            if kind == "array" and isinstance(expected[0], list):
                assert [list(v) for v in value] == expected
            elif kind == "array":
                assert list(value) == pytest.approx(expected) if isinstance(expected[0], float) \
                    else list(value) == expected
            elif kind in ("float32", "float64"):
                assert value == pytest.approx(expected)
            else:
                assert value == expected, key
        assert g.value_types["test.strings"] == "ARRAY[STRING]"
        assert g.value_types["test.nested"] == "ARRAY[ARRAY]"
        assert g.value_types["test.u64"] == "UINT64"


def test_tensors_are_zero_copy_views_with_numpy_shapes(small_gguf):
    path, written = small_gguf
    with load_gguf(path) as g:
        assert set(g.tensors) == set(SMALL_TENSORS)
        for name, (type_name, shape) in SMALL_TENSORS.items():
            t = g.tensor(name)
            assert t.type_name == type_name
            assert t.shape == shape and t.ne == tuple(reversed(shape))
            assert np.array_equal(t.raw.reshape(-1), written[name].reshape(-1))
            assert np.shares_memory(t.raw, g.buffer)
            assert not t.raw.flags.writeable
        base = g.tensor("f32").raw
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base.obj if isinstance(base, memoryview) else base, mmap.mmap)
        assert np.array_equal(g.tensor("f32").dequantize(), written["f32"].view(np.float32))
        blocks = g.tensor("q4_k").blocks()  # (rows, blocks per row) of Q4_K's fields, still zero copy
        assert blocks.shape == (2, 1) and blocks.dtype.names == ("d", "dmin", "scales", "qs")
        assert blocks["qs"].shape == (2, 1, 128) and np.shares_memory(blocks, g.buffer)


def test_agrees_with_gguf_package_reader(small_gguf):
    path, _ = small_gguf
    ref = gguf.GGUFReader(str(path))
    with load_gguf(path) as g:
        assert g.data_offset == ref.data_offset
        for t in ref.tensors:
            ours = g.tensor(t.name)
            assert ours.offset + g.data_offset == t.data_offset
            assert ours.n_bytes == t.n_bytes
            assert list(ours.ne) == [int(d) for d in t.shape]


def test_opens_a_gguf_stored_inside_a_larger_file(small_gguf, tmp_path):
    path, written = small_gguf
    inner = path.read_bytes()
    prefix = b"PK\x03\x04" + bytes(70_001)  # not page aligned on purpose
    outer = tmp_path / "archive.bin"
    outer.write_bytes(prefix + inner + b"trailing zip directory")
    with load_gguf((outer, len(prefix), len(inner))) as g:
        assert g.metadata["test.string"] == METADATA["test.string"][1]
        for name in SMALL_TENSORS:
            assert np.array_equal(g.tensor(name).raw.reshape(-1), written[name].reshape(-1))
    with pytest.raises(GGUFError, match="past the end"):
        load_gguf((outer, len(prefix), len(inner) + 10**6))


def test_version_2_is_read_and_others_refused(small_gguf, tmp_path):
    data = bytearray(small_gguf[0].read_bytes())
    data[4:8] = struct.pack("<I", 2)
    with load_gguf(write(tmp_path, bytes(data))) as g:
        assert g.version == 2 and len(g.tensors) == len(SMALL_TENSORS)
    for version in (1, 4, 0xFFFFFFFF):
        data[4:8] = struct.pack("<I", version)
        with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}"):
            load_gguf(write(tmp_path, bytes(data)))


def test_every_truncation_is_refused(small_gguf, tmp_path):
    path, _ = small_gguf
    data = path.read_bytes()
    with load_gguf(path) as g:
        needed = g.data_offset + max(t.offset + t.n_bytes for t in g.tensors.values())
    for length in range(1, needed):
        with pytest.raises(GGUFError):
            load_gguf((path, 0, length))
    assert len(load_gguf((path, 0, needed)).tensors) == len(SMALL_TENSORS)
    assert needed <= len(data)


def test_unsupported_quant_type_loads_but_refuses_to_decode(tmp_path):
    path = tmp_path / "unsupported.gguf"
    write_gguf(path, {"blk.0.ffn_up.weight": ("F32", (1, 32))}, metadata={})
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.0.ffn_up.weight") + len("blk.0.ffn_up.weight") + 4 + 2 * 8
    data[at:at + 4] = struct.pack("<I", 9)  # Q8_1 (an activation type): 36 bytes per 32 values, within F32's 128
    with load_gguf(write(tmp_path, bytes(data))) as g:
        t = g.tensor("blk.0.ffn_up.weight")
        assert t.type_name == "Q8_1"
        with pytest.raises(UnsupportedQuantError, match=r"'blk.0.ffn_up.weight'.*Q8_1"):
            t.dequantize()


# --- malformed files: each names what is wrong ----------------------------------------------------------

F32_ROW = (np.arange(8, dtype=np.float32)).tobytes()  # one F32 tensor of 8 elements, 32 bytes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + bytes(20), "not a GGUF file"),
        (b"FUGG" + bytes(20), "big-endian"),
        (b"GG", "truncated"),
        (gguf_bytes([], [], n_kv=2**60), "header claims"),
        (gguf_bytes([], [], n_tensors=2**40), "header claims"),
        (gguf_bytes([struct.pack("<Q", 2**62) + bytes(16)], []), "metadata key at offset 24 claims"),
        (gguf_bytes([kv("general.name", STRING, struct.pack("<Q", 2**62))], []), "general.name.*claims"),
        (gguf_bytes([kv("k", 99, b"")], []), "unknown metadata value type 99"),
        (gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", U32, 2**61))], []), "'k': array of"),
        (gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", 77, 1))], []), "unknown array element type 77"),
        (gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1) * 9 + struct.pack("<IQ", U32, 0))], []),
         "nested deeper"),
        (gguf_bytes([kv_u32("a", 1), kv_u32("a", 2)], []), "duplicate metadata key 'a'"),
        (gguf_bytes([kv_u32("general.alignment", 48)], []), "power of two"),
        (gguf_bytes([kv_u32("general.alignment", 0)], []), "power of two"),
        (gguf_bytes([], [tensor_info("t", (8,), 0, 0)] * 2, F32_ROW), "duplicate tensor name 't'"),
        (gguf_bytes([], [tensor_info("t", (8,), 99, 0)], F32_ROW), "'t': unknown ggml type id 99"),
        (gguf_bytes([], [tensor_info("t", (33,), 2, 0)], bytes(64)), "not a multiple of the Q4_0 block"),
        (gguf_bytes([], [tensor_info("t", (8,), 0, 8)], F32_ROW * 2), "'t'.*not aligned"),
        (gguf_bytes([], [tensor_info("t", (8,), 0, 2**40)], F32_ROW), "'t'.*past the end"),
        (gguf_bytes([], [tensor_info("t", (16,), 0, 0)], F32_ROW), "'t'.*past the end"),
        (gguf_bytes([], [tensor_info("t", (), 0, 0)], F32_ROW), "'t'.*0 dimensions"),
        (gguf_bytes([], [tensor_info("t", (1, 1, 1, 1, 8), 0, 0)], F32_ROW), "'t'.*5 dimensions"),
        (gguf_bytes([], [tensor_info("t", (8, 0), 0, 0)], F32_ROW), "'t'.*invalid shape"),
        (gguf_bytes([], [tensor_info("t", (2**32, 2**32), 0, 0)], F32_ROW), "'t'.*invalid shape"),
        (gguf_bytes([], [tensor_info("a", (16,), 0, 0), tensor_info("b", (8,), 0, 32)], F32_ROW * 2),
         "'a'.*overlaps tensor 'b'"),
        (b"", "empty file"),
    ],
)
def test_malformed_file_raises_a_specific_error(tmp_path, data, message):
    with pytest.raises(GGUFError, match=message):
        load_gguf(write(tmp_path, data))


def test_hand_assembled_file_is_valid_when_nothing_is_wrong(tmp_path):
    data = gguf_bytes([kv_u32("general.alignment", 64), kv("s", STRING, gstr("x"))],
                      [tensor_info("t", (8,), 0, 0), tensor_info("u", (8,), 0, 64)], F32_ROW + bytes(32) + F32_ROW,
                      alignment=64)
    with load_gguf(write(tmp_path, data)) as g:
        assert g.alignment == 64 and g.data_offset % 64 == 0
        assert np.array_equal(g.tensor("u").dequantize(), np.arange(8, dtype=np.float32))
        with pytest.raises(GGUFError, match="no tensor named 'v'"):
            g.tensor("v")


def test_a_file_that_is_not_gguf_says_so_and_how_it_starts(tmp_path):
    """`-m README.md` said "truncated or corrupt" (issue 27): the magic is checked first, the message says what
    the file starts with, and the hint asks for a .gguf file instead of a fresh download."""
    path = tmp_path / "README.md"
    path.write_text("# llamapyz\n\nOne GGUF model, one self-running Python file.\n" * 20)
    with pytest.raises(GGUFError) as caught:
        load_gguf(path)
    assert str(caught.value) == (f"{path}: not a GGUF file (it starts with b'# llamapyz\\n\\nOne ', a GGUF file "
                                 "with b'GGUF')")
    assert "truncated" not in caught.value.hint and ".gguf" in caught.value.hint


@pytest.mark.parametrize("where", ["key", "tensor"])
def test_a_huge_name_is_shown_in_a_few_hundred_characters(tmp_path, where):
    """A corrupt file's 3.7 MB key made a 3.7 MB error line (issue 27): names are cut where messages quote them,
    and every llamapyz error message is capped besides."""
    huge = "k" * 1_000_000
    data = (gguf_bytes([kv_u32(huge, 1), kv_u32(huge, 2)], []) if where == "key" else
            gguf_bytes([], [tensor_info(huge, (8,), 0, 0)] * 2, F32_ROW))
    with pytest.raises(GGUFError, match="duplicate") as caught:
        load_gguf(write(tmp_path, data))
    assert len(str(caught.value)) < 300 and "more characters)" in str(caught.value)


def test_every_llamapyz_error_message_is_capped():
    from llamapyz.errors import MAX_MESSAGE_CHARS, LlamapyzError

    message = str(LlamapyzError("x" * 3_700_000))
    assert message == "x" * MAX_MESSAGE_CHARS + f"…({3_700_000 - MAX_MESSAGE_CHARS} more characters)"
    assert str(LlamapyzError("short")) == "short"
