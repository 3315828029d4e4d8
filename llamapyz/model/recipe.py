"""A family's forward pass as a recipe of named steps: the one place that says what a family does.

`recipe(config, tensors)` derives it from a model's hyper-parameters (`hparams.ModelConfig`: the family's
`ArchOptions` and the file's numbers) and the names of the tensors its file holds (a bias is used because
its tensor is there, a fused `attn_qkv` because it is there). A `Recipe` is the steps before the layers, each
layer's steps (sliding and global layers differ in their attention window and rope base), the final norm and
the head.

Every backend executes a recipe, with one implementation per step name (`STEPS`) and no other knowledge of
families: the Python steps (`forward.py`), the fused numba kernels (`fused.py`: one kernel for a run of
consecutive steps, matched by name with `match`), the CUDA layers (`gpu/offload.py`) and the numpy reference
(`reference.py`). None of them reads `ArchOptions`. So a new mechanism is a new step implemented once per
backend, and a family made of existing steps is one entry in `hparams.ARCHITECTURES`.

The steps act on a forward call's activations: x, the residual stream (n, n_embd); h, the current branch's
value (a norm's output, then q/k/v's projection, attention's, the FFN's; the logits after the head); q, k, v,
attention's inputs. Tensor names are GGUF's without the `blk.{i}.` prefix and the `.weight` suffix.

`str(recipe)` prints it in a few lines (`llamapyz inspect FILE --layers`, docs/architectures.md).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .hparams import ModelConfig, Yarn


class Step:
    """A named step of a recipe; each kind is a frozen dataclass below, its fields the step's settings."""

    name: ClassVar[str]


@dataclass(frozen=True)
class Embed(Step):
    """x = token_embd's rows of the tokens, times sqrt(n_embd) when `scaled` (gemma), times `multiplier` (a float32
    product) unless it is 1 (granite's embedding_scale)."""

    name = "embed"
    scaled: bool = False
    multiplier: float = 1.0

    def __str__(self) -> str:
        return ("embed(token_embd" + (", × √n_embd" if self.scaled else "")
                + (f", × {self.multiplier:g}" if self.multiplier != 1.0 else "") + ")")


@dataclass(frozen=True)
class RmsNorm(Step):
    """h = rms_norm(x) * weight: a branch's input, or (`output_norm`) the final hidden state."""

    name = "rms_norm"
    weight: str

    def __str__(self) -> str:
        return f"rms_norm({self.weight})"


@dataclass(frozen=True)
class NoNorm(Step):
    """h = x: a branch that takes the residual stream as it is (olmo2's layers have no input norms)."""

    name = "no_norm"

    def __str__(self) -> str:
        return "no_norm"


@dataclass(frozen=True)
class Qkv(Step):
    """q, k, v = h @ attn_q.T, h @ attn_k.T, h @ attn_v.T (+ their biases). `fused`: the file holds the three
    as one attn_qkv (a layout the loader resolves into row slices)."""

    name = "qkv"
    fused: bool = False
    bias: bool = False

    def __str__(self) -> str:
        tensors = "attn_qkv" if self.fused else "attn_q, attn_k, attn_v"
        return f"qkv({tensors}{', +bias' if self.bias else ''})"


@dataclass(frozen=True)
class QkNorm(Step):
    """Each head of q rms-normed with attn_q_norm, each of k with attn_k_norm (head_dim,); `whole`: each token's
    whole q (n_head * head_dim) and whole k (n_head_kv * head_dim) normed at once, the weights that long (olmo2)."""

    name = "qk_norm"
    whole: bool = False

    def __str__(self) -> str:
        return f"qk_norm(attn_q_norm, attn_k_norm{', over all heads' if self.whole else ''})"


@dataclass(frozen=True)
class Rope(Step):
    """q and k rotated by position: pairs (i, i + n_rot/2) when `neox`, else (2i, 2i+1); frequency i turns by
    p * freq_scale * base^(-2i/n_rot) / factor_i (factors: "freqs", the file's rope_freqs; "longrope", its long
    or short set by the context's length; "": none), cos and sin times attn_factor. Dimensions past n_rot
    stay."""

    name = "rope"
    neox: bool
    base: float
    n_rot: int
    head_dim: int
    factors: str = ""
    freq_scale: float = 1.0
    attn_factor: float = 1.0
    yarn: Yarn | None = None  # YaRN's ramp between the scaled and the original angles

    def __str__(self) -> str:
        parts = ["neox" if self.neox else "pairs", f"base={self.base:.10g}"]
        if self.n_rot != self.head_dim:
            parts.append(f"n_rot={self.n_rot} of {self.head_dim}")
        if self.factors:
            parts.append(f"factors={'rope_freqs' if self.factors == 'freqs' else self.factors}")
        if self.freq_scale != 1.0:
            parts.append(f"freq_scale={self.freq_scale:g}")
        if self.attn_factor != 1.0:
            parts.append(f"attn_factor={self.attn_factor:g}")
        if self.yarn is not None:
            parts.append(str(self.yarn))
        return f"rope({', '.join(parts)})"


