"""The zip writer behind `.pyz` archives: a shebang line, then a zip whose entries are reproducible.

Two things the stdlib's `zipapp` cannot do:
- store entries (the GGUFs) uncompressed with their data at aligned file offsets, so the runtime can
  memory-map them in place (mmap offsets must be multiples of the page size; 64 KiB covers every page size
  in use, like llamafile's zipalign). The alignment is bought with a padding record in each entry's local
  extra field; where the room needed is too short for a record (1 to 5 bytes), an empty entry written
  first moves the header along;
- make the bytes a function of the inputs only: every entry gets the same timestamp and explicit
  permissions, and callers add entries in a fixed order.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from stat import S_IFREG

ALIGNMENT = 1 << 16  # data offsets of the aligned entries: multiples of 64 KiB
PADDING_ID = 0xD935  # the extra-field id Android's zipalign uses for alignment padding
LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header
ZIP64_EXTRA_SIZE = 4 + 16  # zipfile adds this record to the local header of zip64 entries
MIN_PADDING = 4 + 2  # the shortest padding record: id and size, then the alignment
COPY_CHUNK = 8 << 20

Progress = Callable[[int, int], None]  # (bytes copied, total bytes)


class ArchiveWriter:
    """`with ArchiveWriter(path, shebang, date_time) as w: w.add_aligned(...); w.add_bytes(...)`."""

    def __init__(self, path: Path, shebang: str, date_time: tuple[int, int, int, int, int, int]) -> None:
        self.path = path
        self.date_time = date_time
        self._file = open(path, "wb")
        self._file.write(f"#!{shebang}\n".encode())
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    @property
    def n_entries(self) -> int:
        return len(self._zip.infolist())

    def _info(self, name: str, mode: int, compress: bool) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self.date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = (S_IFREG | mode) << 16  # shiv's bootstrap restores these permissions
        info.create_system = 3  # Unix, wherever the archive is built
        return info

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, compress: bool = True) -> None:
        self._zip.writestr(self._info(name, mode, compress), data)

    def add_file(self, name: str, path: Path, compress: bool = True) -> None:
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        self.add_bytes(name, path.read_bytes(), mode, compress)

    def add_aligned(self, name: str, path: Path, alignment: int = ALIGNMENT,
                    progress: Progress | None = None) -> int:
        """Store `path` uncompressed with its data at a multiple of `alignment`; returns that file offset."""
        size = path.stat().st_size
        info = self._info(name, 0o644, compress=False)
        info.file_size = size
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for reserving a zip64 record
        header = LOCAL_HEADER_SIZE + len(name.encode()) + (ZIP64_EXTRA_SIZE if zip64 else 0)
        gap = (-(self._file.tell() + header)) % alignment
        if 0 < gap < MIN_PADDING:  # no record is that short: an empty entry moves the header past the next boundary
            self.add_bytes(f"{name}.padding", b"", compress=False)
            gap = (-(self._file.tell() + header)) % alignment
        info.extra = padding_record(gap, alignment)
        with open(path, "rb") as src, self._zip.open(info, "w", force_zip64=zip64) as dst:
            data_offset = self._file.tell()
            copied = 0
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)
                copied += len(chunk)
                if progress:
                    progress(copied, size)
        # The padding only matters in the local header; keep it out of the central directory.
        info.extra = b""
        if data_offset % alignment:
            raise AssertionError(f"{name}: data landed at {data_offset}, not a multiple of {alignment}")
        return data_offset


def padding_record(n_bytes: int, alignment: int) -> bytes:
    """An extra-field record of exactly `n_bytes` (0, or 6 up to 65535): id, size, alignment, zeros."""
    if n_bytes == 0:
        return b""
    if not MIN_PADDING <= n_bytes <= 0xFFFF:
        # A record needs its 4-byte header plus the 2-byte alignment field, and an extra field is capped
        # at 64 KiB: add_aligned asks for neither (it pads by less than 64 KiB, or adds an entry first).
        raise ValueError(f"cannot pad a zip entry by {n_bytes} bytes")
    return struct.pack("<HHH", PADDING_ID, n_bytes - 4, min(alignment, 0xFFFF)) + bytes(n_bytes - 6)


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

