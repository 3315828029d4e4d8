"""The writer behind `.pyz` archives: a shebang line, the weights, then a zip whose entries are reproducible.

    #!/usr/bin/env python3
    (zeros)         up to the next multiple of 64 KiB
    model.gguf      its bytes as they are: memory-mapped in place (mmap offsets must be multiples of the page
                    size; 64 KiB covers every page size in use, like llamafile's zipalign)
    (zeros)         each further model likewise, at the next multiple of 64 KiB
    zip             every other file, then the zip's directory and end record

The weights come before the zip, not inside it, so that an archive of any size starts on every CPython it
targets. zipimport, which runs a `.pyz`, reads ZIP64 records only from CPython 3.13 on, and zipfile writes
them as soon as an offset passes 2 GiB (`zipfile.ZIP64_LIMIT`): with a large model as a zip member, 3.11 and
3.12 saw no `__main__.py`. Every zipimport accepts data in front of a zip (it takes the difference between
where the directory is and where the end record says it is: how the shebang line always worked), so with the
weights in front the zip's offsets count from the zip's own start and stay those of the small files after
them, however large the weights. The manifest says where each model starts (`llamapyz/archive/launcher.py`).

`allow_zip64=False` (the builder's choice when a target is older than 3.13) turns what would need a ZIP64
record into zipfile's `LargeZipFile`: over 65,535 entries, or a zip over 2 GiB of its own.

The bytes are a function of the inputs only: every entry gets the same timestamp and explicit permissions,
and callers add entries in a fixed order.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from stat import S_IFREG
from typing import BinaryIO

ALIGNMENT = 1 << 16  # where each model's bytes start: multiples of 64 KiB
COPY_CHUNK = 8 << 20
ZEROS = bytes(COPY_CHUNK)

Progress = Callable[[int, int], None]  # (bytes copied, total bytes)


class ArchiveWriter:
    """`with ArchiveWriter(path, shebang, date_time) as w: w.add_weights(...); w.add_bytes(...)`: the weights
    first, then the zip's entries (the first entry starts the zip)."""

    def __init__(self, path: Path, shebang: str, date_time: tuple[int, int, int, int, int, int],
                 allow_zip64: bool = True) -> None:
        self.path = path
        self.date_time = date_time
        self.allow_zip64 = allow_zip64
        self.zip_start: int | None = None  # file offset of the zip's first entry, once there is one
        self._file = open(path, "wb")
        self._file.write(f"#!{shebang}\n".encode())
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # A half-written archive, which the caller removes: closed, and the error that stopped it the one raised.
        with contextlib.suppress(zipfile.LargeZipFile, OSError, ValueError):
            self.close()

    def close(self) -> None:
        try:
            self._entries().close()
        finally:
            self._file.close()

    @property
    def n_entries(self) -> int:
        return len(self._zip.infolist()) if self._zip else 0

    def _entries(self) -> zipfile.ZipFile:
        """The zip, started where the file now ends: its offsets count from there (`_FromOffset`)."""
        if self._zip is None:
            self.zip_start = self._file.tell()
            self._zip = zipfile.ZipFile(_FromOffset(self._file, self.zip_start), "w",  # type: ignore[arg-type]
                                        compression=zipfile.ZIP_DEFLATED, allowZip64=self.allow_zip64)
        return self._zip

    def _info(self, name: str, mode: int, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = (S_IFREG | mode) << 16  # shiv's bootstrap restores these permissions
        info.create_system = 3  # Unix, wherever the archive is built
        return info

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, compress: bool = True) -> None:
        self._entries().writestr(self._info(name, mode, compress), data)

    def add_file(self, name: str, path: Path, compress: bool = True) -> None:
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        self.add_bytes(name, path.read_bytes(), mode, compress)

    def add_weights(self, path: Path, progress: Progress | None = None) -> int:
        """Copy `path` in before the zip, its first byte at a multiple of ALIGNMENT; returns that file offset.
        Chunks of zeros are skipped, not written: where the file system has holes, a sparse file stays sparse."""
        if self._zip is not None:
            raise RuntimeError(f"{path.name}: the weights go before the zip's first entry")
        offset = self._file.tell() + -self._file.tell() % ALIGNMENT
        self._file.seek(offset)  # the gap reads as zeros
        size, copied = path.stat().st_size, 0
        with open(path, "rb") as src:
            while chunk := src.read(COPY_CHUNK):
                if chunk == (ZEROS if len(chunk) == COPY_CHUNK else bytes(len(chunk))):
                    self._file.seek(len(chunk), os.SEEK_CUR)
                else:
                    self._file.write(chunk)
                copied += len(chunk)
                if progress:
                    progress(copied, size)
        if copied != size:
            raise OSError(f"{path}: {copied} bytes read, {size} expected (did it change while it was copied?)")
        self._file.truncate(offset + size)  # a hole at the end belongs to the file too
        self._file.seek(offset + size)
        return offset


class _FromOffset:
    """A file as zipfile writes it, seen from `start` on: the zip's offsets count from its own first entry,
    not from the file's first byte (zipfile counts from byte 0 and would put the weights' size in them)."""

    def __init__(self, file: BinaryIO, start: int) -> None:
        self._file, self._start = file, start

    def tell(self) -> int:
        return self._file.tell() - self._start

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset + self._start if whence == os.SEEK_SET else offset, whence) - self._start

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()


def make_executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | 0o111)


def copy_progress(say: Callable[[str], None], label: str, step_bytes: int = 64 << 20) -> Progress:
    """A progress callback printing `label: copied/total MiB` every `step_bytes` and at the end."""
    last = [0]

    def progress(copied: int, total: int) -> None:
        if copied - last[0] >= step_bytes or copied == total:
            last[0] = copied
            say(f"  {label}: {copied / 2**20:.0f}/{total / 2**20:.0f} MiB")

    return progress
