"""GGUF reader: metadata and zero-copy tensor views over one read-only mmap.

A GGUF file (v2 or v3, little-endian) is a header, `n_kv` metadata key/value pairs, `n_tensors` tensor
infos, padding up to `general.alignment`, then the tensor data. The file may also live inside a larger one
(the weights inside a `.pyz`): `load_gguf((path, offset, length))` maps just that byte range.

Everything read from the file is checked before it is trusted: counts and lengths against the bytes that
remain, tensor shapes against the quant table, tensor data against the data section's bounds and
alignment. A corrupt file raises `GGUFError` naming the offset, key or tensor; it never causes a huge
allocation, a hang or an out-of-bounds view that would crash a kernel later.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GGUFError
from .quants import QuantFormat, dequantize, format_of

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 8

# metadata value types: id -> (name, struct format or None)
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
    4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
    10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d"),
}
_NUMPY_OF_SCALAR = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1",
                    10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9

Source = str | os.PathLike | tuple[str | os.PathLike, int, int]


@dataclass(frozen=True)
class Tensor:
    """One tensor: `ne` in ggml order (fastest dimension first), `shape` in numpy order (reversed)."""

    name: str
    ne: tuple[int, ...]
    format: QuantFormat
    offset: int  # from the start of the data section
    n_bytes: int
    raw: np.ndarray  # uint8 view into the mmap, (n_rows, row_bytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def type_name(self) -> str:
        return self.format.name

    def blocks(self) -> np.ndarray:
        """The tensor as a structured array of blocks, (n_rows, blocks_per_row), zero copy."""
        return self.raw.view(self.format.block_dtype)

    def dequantize(self) -> np.ndarray:
        """The whole tensor decoded to float32 of numpy shape. Copies: for tests and small tensors."""
        return dequantize(self.raw, self.format, self.shape, tensor=self.name)


class _Cursor:
    """Reads little-endian values from a buffer, checking every read against its end."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise GGUFError(f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                            f"only {self.remaining} remain")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack_from(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)

    def string(self, what: str) -> str:
        start = self.pos
        length = self.u64(f"length of {what}")
        if length > self.remaining:
            raise GGUFError(f"{what} at offset {start} claims {length} bytes, only {self.remaining} remain")
        data = bytes(self.take(length, what))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # keep the bytes recoverable (tokens may be partial UTF-8): s.encode("utf-8", "surrogateescape")
            return data.decode("utf-8", "surrogateescape")


