"""The offloaded part of the forward pass: the last N layers (and, with more than n_layer, the output norm
and head) on a CUDA device, as llama.cpp's `-ngl N` means it.

`Offload` uploads those layers' weights once, in their GGUF encoding (`DeviceMatrices`: a layer's q, k and
v, or gate and up, share one launch when they share a format), and runs them on the hidden state the CPU
layers hand over: it crosses to the device once per forward call and comes back once (the hidden state, or
the logits when the head is on the device). It executes those layers' recipe (`model/recipe.py`), as every
backend does: `LAUNCHES` names the runs of steps each launch does. Each context's keys and values for those
layers live on the device (`DeviceKV`, f16, allocated on a context's first use).

The kernels (`kernels.py`) keep the engine's guarantees on the device: a token's result is the same
sequence of float32 operations whether it is prefilled in a chunk of hundreds or decoded alone or batched
with other sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import cuda

from ..kernels.linear import QuantMatrix
from ..kernels.steps import GATED_ACTIVATIONS
from ..model.forward import output_rows
from ..model.hparams import ModelConfig
from ..model.moe import route
from ..model.ops import Rope, head_logits
from ..model.recipe import Moe, Steps, match, recipe
from ..model.weights import Experts, LayerWeights, Weights
from . import kernels
from .device import Device
from .formats import BLOCKS, FORMAT_IDS

REUSED_TOKENS = 8  # calls of up to this many tokens (decode) reuse their scratch arrays


def matrix_problem(matrix: QuantMatrix) -> str | None:
    """Why the device has no product kernel for this matrix, or None."""
    name = matrix.format.name
    if name not in FORMAT_IDS:
        return f"{matrix.name} is {name}, which the GPU kernels do not run"
    if matrix.n_cols % BLOCKS[name][0]:
        return f"{matrix.name} has {matrix.n_cols} columns, not whole {name} blocks"
    return None


def layer_problem(layer: LayerWeights) -> str | None:
    """Why a layer cannot run on the device (the first matrix the kernels cannot take), or None."""
    return next(filter(None, map(matrix_problem, _matrices(layer))), None)


def head_bytes(weights: Weights) -> int:
    """The device bytes of the output layer: its matrix as stored, its norm as float32."""
    return weights.output.raw.nbytes + weights.output_norm.nbytes


def layer_bytes(layer: LayerWeights) -> int:
    """The device bytes of a layer's weights: its matrices as stored, its norms and biases as float32."""
    return sum(m.raw.nbytes + (0 if m.bias is None else m.bias.nbytes) for m in _matrices(layer)) + sum(
        v.nbytes for v in vars(layer).values() if isinstance(v, np.ndarray))


def _matrices(layer: LayerWeights) -> list[QuantMatrix]:
    matrices = [m for m in (layer.attn_q, layer.attn_k, layer.attn_v, layer.attn_output, layer.ffn_gate,
                            layer.ffn_up, layer.ffn_down) if m is not None]
    if layer.experts is not None:
        e = layer.experts
        matrices += [e.router, *e.gate, *e.up, *e.down, *(e.shared or ())]
    return matrices


class DeviceMatrices:
    """Matrices that take the same input, on the device: out[:, k] = x @ W_k.T (+ bias) side by side, one
    launch per run of matrices of the same format (their rows concatenated at upload)."""

    def __init__(self, matrices: list[QuantMatrix]) -> None:
        self.n_rows = sum(m.n_rows for m in matrices)
        self.parts = []  # (format id, weights (rows, row bytes) uint8, bias, first output column)
        col = 0
        i = 0
        while i < len(matrices):
            j = i
            while j + 1 < len(matrices) and matrices[j + 1].format.name == matrices[i].format.name:
                j += 1
            run = matrices[i:j + 1]
            raw = np.concatenate([np.ascontiguousarray(m.raw) for m in run]) if len(run) > 1 else run[0].raw
            bias = (np.concatenate([_bias(m) for m in run]) if any(m.bias is not None for m in run)
                    else kernels.NO_BIAS)
            self.parts.append((FORMAT_IDS[run[0].format.name], cuda.to_device(np.ascontiguousarray(raw)),
                               cuda.to_device(bias), col))
            col += sum(m.n_rows for m in run)
            i = j + 1

    def __call__(self, x, out) -> None:
        for fmt, w, bias, col0 in self.parts:
            kernels.launch_product(fmt, w, x, bias, out, col0)


