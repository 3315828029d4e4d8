from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from llamapyz.bundler.zipapp import ALIGNMENT, ArchiveWriter, padding_record

DATE = (2024, 1, 2, 3, 4, 6)


def write(path: Path, payload: Path, name: str, shebang: str = "/usr/bin/env python3") -> int:
    with ArchiveWriter(path, shebang, DATE) as w:
        offset = w.add_aligned(name, payload)
        w.add_bytes("__main__.py", b"print('hi')\n")
        w.add_bytes("site-packages/x/run.sh", b"#!/bin/sh\n", mode=0o755)
    return offset


@pytest.mark.parametrize("name", ["m.gguf", "a-much-longer-model-name.Q4_K_M.gguf", "x" * 300 + ".gguf"])
@pytest.mark.parametrize("shebang", ["/usr/bin/env python3", "/opt/some/very/long/path/to/python3.11"])
def test_aligned_entry_lands_on_a_64k_boundary_and_reads_back(tmp_path, name, shebang):
    payload = tmp_path / "payload.bin"
    data = bytes(range(256)) * 1000
    payload.write_bytes(data)
    archive = tmp_path / "a.pyz"
    offset = write(archive, payload, name, shebang)

    assert offset % ALIGNMENT == 0 and offset > 0
    raw = archive.read_bytes()
    assert raw.startswith(f"#!{shebang}\n".encode())
    assert raw[offset:offset + len(data)] == data  # the bytes sit in the file as they are: mappable
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        info = zf.getinfo(name)
        assert info.compress_type == zipfile.ZIP_STORED and info.extra == b""  # no padding in the directory
        assert zf.read(name) == data
        assert zf.getinfo("site-packages/x/run.sh").external_attr >> 16 & 0o777 == 0o755
        assert zf.getinfo("__main__.py").external_attr >> 16 & 0o777 == 0o644


@pytest.mark.parametrize("gap", range(8))  # the room the second header leaves before a 64 KiB boundary
def test_several_aligned_entries_each_land_on_a_boundary_even_with_too_little_room_for_padding(tmp_path, gap):
    """After the first model the room left is anything: 1 to 5 bytes is too short for a padding record, so an
    empty entry goes first and the second model's header lands past the next boundary."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes((bytes(range(256)) * 768)[:3 * ALIGNMENT - 30 - len("b.gguf") - gap])  # then: header, gap
    second.write_bytes(b"second model" * 1000)
    archive = tmp_path / "a.pyz"
    with ArchiveWriter(archive, "/usr/bin/env python3", DATE) as w:
        offsets = [w.add_aligned("a.gguf", first), w.add_aligned("b.gguf", second)]
        w.add_bytes("__main__.py", b"print('hi')\n")
    raw = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        for offset, name, payload in zip(offsets, ("a.gguf", "b.gguf"), (first, second), strict=True):
            assert offset % ALIGNMENT == 0 and raw[offset:offset + payload.stat().st_size] == payload.read_bytes()
            assert zf.read(name) == payload.read_bytes()
    assert offsets[1] == offsets[0] + (4 if 0 < gap < 6 else 3) * ALIGNMENT
    assert names == ["a.gguf", *(["b.gguf.padding"] if 0 < gap < 6 else []), "b.gguf", "__main__.py"]


def test_same_inputs_give_the_same_bytes(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"weights" * 5000)
    write(tmp_path / "a.pyz", payload, "m.gguf")
    write(tmp_path / "b.pyz", payload, "m.gguf")
    assert (tmp_path / "a.pyz").read_bytes() == (tmp_path / "b.pyz").read_bytes()


def test_padding_records_have_the_exact_length_or_are_refused():
    assert padding_record(0, ALIGNMENT) == b""
    for n in (6, 7, 4096, 0xFFFF):
        record = padding_record(n, ALIGNMENT)
        assert len(record) == n and record[:2] == b"\x35\xd9"
    for n in (1, 5, 0x10000):
        with pytest.raises(ValueError, match="cannot pad"):
            padding_record(n, ALIGNMENT)