class GGUFFile:
    """An opened GGUF file. Use as a context manager or call `close()`; tensor views die with it."""

    def __init__(self, source: Source) -> None:
        path, offset, length = _resolve_source(source)
        self.path = path
        self.offset = offset  # where the GGUF starts inside the file at `path`
        self._file = open(path, "rb")  # noqa: SIM115 - kept open for the life of the mapping
        try:
            self._mmap, self.buffer = _map_range(self._file, offset, length)
            self._parse()
        except GGUFError as exc:
            self.close()
            raise GGUFError(f"{path}: {exc}", hint=exc.hint) from None  # every message names the file, once
        except BaseException:
            self.close()
            raise

    # --- public --------------------------------------------------------------------------------------

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the mapping. Views handed out before keep it alive until they are dropped."""
        self.tensors = {}
        self.buffer = None
        mm, self._mmap = getattr(self, "_mmap", None), None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still reference it; it is unmapped when they go
        self._file.close()

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def tensor(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {_quoted(name)}") from None

    # --- parsing -------------------------------------------------------------------------------------

    def _parse(self) -> None:
        cur = _Cursor(memoryview(self.buffer))
        start = bytes(self.buffer[:len(GGUF_MAGIC)])
        if not GGUF_MAGIC.startswith(start):  # first: a README is not a "truncated or corrupt" GGUF (b"GG" may be)
            if start == b"FUGG":
                raise GGUFError("a big-endian GGUF file; only little-endian files are supported",
                                hint="convert it to a little-endian GGUF (llama.cpp's gguf tools)")
            raise GGUFError(f"not a GGUF file (it starts with {bytes(self.buffer[:16])!r}, a GGUF file with "
                            f"{GGUF_MAGIC!r})", hint="llamapyz runs GGUF model files: give the path of a .gguf file")
        cur.take(len(GGUF_MAGIC), "magic")
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"unsupported GGUF version {self.version} "
                            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # every key/value needs at least 8 (key length) + 4 (type) + 1 bytes, every tensor info 8 + 4 + 4 + 8
        if n_kv * 13 + n_tensors * 24 > cur.remaining:
            raise GGUFError(f"header claims {n_kv} metadata entries and {n_tensors} tensors but only "
                            f"{cur.remaining} bytes follow (truncated or corrupt)")

        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, str] = {}
        for _ in range(n_kv):
            at = cur.pos
            key = cur.string("metadata key")
            if key in self.metadata:
                raise GGUFError(f"duplicate metadata key {_quoted(key)} at offset {at}")
            value_type = cur.u32(f"type of {_quoted(key)}")
            self.value_types[key] = _type_name(value_type, cur)
            self.metadata[key] = _read_value(cur, value_type, key, depth=0)

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (not isinstance(self.alignment, int) or isinstance(self.alignment, bool) or self.alignment <= 0
                or self.alignment & (self.alignment - 1)):
            raise GGUFError(f"general.alignment must be a power of two, got {_quoted(self.alignment)}")

        infos = [_read_tensor_info(cur) for _ in range(n_tensors)]
        self.data_offset = _align(cur.pos, self.alignment)
        if not infos and self.data_offset > len(self.buffer):
            self.data_offset = len(self.buffer)  # no tensors, no data section (vocabulary-only files): as llama.cpp
        if self.data_offset > len(self.buffer):
            raise GGUFError(f"truncated file: tensor data would start at {self.data_offset}, "
                            f"file has {len(self.buffer)} bytes")
        self.tensors = self._check_tensors(infos)

    def _check_tensors(self, infos: list[tuple[str, tuple[int, ...], int, int]]) -> dict[str, Tensor]:
        data_size = len(self.buffer) - self.data_offset
        tensors: dict[str, Tensor] = {}
        for name, ne, type_id, offset in infos:
            if name in tensors:
                raise GGUFError(f"duplicate tensor name {_quoted(name)}")
            fmt = format_of(type_id, tensor=name)
            if ne[0] % fmt.block_size:
                raise GGUFError(f"tensor {_quoted(name)}: first dimension {ne[0]} is not a multiple of the "
                                f"{fmt.name} block size {fmt.block_size}")
            n_elements = int(np.prod(ne, dtype=object))
            n_bytes = fmt.n_bytes(n_elements)
            if offset % self.alignment:
                raise GGUFError(f"tensor {_quoted(name)}: data offset {offset} is not aligned to {self.alignment}")
            if offset + n_bytes > data_size:
                raise GGUFError(f"tensor {_quoted(name)}: {n_bytes} bytes at data offset {offset} run past the end "
                                f"of the file ({data_size} bytes of tensor data; truncated?)")
            start = self.data_offset + offset
            row_bytes = fmt.n_bytes(ne[0])
            raw = self.buffer[start:start + n_bytes].reshape(-1, row_bytes)
            tensors[name] = Tensor(name, ne, fmt, offset, n_bytes, raw)
        # shape and byte size must agree with the layout: no tensor may run into the next one
        ordered = sorted(tensors.values(), key=lambda t: t.offset)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.offset + a.n_bytes > b.offset:
                raise GGUFError(f"tensor {_quoted(a.name)} ({a.type_name} {list(a.ne)}, {a.n_bytes} bytes at data "
                                f"offset {a.offset}) overlaps tensor {_quoted(b.name)} at data offset {b.offset}")
        return tensors


def load_gguf(source: Source) -> GGUFFile:
    """Open a GGUF file: a path, or `(path, offset, length)` for one stored inside a larger file."""
    return GGUFFile(source)


# --- helpers ---------------------------------------------------------------------------------------


def _resolve_source(source: Source) -> tuple[Path, int, int | None]:
    if isinstance(source, tuple):
        if len(source) != 3:
            raise TypeError("a GGUF source is a path or a (path, offset, length) tuple")
        path, offset, length = source
        if offset < 0 or length <= 0:
            raise GGUFError(f"{path}: invalid byte range offset={offset} length={length}")
        return Path(path), int(offset), int(length)
    return Path(source), 0, None


def _map_range(file: Any, offset: int, length: int | None) -> tuple[mmap.mmap | None, np.ndarray]:
    """Map `length` bytes at `offset` read-only (mmap offsets must be page-granular)."""
    size = os.fstat(file.fileno()).st_size
    if length is None:
        length = size - offset
    if offset + length > size:
        raise GGUFError(f"byte range {offset}+{length} runs past the end of the file ({size} bytes)")
    if length == 0:
        raise GGUFError("empty file")
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(file.fileno(), length + offset - base, offset=base, access=mmap.ACCESS_READ)
    return mm, np.frombuffer(mm, dtype=np.uint8, count=length, offset=offset - base)


def _quoted(value: object, limit: int = 80) -> str:
    """A key, name or value as messages show it: its repr, cut to `limit` characters (a corrupt file's key may
    be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…({len(text) - limit} more characters)"


def _align(pos: int, alignment: int) -> int:
    return (pos + alignment - 1) // alignment * alignment


def _type_name(value_type: int, cur: _Cursor) -> str:
    """Name of a value type, for display: "UINT32", "ARRAY[STRING]" (peeking at the element type)."""
    if value_type in _SCALARS:
        return _SCALARS[value_type][0]
    if value_type == STRING:
        return "STRING"
    if value_type == ARRAY and cur.remaining >= 4:
        (elem_type,) = struct.unpack_from("<I", cur.buf, cur.pos)
        inner = "STRING" if elem_type == STRING else "ARRAY" if elem_type == ARRAY else \
            _SCALARS.get(elem_type, ("?",))[0]
        return f"ARRAY[{inner}]"
    return "?"  # _read_value raises the error with the offset


def _read_value(cur: _Cursor, value_type: int, key: str, depth: int) -> Any:
    if value_type in _SCALARS:
        value = cur.unpack(_SCALARS[value_type][1], f"value of {_quoted(key)}")
        return value
    if value_type == STRING:
        return cur.string(f"value of {_quoted(key)}")
    if value_type == ARRAY:
        return _read_array(cur, key, depth)
    raise GGUFError(f"{_quoted(key)}: unknown metadata value type {value_type} at offset {cur.pos - 4}")


def _read_array(cur: _Cursor, key: str, depth: int) -> Any:
    if depth >= MAX_ARRAY_DEPTH:
        raise GGUFError(f"{_quoted(key)}: arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {cur.pos}")
    at = cur.pos
    elem_type = cur.u32(f"element type of {_quoted(key)}")
    count = cur.u64(f"element count of {_quoted(key)}")
    if elem_type in _SCALARS:
        dtype = np.dtype(_NUMPY_OF_SCALAR[elem_type])
        if count * dtype.itemsize > cur.remaining:
            raise GGUFError(f"{_quoted(key)}: array of {count} elements at offset {at} runs past the end of the file")
        values = np.frombuffer(cur.take(count * dtype.itemsize, key), dtype=dtype)  # zero copy
        return values.astype(bool) if elem_type == 7 else values
    min_size = 8 if elem_type == STRING else 12 if elem_type == ARRAY else None
    if min_size is None:
        raise GGUFError(f"{_quoted(key)}: unknown array element type {elem_type} at offset {at}")
    if count * min_size > cur.remaining:
        raise GGUFError(f"{_quoted(key)}: array of {count} elements at offset {at} runs past the end of the file")
    if elem_type == STRING:
        return _read_string_array(cur, key, count)
    return [_read_array(cur, key, depth + 1) for _ in range(count)]


def _read_string_array(cur: _Cursor, key: str, count: int) -> list[str]:
    """Strings one after another (the token lists: hot at load time, so kept tight)."""
    buf, pos, end = cur.buf, cur.pos, len(cur.buf)
    unpack = struct.Struct("<Q").unpack_from
    out: list[str] = []
    append = out.append
    for i in range(count):
        if pos + 8 > end:
            raise GGUFError(f"truncated file: {_quoted(key)}[{i}] at offset {pos}")
        (n,) = unpack(buf, pos)
        pos += 8
        if n > end - pos:
            raise GGUFError(f"{_quoted(key)}[{i}] at offset {pos - 8} claims {n} bytes, only {end - pos} remain")
        data = bytes(buf[pos:pos + n])
        pos += n
        try:
            append(data.decode("utf-8"))
        except UnicodeDecodeError:
            append(data.decode("utf-8", "surrogateescape"))
    cur.pos = pos
    return out


def _read_tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    at = cur.pos
    name = cur.string("tensor name")
    n_dims = cur.u32(f"dimension count of tensor {_quoted(name)}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFError(f"tensor {_quoted(name)} at offset {at}: {n_dims} dimensions (1..{MAX_DIMS} allowed)")
    ne = tuple(cur.u64(f"dimension of tensor {_quoted(name)}") for _ in range(n_dims))
    if any(d == 0 for d in ne) or int(np.prod(ne, dtype=object)) >= 1 << 62:
        raise GGUFError(f"tensor {_quoted(name)} at offset {at}: invalid shape {list(ne)}")
    type_id = cur.u32(f"type of tensor {_quoted(name)}")
    offset = cur.u64(f"data offset of tensor {_quoted(name)}")
    return name, ne, type_id, offset
