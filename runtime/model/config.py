"""Model hyper-parameters read straight from GGUF keys, plus the named options that tell architectures apart.

One forward pass serves every architecture here; what differs is data (`ArchOptions`). Adding a llama-like
family is a new entry in `ARCHITECTURES`, not a new forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class ArchOptions:
    rope_neox: bool = False  # rotate halves (i, i + n_rot/2) instead of interleaved pairs (2i, 2i+1)
    scale_embeddings: bool = False  # token embeddings * sqrt(n_embd)
    qk_norm: bool = False  # per-head RMSNorm of q and k (attn_q_norm, attn_k_norm)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual add
    ffn_activation: str = "silu"  # gate activation: silu or gelu_tanh
    sliding_window_pattern: int = 0  # every Nth layer is global, the others use the sliding window; 0: none
    local_rope_base: float | None = None  # rope base of the sliding-window layers


ARCHITECTURES: dict[str, ArchOptions] = {
    "llama": ArchOptions(),
    "gemma3": ArchOptions(
        rope_neox=True,
        scale_embeddings=True,
        qk_norm=True,
        post_norms=True,
        ffn_activation="gelu_tanh",
        sliding_window_pattern=6,
        local_rope_base=10000.0,
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    options: ArchOptions
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    n_rot: int
    sliding_window: int  # tokens; 0: every layer sees the whole context

    @classmethod
    def from_metadata(cls, md: dict[str, Any]) -> ModelConfig:
        arch = md.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"model architecture {arch!r} is not supported",
                hint=f"llamapyz runs these architectures: {', '.join(sorted(ARCHITECTURES))}",
            )
        options = ARCHITECTURES[arch]

        def key(name: str, default: Any = None) -> Any:
            value = md.get(f"{arch}.{name}", default)
            if value is None:
                raise UnsupportedModelError(f"{arch} model is missing metadata key {arch}.{name}")
            return value

        n_embd = int(key("embedding_length"))
        n_head = int(key("attention.head_count"))
        head_dim = int(key("attention.key_length", n_embd // n_head))
        return cls(
            arch=arch,
            options=options,
            n_layer=int(key("block_count")),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_ctx_train=int(key("context_length", 4096)),
            rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            n_rot=int(key("rope.dimension_count", head_dim)),
            sliding_window=int(md.get(f"{arch}.attention.sliding_window", 0)) if options.sliding_window_pattern else 0,
        )

    def is_global(self, layer: int) -> bool:
        """Whether the layer attends to the whole context (always, unless the model has sliding windows)."""
        pattern = self.options.sliding_window_pattern
        return not (pattern and self.sliding_window) or (layer + 1) % pattern == 0

    def rope_base_of(self, layer: int) -> float:
        if self.is_global(layer) or self.options.local_rope_base is None:
            return self.rope_base
        return self.options.local_rope_base

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)
