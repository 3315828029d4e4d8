"""What the layer kernels (`kernels/layer.py`) take: per layer its products as tables, and scratch arrays
per number of tokens.

A step is fused when its products can run as one `matvec.product` pass each (integer kernels on one
weights buffer: `MatrixGroup.table`); a layer whose matrices cannot (float formats), or whose FFN has
experts, takes the Python steps of `forward.py` for that step instead, with the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.linear import REUSED_TOKENS, MatrixGroup, form_buffers
from .hparams import ModelConfig
from .weights import LayerWeights

NONE = np.empty(0, np.float32)  # an absent norm weight, for the kernels


def _product(group: MatrixGroup, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(table, bias) for the layer kernels, which address every product of a layer through one buffer; None
    when the group has no table or its table addresses another buffer (a matrix copied out of the file)."""
    same = (group.buffer.ctypes.data, group.buffer.size) == (buffer.ctypes.data, buffer.size)
    return (group.table, group.bias) if group.table is not None and same else None


@dataclass
class FusedLayer:
    """One layer's products as (table, bias) pairs; None where that step takes the Python path."""

    buffer: np.ndarray  # the weights' bytes (the mmap) all tables address
    qkv: tuple | None
    o: tuple | None
    gate_up: tuple | None  # None also with experts
    down: tuple | None
    activations: dict[str, set[str]]  # the int8 forms of x each input width needs: "embd", "q", "ff"
    n_ff: int = 0  # the FFN's width (gate_up: 2 n_ff outputs)

    @classmethod
    def of(cls, layer: LayerWeights, groups) -> FusedLayer:
        """groups(*matrices) -> their MatrixGroup (the forward pass's, shared)."""
        qkv = groups(layer.attn_q, layer.attn_k, layer.attn_v)
        o = groups(layer.attn_output)
        activations = {"embd": set(qkv.activations), "q": set(o.activations), "ff": set()}
        gate_up = down = None
        n_ff = 0
        if layer.experts is None:
            n_ff = layer.ffn_down.n_cols
            gate_up, down = groups(layer.ffn_gate, layer.ffn_up), groups(layer.ffn_down)
            activations["embd"] |= gate_up.activations
            activations["ff"] = set(down.activations)
        buffer = qkv.buffer
        ffn = (_product(gate_up, buffer), _product(down, buffer)) if gate_up is not None else (None, None)
        if None in ffn:
            ffn = (None, None)
        return cls(buffer, _product(qkv, buffer), _product(o, buffer), *ffn, activations, n_ff)


class Scratch:
    """The layer kernels' arrays for calls of n tokens: made once per n up to REUSED_TOKENS (decode), fresh
    for longer calls (prefill)."""

    def __init__(self, c: ModelConfig, n: int, n_ff: int, activations: dict[str, set[str]]) -> None:
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.embd_forms = form_buffers(n, c.n_embd, activations["embd"])
        self.q_forms = form_buffers(n, q_dim, activations["q"])
        self.ff_forms = form_buffers(n, n_ff, activations["ff"])
        self.h = np.empty((n, c.n_embd), np.float32)  # the normed input of q/k/v and of gate/up
        self.qkv = np.empty((n, q_dim + 2 * kv_dim), np.float32)
        self.out = np.empty((n, c.n_embd), np.float32)  # attn_output's and ffn_down's products
        self.gu = np.empty((n, 2 * n_ff), np.float32)
        self.act = np.empty((n, n_ff), np.float32)


class ScratchPool:
    """Scratch for every layer (the FFN width is the first dense layer's; a layer of another width, if a
    family ever had one, takes the Python FFN)."""

    def __init__(self, config: ModelConfig, layers: list[FusedLayer]) -> None:
        self.config = config
        self.n_ff = next((f.n_ff for f in layers if f.n_ff), 0)
        for f in layers:
            if f.n_ff != self.n_ff:
                f.gate_up = f.down = None
        self.activations = {key: set().union(*(f.activations[key] for f in layers)) for key in ("embd", "q", "ff")}
        self._made: dict[int, Scratch] = {}

    def get(self, n: int) -> Scratch:
        if n > REUSED_TOKENS:
            return Scratch(self.config, n, self.n_ff, self.activations)
        if n not in self._made:
            self._made[n] = Scratch(self.config, n, self.n_ff, self.activations)
        return self._made[n]
