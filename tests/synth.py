"""Small GGUF files for tests: well-formed ones through the `gguf` package's writer (an independent
implementation), and hand-assembled bytes for the malformed files the writer refuses to produce."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from runtime.quants import FORMATS_BY_NAME

# --- well-formed files through gguf.GGUFWriter ------------------------------------------------------------

METADATA: dict[str, tuple[str, Any]] = {
    "test.u8": ("uint8", 200),
    "test.i8": ("int8", -100),
    "test.u16": ("uint16", 60000),
    "test.i16": ("int16", -30000),
    "test.u32": ("uint32", 4_000_000_000),
    "test.i32": ("int32", -2_000_000_000),
    "test.u64": ("uint64", 2**63 + 5),
    "test.i64": ("int64", -(2**62)),
    "test.f32": ("float32", 0.5),
    "test.f64": ("float64", 1e300),
    "test.bool": ("bool", True),
    "test.string": ("string", "héllo ✓ 🦙"),
    "test.ints": ("array", [1, 2, 3, -4]),
    "test.floats": ("array", [0.25, -1.5]),
    "test.strings": ("array", ["a", "", "日本", "<|im_end|>"]),
    "test.nested": ("array", [[1, 2], [3], [4, 5, 6]]),
}


def random_blocks(type_name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random raw blocks of a format, with finite random float16 scales, as a uint8 array."""
    fmt = FORMATS_BY_NAME[type_name]
    raw = rng.integers(0, 256, size=n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    for name in fmt.block_dtype.names:
        if fmt.block_dtype[name].base == np.float16:
            blocks[name] = rng.uniform(-2, 2, size=blocks[name].shape).astype(np.float16)
        elif fmt.block_dtype[name].base in (np.float32, np.float64):
            blocks[name] = rng.uniform(-2, 2, size=blocks[name].shape)
        elif type_name == "BF16":
            blocks[name] = (rng.uniform(-2, 2, size=n_blocks).astype(np.float32).view(np.uint32) >> 16)
    return raw


def write_gguf(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]] | None = None,
               metadata: dict[str, tuple[str, Any]] | None = None, arch: str = "llama",
               seed: int = 0) -> dict[str, np.ndarray]:
    """Write a GGUF with `metadata` and random tensors {name: (type, numpy shape)}; returns their raw bytes."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in (METADATA if metadata is None else metadata).items():
        getattr(writer, f"add_{kind}")(key, value)
    written: dict[str, np.ndarray] = {}
    for name, (type_name, shape) in (tensors or {}).items():
        fmt = FORMATS_BY_NAME[type_name]
        n_blocks = int(np.prod(shape)) // fmt.block_size
        raw = random_blocks(type_name, n_blocks, rng).reshape(*shape[:-1], -1)
        written[name] = raw
        writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


SMALL_TENSORS = {
    "f32": ("F32", (3, 8)),
    "f16": ("F16", (2, 16)),
    "q4_0": ("Q4_0", (2, 64)),
    "q4_k": ("Q4_K", (2, 256)),
}

# --- hand-assembled bytes ---------------------------------------------------------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def tensor_info(name: str, ne: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<IQ", type_id, offset)


def gguf_bytes(kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3,
               magic: bytes = b"GGUF", alignment: int = 32, n_kv: int | None = None,
               n_tensors: int | None = None) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % alignment
    return body + b"\0" * pad + data
