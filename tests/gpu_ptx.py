"""Compile every CUDA kernel of llamapyz/gpu to PTX for real GPUs, with no GPU and no simulator.

The simulator (what the other GPU tests run on) executes the kernels as Python, so it accepts what numba-cuda
cannot compile: Python objects, untyped branches, unsupported functions. This compiles each kernel for
sm_80 and sm_90 with the same argument types the offload passes (tests/test_gpu_ptx.py runs it in a
process of its own, as numba reads NUMBA_ENABLE_CUDASIM once). numba-cuda asks the current device for its
compute capability while compiling device functions; with no device, that question is answered here.

    python tests/gpu_ptx.py        # prints each kernel's compile time, exits 1 on the first failure
"""

from __future__ import annotations

import os
import sys
import time
import types

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

from numba import cuda  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

CAPABILITIES = ((8, 0), (9, 0))
SIGNATURES = {
    "product": "(int64, uint8[:, ::1], float32[:, ::1], float32[::1], float32[:, ::1], int64)",
    "rms_norm": "(float32[:, ::1], float32[::1], float32, float32[:, ::1])",
    "rms_norm_span": "(float32[:, ::1], int64, int64, float32[::1], float32)",
    "add_norm": "(float32[:, ::1], float32[:, ::1], float32[::1], float32, float32, float32[::1], float32[:, ::1])",
    "qk_norm_rope": "(float32[:, ::1], int64, int64, float32[::1], float32[::1], float32, int64[::1], float32[:, ::1],"
                    " float32[:, ::1], int64, boolean)",
    "gated_activation": "(float32[:, ::1], float32[:, ::1], int64, float32[:, ::1])",
    "temperature_rows": "(float32[:, ::1], int64, int64[::1], float64, int64)",
    "add_gated": "(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1])",
    "store_kv": "(float32[:, ::1], int64, int64, int64, uint16[:, :, ::1], uint16[:, :, ::1], int64)",
    "gather_rows": "(float32[:, ::1], int64[::1], float32[:, ::1])",
    "scatter_scaled": "(float32[:, ::1], int64[::1], int64[::1], float32[::1], float32[:, :, ::1])",
    "sum_ranks": "(float32[:, :, ::1], float32[:, ::1])",
    "attention": "(float32[:, :], uint16[:, :, ::1], uint16[:, :, ::1], int64, int64, int64, float32, float32,"
                 " float32[::1], float32[:, ::1])",
}


def main() -> int:
    from llamapyz.gpu import gpu_cache as cache
    from llamapyz.gpu import kernels

    locator = kernels.product._cache._impl.locator  # compiled kernels are cached per user, our way
    if type(locator).__name__ != "GpuKernelLocator" or locator.get_cache_path() != str(cache.cache_folder()):
        print(f"kernels are cached by {type(locator).__name__} in {locator.get_cache_path()}", file=sys.stderr)
        return 1

    for cc in CAPABILITIES:
        dispatcher.get_current_device = lambda cc=cc: types.SimpleNamespace(compute_capability=cc)
        for name, signature in SIGNATURES.items():
            started = time.perf_counter()
            try:
                cuda.compile_ptx(getattr(kernels, name).py_func, signature, cc=cc)
            except Exception as exc:  # the compiler's message is the point
                print(f"sm_{cc[0]}{cc[1]} {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            print(f"sm_{cc[0]}{cc[1]} {name}: {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
