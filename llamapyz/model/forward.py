"""The forward pass: tokens in, logits (or final hidden states) out, for every architecture in
`hparams.ARCHITECTURES`, by executing the model's recipe (`recipe.py`).

A call processes chunks of prompt tokens (prefill: one sequence, or several in the server), or one new
token of each of several sequences (decode), each sequence against its own KV cache. Both take one
numeric path: projections are our integer kernels on the quantized weights (activations quantized to
int8 blocks, as llama.cpp does), or our fixed-order float kernel for float formats; attention is computed
row by row. No BLAS: its kernels differ per matrix shape, thread count and CPU.

Each row's result therefore depends only on its own sequence, never on how the rows were batched or
chunked, on any CPU: that is what lets the server batch requests and reuse cached prompts and still give
every request the output it would get alone, and it makes prefill and token-by-token decode bit-identical.

Each layer's recipe becomes a plan, made once: a fused numba kernel (`fused.py`) for each run of steps one
can do, else the step's Python implementation here (`STEPS`, one method per step name, on the same
kernels: the same bits). With `-ngl N`, the last N layers (and perhaps the head) run on a GPU
(`gpu.offload.Offload`, set by the Model), which executes the same recipe: the CPU runs the layers before
them, then hands the hidden state over once; the device's kernels keep the same per-token guarantees, with
float32 activations instead of int8 ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels.linear import MatrixGroup, QuantMatrix
from ..kernels.steps import rms_norm_heads, temperature_rows
from .fused import FusedLayer, fused_run, shared_width
from .hparams import ModelConfig
from .kv_cache import KVCache
from .moe import moe_ffn
from .ops import AttentionWork, Rope, attention, gated_ffn_input, head_logits, qk_norm_spans, rms_norm
from .recipe import Step, Steps, recipe
from .weights import LayerWeights, Weights
from .workspace import Workspace, Workspaces


class Activations:
    """One forward call's values as the recipe's steps pass them on: x the residual stream (n, n_embd), h the
    current branch's value, q k v attention's inputs (views of the workspace's arrays, or a product's); and
    what the steps read besides."""

    __slots__ = ("tokens", "positions", "segments", "ws", "attention", "x", "h", "q", "k", "v")

    def __init__(self, ws: Workspace, segments: list[Segment], attention: AttentionWork) -> None:
        self.tokens = ws.tokens  # (n,)
        self.positions = ws.positions  # (n,) each row's position in its sequence
        self.segments = segments
        self.ws = ws  # every array the pass writes
        self.attention = attention  # attention's per-thread scratch


@dataclass(frozen=True)
class Op:
    """Consecutive steps of the recipe as the CPU runs them: one Python step, or one fused kernel for several."""

    run: Callable[[Activations], None]
    steps: Steps
    kernel: str = ""  # the fused kernel's name (`fused.KERNELS`); "": a Python step


class Transformer:
    def __init__(self, config: ModelConfig, weights: Weights, n_ctx: int) -> None:
        self.config = config
        self.weights = weights
        self.n_ctx = n_ctx
        self.recipe = recipe(config, weights.tensor_names)
        self.rope_factors = self.choose_rope_factors(config, weights, n_ctx)
        factors = weights.rope_factors.get(self.rope_factors)
        self.ropes: dict[Step, Rope] = {}  # a table per distinct rope step (sliding layers may have their own base)
        for steps in self.recipe.layers:
            for s in steps:
                if s.name == "rope" and s not in self.ropes:
                    self.ropes[s] = Rope(s.base, s.n_rot, n_ctx, s.neox, factors if s.factors else None,
                                         s.freq_scale, s.attn_factor, s.yarn)
        self.rope_of_layer = [next((self.ropes[s] for s in steps if s.name == "rope"), None)
                              for steps in self.recipe.layers]
        self._groups: dict[tuple[int, ...], MatrixGroup] = {}  # by the ids of the matrices (weights live on)
        fused = [FusedLayer.of(layer, self.group) for layer in weights.layers]
        self.workspaces = Workspaces(config, *shared_width(fused), n_ctx)
        self.fused = fused  # makes the layers' plans
        self.embed_ops = [self.python_op(s, -1, weights) for s in self.recipe.embed]
        self.final_ops = [self.python_op(s, -1, weights) for s in self.recipe.final]
        self.head_ops = [self.python_op(s, -1, weights) for s in self.recipe.head]
        self.offload = None  # the last layers on a GPU (gpu.offload.Offload), set by the Model

    @property
    def fused(self) -> list[FusedLayer]:
        """Each layer's products as the fused kernels take them (None where a step takes the Python path)."""
        return self._fused

    @fused.setter
    def fused(self, layers: list[FusedLayer]) -> None:
        self._fused = layers
        self.plans = [self.plan(il) for il in range(self.config.n_layer)]

    def plan(self, il: int) -> list[Op]:
        """Layer il's recipe as ops: a fused kernel for each run of steps one can do, else each Python step."""
        steps, layer, ops, i = self.recipe.layers[il], self.weights.layers[il], [], 0
        while i < len(steps):
            found = fused_run(steps, i, self._fused[il], layer, self.config, self.ropes)
            if found is None:
                ops.append(self.python_op(steps[i], il, layer))
                i += 1
            else:
                kernel, n, run = found
                ops.append(Op(run, steps[i:i + n], kernel))
                i += n
        return ops

    def python_op(self, step: Step, il: int, tensors: LayerWeights | Weights) -> Op:
        """A step's Python implementation on layer il's tensors (-1 and the model's: before and after the layers)."""
        return Op(functools.partial(self.STEPS[step.name], self, step, il, tensors), (step,))

    @staticmethod
    def choose_rope_factors(config: ModelConfig, weights: Weights, n_ctx: int) -> str | None:
        """Which of the file's rope factors apply: rope_freqs always; LongRoPE's long set when the context
        is longer than the original one, else the short set (llama.cpp decides by n_ctx, not by position)."""
        factors = weights.rope_factors
        if "freqs" in factors:
            return "freqs"
        if factors:
            return "long" if n_ctx > config.rope_original_ctx else "short"
        return None

    @property
    def derived_bytes(self) -> int:
        """Float32 data derived from the file: norm weights and rope tables."""
        tables = {id(r): r.cos.nbytes + r.sin.nbytes for r in self.ropes.values()}
        return self.weights.derived_bytes + sum(tables.values())

    def project(self, x: np.ndarray, *matrices: QuantMatrix, keep: bool = False) -> list[np.ndarray]:
        """x (n, n_in) @ W.T (+ bias) for each W, x quantized once for all of them (in one pass where they
        can share it: `MatrixGroup`). Prefill and decode take this same path, so a token's result is the
        same bits whether it came in a chunk of many, alone, or batched with other sequences. Decode's
        results are valid until the same matrices are used again, unless `keep`."""
        return self.group(*matrices).project(x, keep)

    def group(self, *matrices: QuantMatrix) -> MatrixGroup:
        key = tuple(map(id, matrices))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = MatrixGroup(matrices)
        return group

    def forward(self, tokens: np.ndarray, pos0: int, cache: KVCache, output: str = "last") -> np.ndarray | None:
        """Run tokens (n,) of one sequence at positions pos0.. through the model (prefill), filling its cache.

        output: "last" -> logits of the last token (1, n_vocab); "all" -> logits (n, n_vocab);
        "hidden" -> final normalized hidden states (n, n_embd); "none" -> nothing (only the cache is filled).
        """
        ws = self.workspaces.get(len(tokens))
        ws.tokens[:] = tokens
        ws.positions[:] = np.arange(pos0, pos0 + len(tokens))
        return self._run(ws, [Segment(cache, pos0, len(tokens))], output)

    def step(self, chunks: list[tuple[np.ndarray, int, KVCache]], tokens: np.ndarray, positions: list[int],
             caches: list[KVCache]) -> np.ndarray | None:
        """Chunks of several sequences' prompts (tokens, pos0, cache) and one token for each of several others
        (token i at positions[i] of caches[i]), in one pass over the weights: the decoded tokens' logits
        (len(tokens), n_vocab), or None without any. A sequence may have a chunk and then a token: its chunk's
        keys are stored before its token attends (segments go in order).

        Every row goes through the same kernels, in the same order, as when it is evaluated alone, so a chunk's
        keys and values and a token's logits do not depend on the company they keep (batch invariance)."""
        segments = [Segment(cache, pos0, len(ids)) for ids, pos0, cache in chunks]
        segments += [Segment(cache, pos, 1) for cache, pos in zip(caches, positions, strict=True)]
        if not segments:
            return None
        ws = self.workspaces.get(sum(s.n for s in segments))
        row = 0
        for (ids, pos0, _), segment in zip(chunks, segments, strict=False):
            ws.tokens[row:row + segment.n] = ids
            ws.positions[row:row + segment.n] = np.arange(pos0, pos0 + segment.n)
            row += segment.n
        for i, (token, position) in enumerate(zip(tokens, positions, strict=True)):  # decode: no array made
            ws.tokens[row + i] = token
            ws.positions[row + i] = position
        return self._run(ws, segments, len(tokens) or "none")

    def _run(self, ws: Workspace, segments: list[Segment], output: str | int) -> np.ndarray | None:
        """The recipe on the rows of `ws` (its tokens and positions filled in), segment by segment."""
        a = Activations(ws, segments, self.workspaces.attention)
        for op in self.embed_ops:
            op.run(a)
        n_cpu = self.config.n_layer - (self.offload.n_layers if self.offload else 0)
        for ops in self.plans[:n_cpu]:
            for op in ops:
                op.run(a)
        if self.offload is not None:  # the hidden state crosses to the device and back once
            x = self.offload.run(a.x, ws.positions, segments, output)
            if self.offload.head:  # the device ran the final steps and the head too: x is what `output` asks for
                return x
            a.x = x
        if output == "none":
            return None
        if output != "hidden":
            a.x = a.x[len(a.x) - output_rows(output, len(a.x)):]
        for op in self.final_ops:
            op.run(a)
        if output == "hidden":
            return a.h.copy()  # the workspace's array is the next pass's
        for op in self.head_ops:
            op.run(a)
        return a.h

    # --- the steps (see recipe.py): (step, layer index, its tensors, the call's activations) ---------------

    def embed(self, step: Step, il: int, w: Weights, a: Activations) -> None:
        a.x = w.token_embd.rows(a.tokens, out=a.ws.x)  # (n, n_embd)
        if step.scaled:
            a.x *= np.float32(np.sqrt(self.config.n_embd))
        if step.multiplier != 1.0:
            a.x *= np.float32(step.multiplier)

    def norm(self, step: Step, il: int, w: LayerWeights | Weights, a: Activations) -> None:
        a.h = rms_norm(a.x, getattr(w, step.weight), self.config.rms_eps, out=a.ws.h[:len(a.x)])

    def no_norm(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        a.h = a.ws.h[:len(a.x)]
        np.copyto(a.h, a.x)  # a copy: the steps after it may write to h

    def qkv(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        a.q, a.k, a.v = self.project(a.h, w.attn_q, w.attn_k, w.attn_v)  # (n, q_dim), (n, kv_dim) twice

    def qk_norm(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        c = self.config
        (q_heads, q_width), (k_heads, k_width) = qk_norm_spans(step, c)
        rms_norm_heads(a.q, 0, q_heads, q_width, w.attn_q_norm, c.rms_eps)
        rms_norm_heads(a.k, 0, k_heads, k_width, w.attn_k_norm, c.rms_eps)

    def rotate(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        rope = self.ropes[step]
        rope(a.q, self.config.n_head, a.positions)
        rope(a.k, self.config.n_head_kv, a.positions)

    def attend(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        """Store each sequence's keys and values in its cache, then its queries' attention (n, q_dim)."""
        c, q, out = self.config, a.ws.q, a.ws.attn
        np.copyto(q, a.q)  # q contiguous, as the kernel reads it
        row = 0
        for seg in a.segments:
            rows = slice(row, row + seg.n)
            row += seg.n
            seg.cache.store(il, seg.pos0, a.k[rows], a.v[rows])
            key_start = max(0, seg.pos0 - step.window + 1) if step.window else 0
            keys, values = seg.cache.read(il, key_start, seg.pos0 + seg.n)
            attention(q[rows].reshape(seg.n, c.n_head, c.head_dim), keys.reshape(-1, c.n_head_kv, c.head_dim),
                      values.reshape(-1, c.n_head_kv, c.head_dim), seg.pos0, key_start, step.window, step.scale,
                      step.softcap, out=out[rows], work=a.attention, sinks=w.attn_sinks if step.sinks else None)
        a.h = out

    def temperature(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        """q times its row's temperature (a view of the product or the workspace's: scaled in place)."""
        temperature_rows(a.q, a.q.shape[1], a.positions, step.scale, step.floor_scale)

    def output(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        (a.h,) = self.project(a.h, w.attn_output)

    def post_norm(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        a.h = rms_norm(a.h, getattr(w, step.weight), self.config.rms_eps, out=a.h)

    def residual(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        if step.scale != 1.0:
            a.h *= np.float32(step.scale)  # the branch's product or workspace array: scaled in place
        a.x += a.h

    def ffn(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        gate, up = self.project(a.h, w.ffn_gate, w.ffn_up)
        act = a.ws.act if a.ws.act.shape == gate.shape else None  # the workspace's, unless a family's widths vary
        (a.h,) = self.project(gated_ffn_input(gate, up, step.activation, out=act), w.ffn_down)

    def experts(self, step: Step, il: int, w: LayerWeights, a: Activations) -> None:
        a.h = moe_ffn(a.h, w.experts, step, self.project)

    def head(self, step: Step, il: int, w: Weights, a: Activations) -> None:
        (logits,) = self.project(a.h, getattr(w, step.tensor), keep=True)
        a.h = head_logits(logits, step)

    STEPS = {"embed": embed, "rms_norm": norm, "no_norm": no_norm, "qkv": qkv, "qk_norm": qk_norm, "rope": rotate,
             "temperature": temperature, "attention": attend, "output": output, "post_norm": post_norm,
             "residual": residual, "ffn": ffn, "moe": experts, "head": head}


def output_rows(output: str | int, n: int) -> int:
    """How many of a pass's last rows `output` asks the head for: "last" 1, "all" (or "hidden") all n, k k."""
    return 1 if output == "last" else output if isinstance(output, int) else n


@dataclass
class Segment:
    """n consecutive tokens of one sequence, at positions pos0.., with that sequence's cache."""

    cache: KVCache
    pos0: int
    n: int
