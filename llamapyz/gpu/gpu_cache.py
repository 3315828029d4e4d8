"""Where numba-cuda keeps our compiled GPU kernels, and when an entry is stale: as `kernels/cache.py` does for
the CPU kernels. numba-cuda stamps an entry with its own file's time and size and keys it by the kernel's
bytecode, so an edit to a device function in another file (`formats.py`'s block dots) would leave stale code
in use; our stamp is the hash of every source of this package and of `kernels/scalar.py` (the math both
compile). Entries go to `__pycache__/` beside the kernels (the unpacked archive's, per user), or
`llamapyz-gpu-kernels/` in $NUMBA_CACHE_DIR when that is set, one per kernel, argument types and GPU
architecture: the first use on a machine compiles (NVVM, then the driver), later processes load."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..kernels import kernel_cache as cpu_cache

PACKAGE = Path(__file__).resolve().parent
SHARED_MATH = PACKAGE.parent / "kernels" / "scalar.py"  # device functions compiled from the CPU kernels' sources


def cache_folder() -> Path:
    return cpu_cache.cache_folder(PACKAGE, "llamapyz-gpu-kernels")


def install() -> None:
    """Put our locator first for CUDA kernels (numba-cuda reads the list when a cached kernel is defined)."""
    try:  # numba-cuda's own internals: another version may lack them, and then caches its own way
        from numba.cuda.core.caching import _InTreeCacheLocator
        from numba.cuda.dispatcher import CUDACacheImpl
    except ImportError:
        return

    class GpuKernelLocator(cpu_cache.PackageStamped, _InTreeCacheLocator):
        """numba-cuda's in-tree locator for this package's kernels."""

        package = PACKAGE

        @classmethod
        def folder_path(cls) -> Path:
            return cache_folder()  # looked up when a kernel is defined: bench_gpu.py points it elsewhere

        def get_source_stamp(self):  # and the scalar math the kernels compile in from the CPU kernels' package
            return cpu_cache.package_stamp(PACKAGE) + hashlib.sha256(SHARED_MATH.read_bytes()).hexdigest()

    if not any(c.__name__ == GpuKernelLocator.__name__ for c in CUDACacheImpl._locator_classes):
        CUDACacheImpl._locator_classes = [GpuKernelLocator, *CUDACacheImpl._locator_classes]
