"""Where numba keeps our compiled kernels, and when an entry is stale.

numba's in-tree cache (`__pycache__/` beside each source) stamps an entry with a hash of the function's
own file, so an edit to a function it calls from another file (simd.py's intrinsics, dequant.py's
helpers) would leave stale machine code in use. Our kernels are one package, so our stamp is the hash of
all of its sources. Entries stay where numba puts them, keyed by its target (CPU name and features), which
is what lets the bundler ship them: nothing in a key or stamp depends on paths or file times.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import config
from numba.core.caching import InTreeCacheLocator

PACKAGE = Path(__file__).resolve().parent
FORMAT_TABLE = PACKAGE.parent / "gguf" / "quants.py"  # the block layouts every kernel's strides come from
FORMAT_DATA = (FORMAT_TABLE, PACKAGE.parent / "gguf" / "iq_grids.py")  # and the IQ grids they compile in
NUMBA_LOCATORS = "UserProvidedCacheLocator,InTreeCacheLocator,UserWideCacheLocator,IPythonCacheLocator,ZipCacheLocator"


@functools.cache
def package_stamp(package: Path = PACKAGE) -> str:
    """The hash of every source of a package (this one: the CPU kernels; llamapyz/gpu's too) and of the format
    table and grids, which the kernels compile in (strides, type ids, constants)."""
    digest = hashlib.sha256()
    for path in [*sorted(package.glob("*.py")), *FORMAT_DATA]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_folder(package: Path = PACKAGE, name: str = "llamapyz-kernels") -> Path:
    """`__pycache__/` beside the kernels, or `NAME/` in $NUMBA_CACHE_DIR when that is set."""
    return Path(config.CACHE_DIR, name) if config.CACHE_DIR else package / "__pycache__"


class PackageStamped:
    """A numba locator (mixed into an in-tree one) for the files of one package: stamped by the whole
    package's sources, its entries in `cache_folder(package, folder)`. `kernels` says which package."""

    package: Path = PACKAGE
    folder = "llamapyz-kernels"

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = str(self.folder_path())

    @classmethod
    def folder_path(cls) -> Path:
        return cache_folder(cls.package, cls.folder)

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != cls.package:
            return None
        return super().from_function(py_func, py_file)  # None if the folder is not writable: numba's choice

    def get_source_stamp(self):
        return package_stamp(self.package)


class KernelCacheLocator(PackageStamped, InTreeCacheLocator):
    """numba's in-tree locator for the CPU kernels."""


def install() -> None:
    """Put our locator first; numba's own keep serving every other function (read per dispatcher)."""
    ours = f"{__name__}.{KernelCacheLocator.__name__}"
    if not config.CACHE_LOCATOR_CLASSES.startswith(ours):
        value = ",".join([ours, config.CACHE_LOCATOR_CLASSES or NUMBA_LOCATORS])
        os.environ["NUMBA_CACHE_LOCATOR_CLASSES"] = config.CACHE_LOCATOR_CLASSES = value  # numba re-reads both


def _marker(target_name: str, formats: list[str]) -> Path:
    key = hashlib.sha256(f"{target_name}|{package_stamp()}|{','.join(sorted(formats))}".encode()).hexdigest()
    return cache_folder() / f"warm-{target_name}-{key[:16]}"


def is_warm(target_name: str, formats: list[str]) -> bool:
    """Whether the kernels for these weight formats were compiled for this target and sources before (here,
    or by the bundler): then loading them takes a fraction of a second."""
    return _marker(target_name, formats).exists()


def mark_warm(target_name: str, formats: list[str]) -> None:
    try:
        path = _marker(target_name, formats)
        path.parent.mkdir(exist_ok=True)
        path.touch()
    except OSError:  # a read-only install: numba caches elsewhere (or not at all), we just say it again
        pass
