"""Where a model's layers run: what -ngl came to (`GpuStatus`), for the start-up log and /props. The model
package only holds it: `gpu.setup` decides it, and `loader.load_model` hands that decision to the `Model`, so
that nothing here imports the GPU package."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 2**20


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
