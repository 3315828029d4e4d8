"""GPU offload (issue 16, in progress): numba-cuda kernels (`kernels.py`) and whether a GPU can be used here.

numba-cuda is optional (`pip install -e .[cuda]`); nothing here imports it until asked. `probe` answers the
start-up's question in one line: a usable device, or why not (numba-cuda missing, no driver, no device).
Under numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, what the tests use) the device is the simulator's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_mib: int  # total; 0 when the simulator cannot say


def probe(main_gpu: int = 0) -> Device | str:
    """The CUDA device `main_gpu`, or the reason none can be used (a phrase for a warning line)."""
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed (pip install llamapyz[cuda], or build the archive with --gpu cuda)"
    try:
        if not cuda.is_available():
            return "no NVIDIA GPU or driver found"
        devices = list(cuda.gpus)
    except Exception as exc:  # the driver's own errors vary by version: say what it said
        return f"the NVIDIA driver could not be used ({exc})"
    if not 0 <= main_gpu < len(devices):
        return f"--main-gpu {main_gpu}: there are {len(devices)} GPU(s)"
    with devices[main_gpu]:
        device = cuda.get_current_device()
        name = getattr(device, "name", "numba's CUDA simulator")
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            memory = int(cuda.current_context().get_memory_info()[1] // 2**20)
        except Exception:  # drivers differ in what they refuse; the simulator's is NaN
            memory = 0
    return Device(main_gpu, name, memory)