@dataclass(frozen=True)
class Temperature(Step):
    """q times 1 + scale * ln(floor(p / floor_scale) + 1) at position p: attention sharpened past the original
    context (llama 4's temperature tuning, as mistral3 reads it)."""

    name = "temperature"
    scale: float
    floor_scale: int

    def __str__(self) -> str:
        return f"temperature(q × 1 + {self.scale:g} ln(⌊p / {self.floor_scale}⌋ + 1))"


@dataclass(frozen=True)
class Attention(Step):
    """Each sequence's k and v stored in its cache; h = causal attention of q over the cached keys (those
    within `window` positions when window > 0), scores times `scale`, each score s soft-capped to
    softcap * tanh(s / softcap) when softcap > 0. `sinks`: each head's softmax also counts one more score,
    attn_sinks[head], that has no value (gpt-oss's attention sinks: a head may attend to nothing)."""

    name = "attention"
    window: int
    scale: float
    softcap: float = 0.0
    sinks: bool = False

    def __str__(self) -> str:
        parts = [f"window={self.window}" if self.window else "global"]
        d = 1.0 / (self.scale * self.scale)
        parts.append(f"scale=1/√{round(d)}" if math.isclose(d, round(d), rel_tol=1e-6) else f"scale={self.scale:g}")
        if self.softcap:
            parts.append(f"softcap={self.softcap:g}")
        if self.sinks:
            parts.append("attn_sinks")
        return f"attention({', '.join(parts)})"


@dataclass(frozen=True)
class Output(Step):
    """h = h @ attn_output.T (+ its bias)."""

    name = "output"
    bias: bool = False

    def __str__(self) -> str:
        return f"output(attn_output{', +bias' if self.bias else ''})"


@dataclass(frozen=True)
class PostNorm(Step):
    """h = rms_norm(h) * weight: a branch's output normed before it joins the residual (gemma)."""

    name = "post_norm"
    weight: str

    def __str__(self) -> str:
        return f"post_norm({self.weight})"


@dataclass(frozen=True)
class Residual(Step):
    """x += h, h first times `scale` (a float32 product) unless it is 1 (granite's residual_scale)."""

    name = "residual"
    scale: float = 1.0

    def __str__(self) -> str:
        return "residual" + (f"(h × {self.scale:g})" if self.scale != 1.0 else "")


@dataclass(frozen=True)
class Ffn(Step):
    """h = ffn_down(act(h @ ffn_gate.T) * (h @ ffn_up.T)) (+ biases), act silu or gelu_tanh; or, act swiglu_oai
    (gpt-oss), g = min(gate, 7) and u = clamp(up, -7, 7) give g * sigmoid(1.702 g) * (u + 1). `fused`: the
    file's ffn_up holds [gate; up] (a layout the loader resolves into row slices)."""

    name = "ffn"
    activation: str
    fused: bool = False
    bias: bool = False

    def __str__(self) -> str:
        tensors = "ffn_up = [gate; up], ffn_down" if self.fused else "ffn_gate, ffn_up, ffn_down"
        return f"ffn({self.activation}, {tensors}{', +bias' if self.bias else ''})"


