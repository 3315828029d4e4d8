from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llamapyz.bundler.zipapp import ALIGNMENT, ArchiveWriter

DATE = (2024, 1, 2, 3, 4, 6)
MAIN = b"import sys, zipfile\nprint(sorted(zipfile.ZipFile(sys.argv[0]).namelist()))\n"


def write(path: Path, payloads: list[Path], shebang: str = "/usr/bin/env python3", **options) -> list[int]:
    with ArchiveWriter(path, shebang, DATE, **options) as w:
        offsets = [w.add_weights(payload) for payload in payloads]
        w.add_bytes("__main__.py", MAIN)
        w.add_bytes("site-packages/x/run.sh", b"#!/bin/sh\n", mode=0o755)
    return offsets


@pytest.mark.parametrize("size", [1, 1000, ALIGNMENT - 1, ALIGNMENT, 3 * ALIGNMENT + 5])
@pytest.mark.parametrize("shebang", ["/usr/bin/env python3", "/opt/some/very/long/path/to/python3.11"])
def test_the_weights_land_on_64k_boundaries_before_the_zip_which_reads_back(tmp_path, size, shebang):
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes((bytes(range(256)) * (size // 256 + 1))[:size])
    second.write_bytes(b"second model" * 1000)
    archive = tmp_path / "a.pyz"
    offsets = write(archive, [first, second], shebang)

    raw = archive.read_bytes()
    assert raw.startswith(f"#!{shebang}\n".encode())
    assert offsets[0] == ALIGNMENT and offsets[1] == ALIGNMENT * (1 + -(-size // ALIGNMENT))
    for offset, payload in zip(offsets, (first, second), strict=True):
        assert raw[offset:offset + payload.stat().st_size] == payload.read_bytes()  # as they are: mappable
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None and zf.namelist() == ["__main__.py", "site-packages/x/run.sh"]
        assert zf.infolist()[0].header_offset == offsets[1] + second.stat().st_size  # right after the weights
        assert zf.getinfo("site-packages/x/run.sh").external_attr >> 16 & 0o777 == 0o755
        assert zf.getinfo("__main__.py").external_attr >> 16 & 0o777 == 0o644
    result = subprocess.run([sys.executable, str(archive)], capture_output=True, text=True, timeout=60)
    assert result.stdout == "['__main__.py', 'site-packages/x/run.sh']\n", result.stderr  # zipimport finds it


def test_zeros_are_skipped_so_a_sparse_model_stays_sparse(tmp_path):
    payload = tmp_path / "sparse.bin"
    with open(payload, "wb") as f:
        f.write(b"GGUF")
        f.truncate(64 << 20)  # a hole, then one more byte at the end
        f.seek(0, os.SEEK_END)
        f.write(b"!")
    archive = tmp_path / "a.pyz"
    (offset,) = write(archive, [payload])
    raw = archive.read_bytes()
    assert raw[offset:offset + payload.stat().st_size] == payload.read_bytes()
    assert archive.stat().st_blocks * 512 < 16 << 20  # the 64 MiB of zeros were not written
    with zipfile.ZipFile(archive) as zf:
        assert zf.read("__main__.py") == MAIN

    ends_in_zeros = tmp_path / "tail.bin"
    ends_in_zeros.write_bytes(b"GGUF" + bytes(20 << 20))
    (offset,) = write(tmp_path / "b.pyz", [ends_in_zeros])
    assert (tmp_path / "b.pyz").read_bytes()[offset:offset + (20 << 20) + 4] == ends_in_zeros.read_bytes()


def test_same_inputs_give_the_same_bytes(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"weights" * 5000)
    write(tmp_path / "a.pyz", [payload])
    write(tmp_path / "b.pyz", [payload])
    assert (tmp_path / "a.pyz").read_bytes() == (tmp_path / "b.pyz").read_bytes()


def test_the_weights_cannot_follow_an_entry(tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"w")
    with ArchiveWriter(tmp_path / "a.pyz", "/usr/bin/env python3", DATE) as w:
        w.add_bytes("__main__.py", MAIN)
        with pytest.raises(RuntimeError, match="before the zip's first entry"):
            w.add_weights(payload)


def test_without_zip64_a_zip_that_would_need_it_is_refused(tmp_path, monkeypatch):
    """What zipimport before CPython 3.13 cannot read: zipfile's own rule for writing ZIP64 records (here its
    2 GiB limit lowered to 1 MiB, so that the test writes little), whatever the weights before the zip weigh."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1 << 20)
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(3 << 20))  # more than the limit, before the zip: fine
    with ArchiveWriter(tmp_path / "ok.pyz", "/usr/bin/env python3", DATE, allow_zip64=False) as w:
        w.add_weights(big)
        w.add_bytes("__main__.py", MAIN)
    with zipfile.ZipFile(tmp_path / "ok.pyz") as zf:
        assert zf.read("__main__.py") == MAIN
    with pytest.raises(zipfile.LargeZipFile):  # more than the limit inside the zip: refused
        with ArchiveWriter(tmp_path / "no.pyz", "/usr/bin/env python3", DATE, allow_zip64=False) as w:
            w.add_bytes("__main__.py", MAIN)
            w.add_bytes("big.bin", os.urandom(3 << 20), compress=False)
            w.add_bytes("after.py", b"")
