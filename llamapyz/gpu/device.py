"""Whether a GPU can be used here: `probe` answers the start-up's question in one line, a usable `Device`, or why
not (numba-cuda missing, no driver, no device). Under numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, what the
tests use) the device is the simulator's."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.placement import MiB


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_mib: int  # total; 0 when the simulator cannot say
    free_mib: int = 0  # free when probed; 0 when unknown


def probe(main_gpu: int = 0) -> Device | str:
    """The CUDA device `main_gpu`, or the reason none can be used (a phrase for a warning line)."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:  # numba's own deprecated CUDA target is not used
        return "numba-cuda is not installed (pip install llamapyz[cuda], or build the archive with --gpu cuda)"
    from numba import cuda
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
            free, total = (int(v) // MiB for v in cuda.current_context().get_memory_info())
        except Exception:  # drivers differ in what they refuse; the simulator's is inf
            free, total = 0, 0
    return Device(main_gpu, name, total, free)
