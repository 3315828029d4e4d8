"""GPU offload (`-ngl N`): whether a GPU can be used here (`probe`), how many layers fit (`plan`), and the
offloaded part of the forward pass (`offload.Offload`, numba-cuda kernels in `kernels.py`).

numba-cuda is optional (`pip install -e .[cuda]`, or `build.py --gpu cuda`); nothing here imports it until
asked. `probe` answers the start-up's question in one line: a usable device, or why not (numba-cuda missing,
no driver, no device). Under numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, what the tests use) the
device is the simulator's.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20
RESERVE_BYTES = 256 * MiB  # left free on the device: the kernels' scratch arrays, the driver's own needs


@dataclass(frozen=True)
class Device:
    index: int
    name: str
    memory_mib: int  # total; 0 when the simulator cannot say
    free_mib: int = 0  # free when probed; 0 when unknown


@dataclass
class GpuStatus:
    """What -ngl came to, for the start-up log and /props."""

    requested: int  # -ngl as given (-1: all)
    n_layer: int
    layers: int = 0  # offloaded
    head: bool = False  # the output norm and head too
    device: str = ""
    weight_bytes: int = 0
    kv_bytes: int = 0  # per context
    warning: str | None = None  # why fewer layers than asked (or none) run on the GPU

    @property
    def summary(self) -> str:
        """The start-up line, as llama.cpp's (or empty when nothing is offloaded)."""
        if not self.layers and not self.head:
            return ""
        head = " and the output layer" if self.head else ""
        return (f"offloaded {self.layers}/{self.n_layer} layers{head} to GPU ({self.device}, "
                f"{self.weight_bytes / MiB:.1f} MiB of weights, {self.kv_bytes / MiB:.1f} MiB of KV per context)")

    def lines(self) -> list[str]:
        """What start-up prints: the warning, if any, and the offload line, if any layer is offloaded."""
        return [line for line in (self.warning and f"warning: {self.warning}", self.summary) if line]

    def as_json(self) -> dict:
        return {"n_gpu_layers": self.layers, "n_layer": self.n_layer, "output_on_gpu": self.head,
                "device": self.device or None, "weights_mib": round(self.weight_bytes / MiB, 1),
                "kv_mib_per_context": round(self.kv_bytes / MiB, 1), "warning": self.warning}


def wanted(requested: int, n_layer: int) -> tuple[int, bool]:
    """llama.cpp's reading of -ngl: (repeating layers, whether the output layer too). -1 or more than
    n_layer: everything."""
    if requested < 0 or requested > n_layer:
        return n_layer, True
    return requested, False


def plan(layers: int, head: bool, layer_bytes: list[int], head_bytes: int, kv_bytes_per_layer: int,
         free_bytes: int | None) -> tuple[int, bool, str | None]:
    """How many of the last `layers` layers (and the head) fit in free_bytes (None: unknown, all do), the
    head given up first: (layers, head, the warning's phrase or None)."""
    def need(k: int, with_head: bool) -> int:
        return sum(layer_bytes[len(layer_bytes) - k:]) + k * kv_bytes_per_layer + (head_bytes if with_head else 0)

    if free_bytes is None:
        return layers, head, None
    budget = free_bytes - RESERVE_BYTES
    asked = need(layers, head)
    k, h = layers, head
    if need(k, h) > budget:
        h = False
    while k > 0 and need(k, h) > budget:
        k -= 1
    if (k, h) == (layers, head):
        return k, h, None
    return k, h, (f"not enough GPU memory for {layers} layers{' and the output layer' if head else ''} "
                  f"({asked / MiB:.0f} MiB with the KV cache; {max(budget, 0) / MiB:.0f} MiB free beyond "
                  f"{RESERVE_BYTES // MiB} MiB kept back)")


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


def setup(config, weights, ropes: list, requested: int, main_gpu: int, n_ctx: int, n_contexts: int = 1):
    """-ngl `requested` for a loaded model: (offload.Offload or None, GpuStatus). Never raises for want of a
    GPU: the status's warning says why fewer layers (or none) run there."""
    status = GpuStatus(requested, config.n_layer)
    if requested == 0:
        return None, status
    device = probe(main_gpu)
    if not isinstance(device, Device):
        status.warning = f"{device}; running all layers on the CPU"
        return None, status
    from ..model.kv_cache import KVCache
    from . import offload

    layers, head = wanted(requested, config.n_layer)
    notes = []
    if head and (problem := offload.matrix_problem(weights.output)):
        head = False
        notes.append(problem)
    if layers and config.head_dim > offload.kernels.MAX_HEAD_DIM:
        notes.append(f"heads of {config.head_dim} are wider than the GPU attention kernel's "
                     f"{offload.kernels.MAX_HEAD_DIM}")
        layers = 0
    for k in range(layers):  # the last layers, up to the first one the kernels cannot run
        il = config.n_layer - 1 - k
        if problem := offload.layer_problem(weights.layers[il]):
            layers = k
            notes.append(problem)
            break
    kv_per_layer = KVCache.n_bytes_for(1, n_ctx, config.kv_dim, "f16")  # one context's; the device's is f16
    sizes = [offload.layer_bytes(layer) for layer in weights.layers]
    head_bytes = offload.head_bytes(weights)
    free = device.free_mib * MiB if device.free_mib else None
    fit_layers, fit_head, short = plan(layers, head, sizes, head_bytes, kv_per_layer * n_contexts, free)
    if short:
        notes.append(short)
    if notes:
        status.warning = "; ".join(notes) + f": offloading {fit_layers} of {config.n_layer} layers"
    if not fit_layers and not fit_head:
        return None, status
    from numba import cuda

    try:
        with cuda.gpus[device.index]:
            gpu = offload.Offload(config, weights, ropes, fit_layers, fit_head, device)
    except Exception as exc:  # an allocation the plan thought would fit, a driver error: say it, use the CPU
        status.warning = f"uploading the weights to the GPU failed ({exc}); running all layers on the CPU"
        return None, status
    status.layers, status.head, status.device = fit_layers, fit_head, device.name
    status.weight_bytes = sum(sizes[config.n_layer - fit_layers:]) + (head_bytes if fit_head else 0)
    status.kv_bytes = kv_per_layer * fit_layers
    return gpu, status
