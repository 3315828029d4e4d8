"""What an archive's Python side holds for each of its targets, and how it is stored: each distinct file once.

Every target gets a site-packages/ tree (`gather`): its wheels, our staged `llamapyz/` and `webui/`, bytecode
when the target runs the building Python's version, and the precompiled kernels when it is the target the
building machine runs. `split` stores them once each:

    site-packages/PATH       a file every target has, with the same bytes and mode (pure packages, our code)
    blobs/SHA256             any other file's bytes, once however many targets have them (content-addressed:
                             llguidance's abi3 library serves every Python version of one platform)
    targets/NAME.json        {"files": [[PATH, ENTRY, MODE], ...]}: a target's own files, each copied from
                             ENTRY (its blob, or a common file with the same bytes)

A single-target archive has everything under site-packages/ (shiv's own layout) and an empty list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import bytecode

COMMON = "site-packages/"
BLOBS = "blobs/"
INDEXES = "targets/"
CHUNK = 8 << 20


@dataclass(frozen=True)
class File:
    path: str  # relative to site-packages/, with forward slashes
    mode: int
    sha256: str
    size: int
    source: Path | bytes  # a file is read when the archive is written; bytecode is made in memory

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclass
class Layout:
    common: list[File]
    blobs: dict[str, File]  # sha256 -> a file with those bytes
    indexes: dict[str, list[tuple[str, str, int]]]  # target -> (path, archive entry, mode) of its own files
    sizes: dict[str, int] = field(default_factory=dict)  # target -> bytes of all its files, shared or not

    def index_json(self, target: str) -> bytes:
        return json.dumps({"files": self.indexes[target]}, separators=(",", ":")).encode()

    def entries(self) -> Iterable[tuple[str, File]]:
        """(archive name, file) of everything the Python side stores, in archive-name order."""
        named = [(COMMON + f.path, f) for f in self.common] + [(BLOBS + sha, f) for sha, f in self.blobs.items()]
        return sorted(named, key=lambda item: item[0])

    def entry_names(self) -> dict[str, dict[str, str]]:
        """Per target, each file of its site-packages/ -> the archive entry holding its bytes."""
        common = {f.path: COMMON + f.path for f in self.common}
        return {target: {**common, **{path: entry for path, entry, _ in own}} for target, own in self.indexes.items()}

    @property
    def stored(self) -> int:
        return sum(f.size for f in self.common) + sum(f.size for f in self.blobs.values())

    @property
    def without_dedupe(self) -> int:
        """Bytes if each target carried its own full copy."""
        return sum(self.sizes.values())

    def build_id(self) -> str:
        """Names and contents of everything extracted: it keys the user's extraction cache (shiv's build id)."""
        digest = hashlib.sha256()
        for f in self.common:
            digest.update(f"{f.path}\0{f.sha256}\0{f.mode}\n".encode())
        for name in sorted(self.indexes):
            digest.update(name.encode() + b"\0" + self.index_json(name))
        return digest.hexdigest()


class Hasher:
    """sha256 and size of files, each read once however many targets share it, and their bytecode, compiled
    once per path and contents (numba's modules are the same in every target of the building Python)."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[str, int]] = {}
        self._bytecode: dict[tuple[str, str], File | None] = {}

    def file(self, relative: str, path: Path) -> File:
        if path not in self._known:
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
                    size += len(block)
            self._known[path] = (digest.hexdigest(), size)
        sha, size = self._known[path]
        return File(relative, 0o755 if path.stat().st_mode & 0o111 else 0o644, sha, size, path)

    def bytecode(self, source: File) -> File | None:
        """The checked-hash .pyc beside a module, or None when this Python cannot compile it."""
        key = (source.path, source.sha256)
        if key not in self._bytecode:
            pyc = bytecode.compile_source(COMMON + source.path, source.read())
            pyc_path = bytecode.pyc_name(COMMON + source.path).removeprefix(COMMON)
            self._bytecode[key] = None if pyc is None else data_file(pyc_path, pyc)
        return self._bytecode[key]


def data_file(relative: str, data: bytes, mode: int = 0o644) -> File:
    return File(relative, mode, hashlib.sha256(data).hexdigest(), len(data), data)


class Root(NamedTuple):
    """A folder whose files go under `prefix` in site-packages/, less those `skip` refuses (given each one's path
    relative to `folder`)."""

    folder: Path
    prefix: str
    skip: Callable[[Path], bool]


def gather(roots: list[Root], with_bytecode: bool, hasher: Hasher) -> dict[str, File]:
    """The files of one target's site-packages/: each of `roots` put under its prefix, less what its `skip`
    refuses; with bytecode beside every module when `with_bytecode`."""
    files: dict[str, File] = {}
    for root, prefix, skip in roots:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if not path.is_file() or skip(relative):
                continue
            name = prefix + relative.as_posix()
            files[name] = hasher.file(name, path)
            if with_bytecode and path.suffix == ".py" and (pyc := hasher.bytecode(files[name])) is not None:
                files[pyc.path] = pyc
    return files


def split(targets: dict[str, dict[str, File]]) -> Layout:
    """Store each distinct file once: common paths under site-packages/, the rest as blobs."""
    first, *others = targets.values()
    same = {path for path, f in first.items()
            if all(path in other and (other[path].sha256, other[path].mode) == (f.sha256, f.mode) for other in others)}
    common = sorted((first[path] for path in same), key=lambda f: f.path)
    in_common = {f.sha256: COMMON + f.path for f in common}
    blobs: dict[str, File] = {}
    indexes: dict[str, list[tuple[str, str, int]]] = {}
    for name, tree in sorted(targets.items()):
        own = [tree[path] for path in sorted(tree) if path not in same]
        for f in own:
            if f.sha256 not in in_common:
                blobs.setdefault(f.sha256, f)
        indexes[name] = [(f.path, in_common.get(f.sha256, BLOBS + f.sha256), f.mode) for f in own]
    sizes = {name: sum(f.size for f in tree.values()) for name, tree in targets.items()}
    return Layout(common, dict(sorted(blobs.items())), indexes, sizes)