@dataclass(frozen=True)
class Moe(Step):
    """Mixture of experts (`moe.py`): router logits h @ ffn_gate_inp.T (+ its bias); gating "softmax": softmax
    over all experts, the n_used most probable, their weights renormalized when `normalize`; "softmax_weight":
    the n_used largest logits, softmax over those; then times weights_scale unless 0 or 1. h = the weighted
    sum, best first, of each chosen expert's gated FFN (ffn_{gate,up,down}_exps[e] (+ their biases), act as
    `Ffn`). `shared`: plus a shared expert's FFN (ffn_{gate,up,down}_shexp), weighted by
    sigmoid(h @ ffn_gate_inp_shexp.T) when "gated", by 1 when "plain"."""

    name = "moe"
    activation: str
    n_expert: int
    n_used: int
    weights_scale: float = 0.0
    gating: str = "softmax"
    normalize: bool = True
    bias: bool = False
    shared: str = ""

    def __str__(self) -> str:
        scale = f", × {self.weights_scale:g}" if self.weights_scale not in (0.0, 1.0) else ""
        gating = ("softmax of the top logits" if self.gating == "softmax_weight"
                  else "softmax" + (", renormalized" if self.normalize else ""))
        shared = {"gated": ", + sigmoid-gated shared expert", "plain": ", + shared expert"}.get(self.shared, "")
        return (f"moe({self.activation}, top {self.n_used} of {self.n_expert} experts, {gating}{scale}, "
                f"ffn_gate_inp, ffn_{{gate,up,down}}_exps{', +bias' if self.bias else ''}{shared})")


@dataclass(frozen=True)
class Head(Step):
    """h = logits = h @ output.T (token_embd's rows when `tied`: the file has no output), each logit soft-capped
    to softcap * tanh(l / softcap) when softcap > 0, or times float32(1 / logit_scale) unless that is 1
    (granite's logit_scale, as llama.cpp's ggml_scale applies it)."""

    name = "head"
    tied: bool = False
    softcap: float = 0.0
    logit_scale: float = 1.0

    @property
    def tensor(self) -> str:
        return "token_embd" if self.tied else "output"

    @property
    def multiplier(self) -> np.float32:
        """What the logits are multiplied by: 1 / logit_scale, in float32 as ggml computes it."""
        return np.float32(1.0) / np.float32(self.logit_scale)

    def __str__(self) -> str:
        scale = f", / {self.logit_scale:g}" if self.logit_scale != 1.0 else ""
        return f"head({self.tensor}{f', softcap={self.softcap:g}' if self.softcap else ''}{scale})"


STEPS: tuple[type[Step], ...] = (Embed, RmsNorm, NoNorm, Qkv, QkNorm, Rope, Temperature, Attention, Output, PostNorm,
                                 Residual, Ffn, Moe, Head)
Steps = tuple[Step, ...]


@dataclass(frozen=True)
class Recipe:
    """What a model computes: `embed` on the tokens, each layer's steps in turn, `final` on the last hidden
    state (a call asking for hidden states stops there), then `head`."""

    arch: str
    embed: Steps
    layers: tuple[Steps, ...]
    final: Steps
    head: Steps

    def kinds(self) -> list[tuple[list[int], Steps]]:
        """The distinct layers, in order of first appearance: (the layers that have these steps, the steps)."""
        seen: dict[Steps, list[int]] = {}
        for il, steps in enumerate(self.layers):
            seen.setdefault(steps, []).append(il)
        return [(layers, steps) for steps, layers in seen.items()]

    def lines(self) -> list[str]:
        """The printable form: every step of the first kind of layer, and for each other kind the steps in
        which it differs (or all of them, when it has other steps)."""
        lines = [f"{self.arch}, {len(self.layers)} layers:", *(f"  {step}" for step in self.embed)]
        kinds = self.kinds()
        first_layers, first = kinds[0]
        for layers, steps in kinds:
            label = "every layer" if len(kinds) == 1 else f"layer{'s' if len(layers) > 1 else ''} {span(layers)}"
            if steps is first or len(steps) != len(first):
                lines += [f"  {label}:", *(f"    {step}" for step in steps)]
            else:
                lines.append(f"  {label}: as layer {first_layers[0]}, but")
                lines += [f"    {step}" for step, was in zip(steps, first, strict=True) if step != was]
        return lines + [f"  {step}" for step in self.final + self.head]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def as_json(self) -> dict:
        return {"arch": self.arch, "n_layer": len(self.layers), "embed": [str(s) for s in self.embed],
                "layers": [{"layers": layers, "steps": [str(s) for s in steps]} for layers, steps in self.kinds()],
                "final": [str(s) for s in self.final], "head": [str(s) for s in self.head]}


