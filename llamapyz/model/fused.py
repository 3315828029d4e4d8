"""The fused numba path: one kernel of `kernels/layer.py` for a run of consecutive recipe steps, and what those
kernels take (per layer its products as tables; their arrays are the pass's `workspace.Workspace`).

`KERNELS` says which run of steps each layer kernel does; `fused_run` matches them at a point of a layer's
recipe (`recipe.match`) and returns the kernel's call. Where none matches, or the layer's products cannot run
as one `matvec.product` pass each (integer kernels on one weights buffer: `MatrixGroup.table`; float formats
cannot), or its FFN has experts (no `ffn` step), that layer takes the Python steps of `forward.py` there,
which compute the same bits (`tests/test_exactness.py`). A kernel leaves the activations as its last step
leaves them for the steps after it (q, k, v; or x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..kernels import layer as layer_kernels
from ..kernels.linear import MatrixGroup
from ..kernels.steps import GATED_ACTIVATIONS
from .hparams import ModelConfig
from .ops import Rope, qk_norm_spans
from .recipe import Step, Steps, match
from .weights import LayerWeights

if TYPE_CHECKING:
    from .forward import Activations

    Run = Callable[[Activations], None]

NONE = np.empty(0, np.float32)  # an absent norm weight, for the kernels
NO_ROPE = (np.empty((1, 0), np.float32), np.empty((1, 0), np.float32), 0, False)  # a layer without rope: n_rot 0


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


def shared_width(layers: list[FusedLayer]) -> tuple[int, dict[str, set[str]]]:
    """The FFN width the fused kernels' workspace has (the first dense layer's; a layer of another width, if a
    family ever had one, loses its fused FFN here and takes the Python one) and the int8 forms every layer's
    inputs need together."""
    n_ff = next((f.n_ff for f in layers if f.n_ff), 0)
    for f in layers:
        if f.n_ff != n_ff:
            f.gate_up = f.down = None
    return n_ff, {key: set().union(*(f.activations[key] for f in layers)) for key in ("embd", "q", "ff")}


def _attention_input(steps: Steps, f: FusedLayer, layer: LayerWeights, c: ModelConfig, ropes: dict[Step, Rope]
                     ) -> Run | None:
    """rms_norm or no_norm, qkv, [qk_norm], [rope]: h = norm(x) (or x); q, k, v of h, normed per head (or whole)
    and rotated."""
    if f.qkv is None:
        return None
    buffer, qkv, norm, eps = f.buffer, f.qkv, _input_norm(steps[0], layer), c.rms_eps
    names = [s.name for s in steps]
    q_norm, k_norm = (layer.attn_q_norm, layer.attn_k_norm) if "qk_norm" in names else (NONE, NONE)
    spans = qk_norm_spans(steps[2], c) if "qk_norm" in names else ((0, 0), (0, 0))
    heads, tables = (c.n_head, c.n_head_kv, c.head_dim), ropes[steps[-1]].tables if "rope" in names else NO_ROPE
    q_dim, kv_dim = c.n_head * c.head_dim, c.kv_dim

    def run(a: Activations) -> None:
        s = a.ws
        layer_kernels.attention_input(a.x, buffer, norm, eps, qkv, s.embd_forms, s.h, s.qkv, q_norm, k_norm, heads,
                                      spans, tables, a.positions)
        a.q, a.k, a.v = s.qkv[:, :q_dim], s.qkv[:, q_dim:q_dim + kv_dim], s.qkv[:, q_dim + kv_dim:]

    return run


def _add_attention_output(steps: Steps, f: FusedLayer, layer: LayerWeights, c: ModelConfig,
                          ropes: dict[Step, Rope]) -> Run | None:
    """output, [post_norm], residual: x += post_norm(h @ attn_output.T)."""
    if f.o is None:
        return None
    buffer, o, eps, scale = f.buffer, f.o, c.rms_eps, np.float32(steps[-1].scale)
    post = getattr(layer, steps[1].weight) if steps[1].name == "post_norm" else NONE

    def run(a: Activations) -> None:
        s = a.ws
        layer_kernels.add_attention_output(a.x, buffer, a.h, o, s.q_forms, s.out, post, eps, scale)

    return run


def _add_ffn(steps: Steps, f: FusedLayer, layer: LayerWeights, c: ModelConfig, ropes: dict[Step, Rope]
             ) -> Run | None:
    """rms_norm or no_norm, ffn, [post_norm], residual: x += post_norm(ffn(norm(x) or x))."""
    if f.gate_up is None or f.down is None or steps[1].activation not in GATED_ACTIVATIONS:
        return None
    buffer, gate_up, down, eps, scale = f.buffer, f.gate_up, f.down, c.rms_eps, np.float32(steps[-1].scale)
    norm, kind = _input_norm(steps[0], layer), GATED_ACTIVATIONS.index(steps[1].activation)
    post = getattr(layer, steps[2].weight) if steps[2].name == "post_norm" else NONE

    def run(a: Activations) -> None:
        s = a.ws
        layer_kernels.add_ffn(a.x, buffer, norm, eps, gate_up, s.embd_forms, s.h, s.gu, kind, s.act, down,
                              s.ff_forms, s.out, post, scale)

    return run


def _input_norm(step: Step, layer: LayerWeights) -> np.ndarray:
    """A branch's input norm weight for the kernels: empty for no_norm (h = x)."""
    return getattr(layer, step.weight) if step.name == "rms_norm" else NONE


# each layer kernel: the run of recipe steps it does ("name?": one it may go without; "a|b": either), and what
# makes its call
KERNELS = {
    "attention_input": (("rms_norm|no_norm", "qkv", "qk_norm?", "rope?"), _attention_input),
    "add_attention_output": (("output", "post_norm?", "residual"), _add_attention_output),
    "add_ffn": (("rms_norm|no_norm", "ffn", "post_norm?", "residual"), _add_ffn),
}


def fused_run(steps: Steps, start: int, f: FusedLayer, layer: LayerWeights, config: ModelConfig,
              ropes: dict[Step, Rope]) -> tuple[str, int, Run] | None:
    """The layer kernel that does the steps from `start` of a layer's recipe: (its name, how many steps, its
    call on a forward call's activations), or None when none can."""
    for kernel, (pattern, make) in KERNELS.items():
        n = match(pattern, steps, start)
        if n and (run := make(steps[start:start + n], f, layer, config, ropes)) is not None:
            return kernel, n, run
    return None
