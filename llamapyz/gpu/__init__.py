"""GPU offload (`-ngl N`): whether a GPU can be used here (`device.probe`), how many layers fit (`plan`), and
the offloaded part of the forward pass (`offload.Offload`, numba-cuda kernels in `kernels.py`), put together
for a model being loaded by `setup` (which `loader.load_model` hands to the model).

numba-cuda is optional (`pip install -e .[cuda]`, or `build.py --gpu cuda`); nothing here imports it until
asked.
"""

from __future__ import annotations

from ..model.placement import GpuStatus, MiB
from .device import Device, probe

__all__ = ["Device", "GpuStatus", "plan", "probe", "setup", "wanted"]

RESERVE_BYTES = 256 * MiB  # left free on the device: the kernels' scratch arrays, the driver's own needs


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


def setup(config, weights, ropes: list, n_ctx: int, *, requested: int, main_gpu: int = 0, n_contexts: int = 1):
    """-ngl `requested` for a model being loaded (`loader.load_model` passes this to the `Model`, which calls
    it with its config, weights, rope tables and context size): (offload.Offload or None, GpuStatus). Never
    raises for want of a GPU: the status's warning says why fewer layers (or none) run there."""
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
