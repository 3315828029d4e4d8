"""Loading a model to run or serve: the engine (`model.Model`) with -ngl's layers offloaded to a GPU
(`gpu.setup`). The one place the two meet, so that the model package knows nothing of GPUs (the GPU package
knows the model's types: it runs their layers).

    model = load_model("model.gguf", n_ctx=4096, n_gpu_layers=-1)
"""

from __future__ import annotations

import functools
from typing import Any

from . import gpu
from .gguf.reader import Source
from .model.model import Model


def load_model(source: Source, n_ctx: int | None = None, n_threads: int | None = None, n_gpu_layers: int = 0,
               main_gpu: int = 0, gpu_contexts: int = 1, **options: Any) -> Model:
    """`Model.load`, with n_gpu_layers: llama.cpp's -ngl (the last N layers on a GPU; -1 or more than n_layer:
    the output layer too); main_gpu: which GPU; gpu_contexts: how many contexts' KV caches to budget GPU memory
    for (the server's slots). What that came to, and why, is the model's `gpu` (a `GpuStatus`)."""
    offload = None
    if n_gpu_layers:
        offload = functools.partial(gpu.setup, requested=n_gpu_layers, main_gpu=main_gpu, n_contexts=gpu_contexts)
    return Model.load(source, n_ctx=n_ctx, n_threads=n_threads, offload=offload, **options)
