from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from bundler.archive import ALIGNMENT, ArchiveWriter, padding_record

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
        with pytest.raises(ValueError, match="aligned entry first"):
            padding_record(n, ALIGNMENT)
