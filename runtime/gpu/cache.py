"""Where numba-cuda keeps our compiled GPU kernels, and when an entry is stale: as `kernels/cache.py` does for
the CPU kernels. numba-cuda stamps an entry with its own file's time and size and keys it by the kernel's
bytecode, so an edit to a device function in another file (`formats.py`'s block dots) would leave stale code
in use; our stamp is the hash of every source of this package. Entries go to `__pycache__/` beside the
kernels (the unpacked archive's, per user), or `llamapyz-gpu-kernels/` in $NUMBA_CACHE_DIR when that is set,
one per kernel, argument types and GPU architecture: the first use on a machine compiles (NVVM, then the
driver), later processes load."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import config

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def package_stamp() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_folder() -> Path:
    return Path(config.CACHE_DIR, "llamapyz-gpu-kernels") if config.CACHE_DIR else PACKAGE / "__pycache__"


def install() -> None:
    """Put our locator first for CUDA kernels (numba-cuda reads the list when a cached kernel is defined)."""
    from numba.cuda.core.caching import _InTreeCacheLocator
    from numba.cuda.dispatcher import CUDACacheImpl

    class GpuKernelLocator(_InTreeCacheLocator):
        """numba-cuda's in-tree locator for this package's files, stamped by the package's sources."""

        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = str(cache_folder())

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != PACKAGE:
                return None
            return super().from_function(py_func, py_file)  # None if the folder is not writable

        def get_source_stamp(self):
            return package_stamp()

    if not any(c.__name__ == GpuKernelLocator.__name__ for c in CUDACacheImpl._locator_classes):
        CUDACacheImpl._locator_classes = [GpuKernelLocator, *CUDACacheImpl._locator_classes]