def span(indices: Sequence[int]) -> str:
    """0, 1, 2, 3, 5 -> "0-3, 5"; an arithmetic run of four or more with a step over 1 -> "1, 3, …, 25"."""
    steps = {b - a for a, b in zip(indices, indices[1:], strict=False)}
    if len(indices) >= 4 and len(steps) == 1 and steps != {1}:
        return f"{indices[0]}, {indices[1]}, …, {indices[-1]}"
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def recipe(config: ModelConfig, tensors: Collection[str]) -> Recipe:
    """The recipe of a model with these hyper-parameters whose file holds these tensors (full GGUF names)."""
    c, names = config, frozenset(tensors)
    kinds: dict[Steps, Steps] = {}  # one tuple per kind of layer, shared by the layers of that kind
    layers = tuple(kinds.setdefault(steps, steps) for steps in (_layer(c, names, il) for il in range(c.n_layer)))
    return Recipe(c.arch, (Embed(c.options.scale_embeddings, c.embedding_scale),), layers, (RmsNorm("output_norm"),),
                  (Head("output.weight" not in names, c.final_softcap, c.logit_scale),))


def _layer(c: ModelConfig, names: frozenset[str], il: int) -> Steps:
    """Layer il's steps: attention with its norms and residual, then the FFN (or experts) with theirs."""
    opt, p = c.options, f"blk.{il}."
    fused_qkv = f"{p}attn_qkv.weight" in names
    qkv = ("attn_qkv",) if fused_qkv else ("attn_q", "attn_k", "attn_v")
    steps: list[Step] = [RmsNorm("attn_norm") if opt.pre_norms else NoNorm(),
                         Qkv(fused_qkv, any(f"{p}{t}.bias" in names for t in qkv))]
    if opt.qk_norm:
        steps.append(QkNorm(opt.qk_norm_whole))
    unrotated = (opt.no_rope_layer_step and (il + 1) % opt.no_rope_layer_step == 0) or (
        opt.rope_sliding_only and any(c.sliding_layers) and c.is_global(il))
    if not unrotated:
        base = c.rope_base if opt.sliding_rope != "own" else c.rope_base_of(il)
        if opt.sliding_rope == "unscaled" and not c.is_global(il):
            steps.append(Rope(opt.rope_neox, base, c.n_rot, c.head_dim))
        else:
            steps.append(Rope(opt.rope_neox, base, c.n_rot, c.head_dim, rope_factors(c, names), c.rope_freq_scale,
                              c.rope_attn_factor, c.rope_yarn))
    if c.attn_temp_scale:
        steps.append(Temperature(c.attn_temp_scale, c.rope_original_ctx))
    steps += [Attention(0 if c.is_global(il) else c.sliding_window, c.attention_scale, c.attn_softcap,
                        f"{p}attn_sinks.weight" in names),
              Output(f"{p}attn_output.bias" in names)]
    if opt.post_norms:
        steps.append(PostNorm("post_attention_norm"))
    steps += [Residual(c.residual_scale), RmsNorm(opt.ffn_norm) if opt.pre_norms else NoNorm()]
    if c.n_expert:
        shared = "" if f"{p}ffn_down_shexp.weight" not in names else (
            "gated" if f"{p}ffn_gate_inp_shexp.weight" in names else "plain")
        steps.append(Moe(opt.ffn_activation, c.n_expert, c.n_expert_used, c.expert_weights_scale, opt.expert_gating,
                         opt.expert_weights_norm,
                         any(f"{p}ffn_{t}.bias" in names for t in ("gate_inp", "gate_exps", "up_exps", "down_exps")),
                         shared))
    else:
        biased = any(f"{p}ffn_{t}.bias" in names for t in ("gate", "up", "down"))
        steps.append(Ffn(opt.ffn_activation, opt.fused_ffn, biased))
    if opt.post_norms:
        steps.append(PostNorm("post_ffw_norm"))
    steps.append(Residual(c.residual_scale))
    return tuple(steps)


def rope_factors(c: ModelConfig, names: Collection[str]) -> str:
    """Which per-frequency rope factors the model applies: "freqs" (Llama 3.1's rope_freqs), "longrope" (the
    long and short sets) or "" (none); the loader takes the same tensors."""
    kind = "longrope" if c.rope_scaling == "longrope" else c.options.rope_factors
    if kind == "freqs" and "rope_freqs.weight" in names:
        return "freqs"
    if kind == "longrope" and ("rope_factors_long.weight" in names or "rope_factors_short.weight" in names):
        return "longrope"
    return ""


def match(pattern: Sequence[str], steps: Sequence[Step], start: int) -> int:
    """How many steps from `start` a run of step names covers ("name?": a step the run may go without;
    "name|other": either), or 0 when it does not match: how a backend finds the runs of steps one of its
    kernels does at once."""
    i = start
    for want in pattern:
        if i < len(steps) and steps[i].name in want.rstrip("?").split("|"):
            i += 1
        elif not want.endswith("?"):
            return 0
    return i - start