def _bias(m: QuantMatrix) -> np.ndarray:
    return np.zeros(m.n_rows, np.float32) if m.bias is None else m.bias.astype(np.float32)


def _vector(v: np.ndarray | None):
    return cuda.to_device(kernels.NO_BIAS if v is None else np.ascontiguousarray(v, dtype=np.float32))


@dataclass
class DeviceLayer:
    """A layer's weights on the device, named as the file names them (the recipe's steps say which they read)."""

    attn_norm: object
    qkv: DeviceMatrices
    attn_q_norm: object  # empty: none
    attn_k_norm: object
    output: DeviceMatrices
    post_attention_norm: object
    ffn_norm: object
    gate_up: DeviceMatrices | None  # None with experts
    down: DeviceMatrices | None
    experts: DeviceExperts | None
    post_ffw_norm: object
    rope: tuple  # (cos, sin) on the device
    attn_sinks: object  # empty: none

    @classmethod
    def upload(cls, layer: LayerWeights, rope: tuple) -> DeviceLayer:
        return cls(_vector(layer.attn_norm), DeviceMatrices([layer.attn_q, layer.attn_k, layer.attn_v]),
                   _vector(layer.attn_q_norm), _vector(layer.attn_k_norm), DeviceMatrices([layer.attn_output]),
                   _vector(layer.post_attention_norm), _vector(layer.ffn_norm),
                   None if layer.experts else DeviceMatrices([layer.ffn_gate, layer.ffn_up]),
                   None if layer.experts else DeviceMatrices([layer.ffn_down]),
                   layer.experts and DeviceExperts(layer.experts), _vector(layer.post_ffw_norm), rope,
                   _vector(layer.attn_sinks))


class DeviceExperts:
    """A mixture-of-experts FFN on the device: the router, and each expert's gate and up (one matrix) and down."""

    def __init__(self, experts: Experts) -> None:
        self.router = DeviceMatrices([experts.router])
        self.n_expert = experts.router.n_rows
        self.n_ff = experts.down[0].n_cols
        self.gate_up = [DeviceMatrices([g, u]) for g, u in zip(experts.gate, experts.up, strict=True)]
        self.down = [DeviceMatrices([d]) for d in experts.down]
        self.shared = None  # the shared expert's gate and up, its down, its width
        if experts.shared is not None:
            gate, up, down = experts.shared
            self.shared = (DeviceMatrices([gate, up]), DeviceMatrices([down]), down.n_cols)
        self.shared_gate = None if experts.shared_gate is None else _vector(experts.shared_gate)


class DeviceKV:
    """One context's keys and values of the offloaded layers, (n_layers, n_ctx, n_head_kv, head_dim) f16 bits
    each, allocated when the context is first used."""

    def __init__(self, n_layers: int, n_ctx: int, n_head_kv: int, head_dim: int) -> None:
        self.shape = (n_layers, n_ctx, n_head_kv, head_dim)
        self._arrays = None

    def arrays(self) -> tuple:
        if self._arrays is None:
            self._arrays = (cuda.device_array(self.shape, np.uint16), cuda.device_array(self.shape, np.uint16))
        return self._arrays


@dataclass(frozen=True)
class Launch:
    """Consecutive steps of the recipe as the device runs them: one kernel launch (or a few) for the run."""

    run: Callable[[DeviceValues], None]
    steps: Steps
    kernel: str


class DeviceValues:
    """One call's values on the device: x the residual stream, and the arrays of `Offload.scratch` (h: the
    normed input of the next step; qkv; attn, attention's output; out, a branch's output)."""

    __slots__ = ("x", "positions", "segments", "s")

    def __init__(self, x, positions, segments: list, scratch: dict) -> None:
        self.x, self.positions, self.segments, self.s = x, positions, segments, scratch


