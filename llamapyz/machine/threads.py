"""Thread count for the kernels (numba prange) and for BLAS (numpy's OpenBLAS), set together by `-t`."""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import numba
import numpy as np


def physical_cores() -> int:
    """Cores this process may run on, counting each physical core once (hyper-threads share one)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(cpu)
    return max(1, len(cores))


def set_threads(n: int) -> int:
    """Use n threads (clamped to 1..the most numba started with); returns the count in effect."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    _set_blas_threads(n)
    return n


def _set_blas_threads(n: int) -> None:
    """Tell numpy's bundled OpenBLAS (if that is what it uses) to use n threads."""
    libs_dir = Path(np.__file__).parent.parent / "numpy.libs"
    for lib in glob.glob(str(libs_dir / "*openblas*")):
        try:
            blas = ctypes.CDLL(lib)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                       "openblas_set_num_threads"):
            setter = getattr(blas, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                return
