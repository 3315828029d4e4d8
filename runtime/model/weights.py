"""The model's weights, named as in the GGUF file (`blk.{i}.attn_q`), checked once at load time.

Matrices stay in their quantized encoding (`QuantMatrix` over the mmap); only the 1-d norm weights are
decoded to float32, which is the small derived data `derived_bytes` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError
from ..gguf import GGUFFile
from ..kernels.linear import QuantMatrix
from .config import ModelConfig


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (n_embd,)
    attn_q: QuantMatrix  # (n_head * head_dim, n_embd)
    attn_k: QuantMatrix  # (n_head_kv * head_dim, n_embd)
    attn_v: QuantMatrix  # (n_head_kv * head_dim, n_embd)
    attn_output: QuantMatrix  # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray  # (n_embd,)
    ffn_gate: QuantMatrix  # (n_ff, n_embd)
    ffn_up: QuantMatrix  # (n_ff, n_embd)
    ffn_down: QuantMatrix  # (n_embd, n_ff)
    attn_q_norm: np.ndarray | None = None  # (head_dim,) with qk_norm
    attn_k_norm: np.ndarray | None = None
    post_attention_norm: np.ndarray | None = None  # (n_embd,) with post_norms
    post_ffw_norm: np.ndarray | None = None


@dataclass
class Weights:
    token_embd: QuantMatrix  # (n_vocab, n_embd)
    layers: list[LayerWeights]
    output_norm: np.ndarray  # (n_embd,)
    output: QuantMatrix  # (n_vocab, n_embd): output.weight, or token_embd when tied

    @property
    def derived_bytes(self) -> int:
        """Bytes decoded out of the file into float32 (the norms)."""
        vectors = [self.output_norm]
        for layer in self.layers:
            vectors += [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
        return sum(v.nbytes for v in vectors)


def load_weights(gguf: GGUFFile, config: ModelConfig) -> Weights:
    c = config

    def tensor(name: str, shape: tuple[int, ...]):
        if name not in gguf.tensors:
            raise UnsupportedModelError(f"{c.arch} model is missing tensor {name!r}")
        t = gguf.tensors[name]
        if len(shape) == 2 and shape[0] == -1:
            shape = (t.shape[0], shape[1])
        if t.shape != shape:
            raise UnsupportedModelError(f"tensor {name!r} has shape {t.shape}, expected {shape} ({c.arch} model)")
        return t

    def matrix(name: str, n_out: int, n_in: int) -> QuantMatrix:
        return QuantMatrix(tensor(name, (n_out, n_in)))

    def vector(name: str, n: int) -> np.ndarray:
        return np.ascontiguousarray(tensor(name, (n,)).dequantize(), dtype=np.float32)

    q_dim, kv_dim = c.n_head * c.head_dim, c.kv_dim
    n_ff = gguf.tensors["blk.0.ffn_up.weight"].shape[0] if "blk.0.ffn_up.weight" in gguf.tensors else 0
    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        layer = LayerWeights(
            attn_norm=vector(p + "attn_norm.weight", c.n_embd),
            attn_q=matrix(p + "attn_q.weight", q_dim, c.n_embd),
            attn_k=matrix(p + "attn_k.weight", kv_dim, c.n_embd),
            attn_v=matrix(p + "attn_v.weight", kv_dim, c.n_embd),
            attn_output=matrix(p + "attn_output.weight", c.n_embd, q_dim),
            ffn_norm=vector(p + "ffn_norm.weight", c.n_embd),
            ffn_gate=matrix(p + "ffn_gate.weight", n_ff, c.n_embd),
            ffn_up=matrix(p + "ffn_up.weight", n_ff, c.n_embd),
            ffn_down=matrix(p + "ffn_down.weight", c.n_embd, n_ff),
        )
        if c.options.qk_norm:
            layer.attn_q_norm = vector(p + "attn_q_norm.weight", c.head_dim)
            layer.attn_k_norm = vector(p + "attn_k_norm.weight", c.head_dim)
        if c.options.post_norms:
            layer.post_attention_norm = vector(p + "post_attention_norm.weight", c.n_embd)
            layer.post_ffw_norm = vector(p + "post_ffw_norm.weight", c.n_embd)
        layers.append(layer)
    token_embd = matrix("token_embd.weight", -1, c.n_embd)
    output = matrix("output.weight", token_embd.n_rows, c.n_embd) if "output.weight" in gguf.tensors else token_embd
    return Weights(token_embd, layers, vector("output_norm.weight", c.n_embd), output)