class Offload:
    """Layers first..n_layer-1 of a model (and its head, if `head`) on the current CUDA device, executing their
    recipe (`model.recipe`): each run of steps that `LAUNCHES` names is one launch (or a few); a residual and
    the norm after it are one (`add_norm`), across a layer's end too."""

    def __init__(self, config: ModelConfig, weights: Weights, ropes: list[Rope], n_layers: int, head: bool,
                 device: Device) -> None:
        c = self.config = config
        self.recipe = recipe(config, weights.tensor_names)
        self.device = device
        self.first = c.n_layer - n_layers
        self.n_layers = n_layers
        self.head = head
        tables = {id(None): None}  # a layer without rope
        for rope in ropes[self.first:]:
            if id(rope) not in tables:
                tables[id(rope)] = (cuda.to_device(rope.cos), cuda.to_device(rope.sin))
        self.layers = [DeviceLayer.upload(weights.layers[il], tables[id(ropes[il])])
                       for il in range(self.first, c.n_layer)]
        self.output_norm = _vector(weights.output_norm)  # the last add_norm's weight, with or without the head
        self.none = _vector(None)  # an absent norm weight
        self.none_table = cuda.to_device(np.zeros((1, 1), np.float32))  # a layer without rope's cos and sin
        if head:
            self.output = DeviceMatrices([weights.output])
            self.n_vocab = weights.output.n_rows
        self.n_ff = max((weights.layers[il].ffn_down.n_cols for il in range(self.first, c.n_layer)
                         if weights.layers[il].ffn_down is not None), default=0)
        self._scratch: dict[int, dict] = {}
        self.launches = self.plan()

    def plan(self) -> list[Launch]:
        """The offloaded layers' steps, then the final norm when the head is here, as launches."""
        stream = [(step, layer, i) for i, layer in enumerate(self.layers)
                  for step in self.recipe.layers[self.first + i]]
        if self.head:
            stream += [(step, self, -1) for step in self.recipe.final]
        steps = [step for step, _, _ in stream]
        launches, start = [], 0
        while start < len(stream):
            for kernel, pattern in LAUNCHES:
                if n := match(pattern, steps, start):
                    run = getattr(self, kernel)(stream[start:start + n])
                    launches.append(Launch(run, tuple(steps[start:start + n]), kernel))
                    start += n
                    break
            else:
                raise ValueError(f"the GPU layers have no kernel for step {steps[start]}")
        return launches

    def new_kv(self, n_ctx: int) -> DeviceKV:
        return DeviceKV(self.n_layers, n_ctx, self.config.n_head_kv, self.config.head_dim)

    def scratch(self, n: int) -> dict:
        """Device arrays for a call of n tokens, made once per n up to REUSED_TOKENS: the residual stream x
        and the positions as the host hands them over, each step's output, the head's logits."""
        if n in self._scratch:
            return self._scratch[n]
        c = self.config
        q_dim = c.n_head * c.head_dim
        shapes = {"x": c.n_embd, "h": c.n_embd, "qkv": q_dim + 2 * c.kv_dim, "attn": q_dim, "out": c.n_embd,
                  "gu": 2 * self.n_ff, "act": self.n_ff}
        if self.head and n <= REUSED_TOKENS:  # a longer call asks for the last row or a few: made per call
            shapes["logits"] = self.n_vocab
        arrays = {name: cuda.device_array((n, width), np.float32) for name, width in shapes.items()}
        arrays["positions"] = cuda.device_array(n, np.int64)
        if n <= REUSED_TOKENS:
            self._scratch[n] = arrays
        return arrays

    def run(self, x: np.ndarray, positions: np.ndarray, segments: list, output: str | int) -> np.ndarray | None:
        """The offloaded layers on hidden states x (n, n_embd) at `positions`, each segment's keys and values
        in its cache's `device` part. Returns, on the host: with the head on the device, what `output` asks
        for ("last"/"all" logits, k: the last k rows' logits, "hidden" normed states, "none" nothing); without
        it, the hidden states (n, n_embd) for the CPU's final steps and head."""
        with cuda.gpus[self.device.index]:  # the engine's thread, not the loader's, runs this
            return self._run(x, positions, segments, output)

    def _run(self, x: np.ndarray, positions: np.ndarray, segments: list, output: str | int) -> np.ndarray | None:
        n = len(x)
        s = self.scratch(n)
        s["x"].copy_to_device(np.ascontiguousarray(x, dtype=np.float32))
        s["positions"].copy_to_device(np.ascontiguousarray(positions, dtype=np.int64))
        a = DeviceValues(s["x"], s["positions"], segments, s)
        for launch in self.launches:
            launch.run(a)
        if not self.head:
            return a.x.copy_to_host()
        if output == "none":
            cuda.synchronize()
            return None
        rows = a.s["h"][n - output_rows(output, n):]
        if output == "hidden":
            return rows.copy_to_host()
        (step,) = self.recipe.head
        k = len(rows)
        logits = s["logits"][n - k:] if "logits" in s else cuda.device_array((k, self.n_vocab), np.float32)
        self.output(rows, logits)  # the head step: its product here, its soft-capping on the host as the CPU's
        logits = logits.copy_to_host()
        return head_logits(logits, step)

    # --- the launches, each for a run of steps: [(step, its tensors on the device, device layer index)] ----

    def rms_norm(self, run: list) -> Callable[[DeviceValues], None]:
        """h = rms_norm(x), or h = x (no_norm): the first step."""
        ((step, tensors, _),) = run
        weight, eps = getattr(tensors, step.weight) if step.name == "rms_norm" else self.none, self.config.rms_eps
        return lambda a: kernels.launch_rms_norm(a.x, weight, eps, a.s["h"])

    def qkv(self, run: list) -> Callable[[DeviceValues], None]:
        ((_, layer, _),) = run
        return lambda a: layer.qkv(a.s["h"], a.s["qkv"])

    def qk_norm_rope(self, run: list) -> Callable[[DeviceValues], None]:
        """q and k heads normed (qk_norm) and rotated (rope) in place, in one launch; either may be absent. q and k
        normed whole (olmo2) are a launch each before."""
        c, (first, layer, _), (last, _, _) = self.config, run[0], run[-1]
        normed = first.name == "qk_norm"
        q_norm, k_norm = (layer.attn_q_norm, layer.attn_k_norm) if normed else (self.none, self.none)
        cos, sin = layer.rope if last.name == "rope" else (self.none_table, self.none_table)
        n_rot, neox = (last.n_rot, last.neox) if last.name == "rope" else (0, False)
        q_dim, eps = c.n_head * c.head_dim, c.rms_eps
        if normed and first.whole:
            def whole(a: DeviceValues) -> None:
                kernels.launch_rms_norm_span(a.s["qkv"], 0, q_dim, q_norm, eps)
                kernels.launch_rms_norm_span(a.s["qkv"], q_dim, c.kv_dim, k_norm, eps)
                kernels.launch_qk_norm_rope(a.s["qkv"], c.n_head, c.n_head_kv, self.none, self.none, eps, a.positions,
                                            cos, sin, n_rot, neox)
            return whole
        return lambda a: kernels.launch_qk_norm_rope(a.s["qkv"], c.n_head, c.n_head_kv, q_norm, k_norm, eps,
                                                     a.positions, cos, sin, n_rot, neox)

    def attention(self, run: list) -> Callable[[DeviceValues], None]:
        """Each segment's keys and values into its f16 cache, then its queries' attention: attn."""
        c, ((step, layer, i),) = self.config, run
        q_dim = c.n_head * c.head_dim
        sinks = layer.attn_sinks if step.sinks else self.none

        def attend(a: DeviceValues) -> None:
            qkv, attn = a.s["qkv"], a.s["attn"]
            row = 0
            for seg in a.segments:
                keys, values = (kv[i] for kv in seg.cache.device.arrays())
                kernels.launch_elementwise(kernels.store_kv, seg.n * c.kv_dim, qkv, row, seg.n, q_dim, keys, values,
                                           seg.pos0)
                key_start = max(0, seg.pos0 - step.window + 1) if step.window else 0
                stop = seg.pos0 + seg.n
                rows = slice(row, row + seg.n)
                kernels.launch_attention(qkv[rows, :q_dim], keys[key_start:stop], values[key_start:stop], seg.pos0,
                                         key_start, step.window, step.scale, step.softcap, attn[rows],
                                         sinks=sinks)
                row += seg.n

        return attend

    def temperature(self, run: list) -> Callable[[DeviceValues], None]:
        """q (qkv's first columns) times its row's temperature."""
        c, ((step, _, _),) = self.config, run
        q_dim = c.n_head * c.head_dim
        return lambda a: kernels.launch_elementwise(kernels.temperature_rows, a.x.shape[0] * q_dim, a.s["qkv"], q_dim,
                                                    a.positions, step.scale, step.floor_scale)

    def output_projection(self, run: list) -> Callable[[DeviceValues], None]:
        ((_, layer, _),) = run
        return lambda a: layer.output(a.s["attn"], a.s["out"])

    def add_norm(self, run: list) -> Callable[[DeviceValues], None]:
        """x += post_norm(out), then h = the next step's norm of x (the next layer's attn_norm, or the output
        norm; x itself for no_norm), in one launch; at the end without the head, nothing reads that h (normed by
        output_norm)."""
        (post, tensors, _), (last, following, _) = run[0], run[-1]
        post_weight = getattr(tensors, post.weight) if post.name == "post_norm" else self.none
        weight = (getattr(following, last.weight) if last.name == "rms_norm" else self.none if last.name == "no_norm"
                  else self.output_norm)
        eps, scale = self.config.rms_eps, next(step.scale for step, _, _ in run if step.name == "residual")
        return lambda a: kernels.launch_add_norm(a.x, a.s["out"], post_weight, eps, weight, a.s["h"], scale=scale)

    def ffn(self, run: list) -> Callable[[DeviceValues], None]:
        """out = ffn_down(act(gate) * up) of h."""
        ((step, layer, _),) = run

        return lambda a: self._gated_ffn(layer.gate_up, layer.down, a.s["h"], a.s["gu"], a.s["act"], a.s["out"],
                                         step.activation)

    def moe(self, run: list) -> Callable[[DeviceValues], None]:
        ((step, layer, _),) = run
        return lambda a: self._experts(step, layer.experts, a.s["h"], a.s["out"])

    @staticmethod
    def _gated_ffn(gate_up: DeviceMatrices, down: DeviceMatrices, x, gu, act, out, activation: str) -> None:
        """out = down(act(gate) * up) of x, gate and up side by side in gu (scratch, as act)."""
        gate_up(x, gu)
        n_ff = act.shape[1]
        kernels.launch_elementwise(kernels.gated_activation, act.shape[0] * n_ff, gu[:, :n_ff], gu[:, n_ff:],
                                   GATED_ACTIVATIONS.index(activation), act)
        down(act, out)

    @staticmethod
    def _gated_ffn_new(gate_up: DeviceMatrices, down: DeviceMatrices, n_ff: int, x, activation: str):
        """`_gated_ffn` into new arrays: its output (n, n_embd)."""
        n = x.shape[0]
        out = cuda.device_array((n, x.shape[1]), np.float32)
        Offload._gated_ffn(gate_up, down, x, cuda.device_array((n, 2 * n_ff), np.float32),
                           cuda.device_array((n, n_ff), np.float32), out, activation)
        return out

    def _experts(self, step: Moe, experts: DeviceExperts, h, out) -> None:
        """out = the weighted sum of each token's chosen experts (`model.moe`'s order): the router's logits come
        to the host to be routed there exactly as on the CPU, then each chosen expert runs once on the tokens
        routed to it, its weighted outputs placed by rank, and the ranks summed in order."""
        c = self.config
        n = h.shape[0]
        logits = cuda.device_array((n, experts.n_expert), np.float32)
        experts.router(h, logits)
        chosen, weights = route(logits.copy_to_host(), step.n_used, step.weights_scale, step.gating, step.normalize)
        parts = cuda.device_array((step.n_used, n, c.n_embd), np.float32)  # each place written once
        for e in np.unique(chosen):
            rows, ranks = np.nonzero(chosen == e)
            m = len(rows)
            rows_d, ranks_d = cuda.to_device(rows.astype(np.int64)), cuda.to_device(ranks.astype(np.int64))
            xe = cuda.device_array((m, c.n_embd), np.float32)
            kernels.launch_elementwise(kernels.gather_rows, xe.size, h, rows_d, xe)
            y = self._gated_ffn_new(experts.gate_up[e], experts.down[e], experts.n_ff, xe, step.activation)
            w = cuda.to_device(np.ascontiguousarray(weights[rows, ranks], dtype=np.float32))
            kernels.launch_elementwise(kernels.scatter_scaled, y.size, y, rows_d, ranks_d, w, parts)
        kernels.launch_elementwise(kernels.sum_ranks, n * c.n_embd, parts, out)
        if experts.shared is not None:
            y = self._gated_ffn_new(*experts.shared, h, step.activation)
            gate = self.none if experts.shared_gate is None else experts.shared_gate  # none: a weight of 1
            kernels.launch_elementwise(kernels.add_gated, n, out, y, h, gate)


# runs of recipe steps the device does at once, tried in this order at each point of the offloaded steps
# ("name?": a step the run may go without), and the Offload method that makes the launch
LAUNCHES = (
    ("add_norm", ("post_norm?", "residual", "rms_norm|no_norm?")),
    ("rms_norm", ("rms_norm|no_norm",)),
    ("qkv", ("qkv",)),
    ("qk_norm_rope", ("qk_norm?", "rope?")),
    ("temperature", ("temperature",)),
    ("attention", ("attention",)),
    ("output_projection", ("output",)),
    ("ffn", ("ffn",)),
    ("moe", ("moe",)),
)
