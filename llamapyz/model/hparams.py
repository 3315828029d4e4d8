"""Model hyper-parameters read straight from GGUF keys, plus the named options that tell architectures apart.

One forward pass serves every architecture here; what differs is data: `ArchOptions` says what an
architecture does (rope style, norms, activation, sliding windows, soft-capping, which tensor layouts it
accepts), and the file says the rest (a bias is used because its tensor is there, experts because
`expert_count` is set). `recipe.py` turns the two into the steps every backend runs (`llamapyz inspect FILE
--layers` prints them). Adding a family made of existing steps is a new entry in `ARCHITECTURES`, not a new
forward pass. Where an architecture's behaviour is llama.cpp's choice rather than the paper's, the option says so.
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
    qk_norm: bool = False  # per-head RMSNorm of q and k (attn_q_norm, attn_k_norm), required
    qk_norm_whole: bool = False  # qk_norm over each token's whole q (n_head * head_dim) and k, not per head (olmo2)
    pre_norms: bool = True  # each branch's input RMSNorm (attn_norm, ffn_norm); without: it takes x as is (olmo2)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual add
    ffn_activation: str = "silu"  # gate activation: silu or gelu_tanh
    fused_ffn: bool = False  # ffn_up holds [gate; up] (2 n_ff rows) and there is no ffn_gate (phi3)
    experts: str = "no"  # mixture of experts: "no", "optional" (when expert_count is set) or "required"
    rope_factors: str = "none"  # per-frequency rope factors: "none", "freqs" (rope_freqs) or "longrope"
    # sliding windows, as llama.cpp's n_pattern: layer il slides when il % N < N - 1 (N = 0: every layer);
    # None: the architecture has none (phi3 files carry a window that llama.cpp ignores, see pull 13676)
    sliding_window_pattern: int | None = None
    default_sliding_window: int = 0  # tokens, when the file names none
    sliding_window_layers: int = 0  # N > 0: windows only in a model of N layers (llama.cpp's exaone4: the 32B's 64)
    rope_sliding_only: bool = False  # a model with windows rotates only in its sliding layers (exaone4)
    local_rope_base: float | None = None  # rope base of sliding layers unless rope.freq_base_swa; None: global's
    # the sliding layers' rope: "own" (local_rope_base, the file's scaling), "global" (the global layers' rope:
    # llama.cpp's exaone4), "unscaled" (the global base without the file's scaling: its olmo2, for Olmo 3)
    sliding_rope: str = "own"
    attn_softcap: float = 0.0  # default attention-logit soft-capping (file key attn_logit_softcapping wins)
    final_softcap: float = 0.0  # default final-logit soft-capping (file key final_logit_softcapping wins)
    wide_attention_scale_layers: int = 0  # llama.cpp scales the 27B gemmas (known by layer count) by
    # 1/sqrt(n_embd / n_head) instead of 1/sqrt(head_dim)
    no_rope_layer_step: int = 0  # N > 0: layer il rotates nothing when (il + 1) % N == 0 (smollm3: every 4th)
    yarn_keys: bool = False  # YaRN reads rope.scaling.yarn_beta_fast/_slow and yarn_log_multiplier; llama.cpp
    # reads them for a few families only (mistral3, deepseek2): the others keep 32, 1 and none
    ffn_norm: str = "ffn_norm"  # the FFN's input norm (gpt-oss names it post_attention_norm)
    # how the router's logits weight the chosen experts: "softmax" (over all experts, then top-k) or
    # "softmax_weight" (top-k of the logits, softmax over those k: gpt-oss)
    expert_gating: str = "softmax"
    expert_weights_norm: bool = True  # the chosen experts' softmax weights renormalized to sum to 1 (not qwen2moe)
    attn_temperature: bool = False  # q scaled by position past the original context (attention.temperature_scale)
    # granite's scalar multipliers from the file: embedding_scale (embeddings times it), attention.scale (instead of
    # 1/sqrt(head_dim)), residual_scale (each branch's output times it before the residual add), logit_scale
    # (required: the logits divided by it)
    multipliers: bool = False


@dataclass(frozen=True)
class Yarn:
    """YaRN rope scaling (rope.scaling.type yarn), as ggml's rope applies it: each frequency's angle mixes the
    interpolated one (position * freq_scale) and the original one by a ramp over the rotary dimensions, from
    the dimensions that turn beta_fast times over original_ctx positions (kept as trained) down to those that
    turn beta_slow times (fully interpolated); the magnitude correction is in the rope's attn_factor."""

    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_ctx: int = 4096  # the context the model was trained on before scaling

    def __str__(self) -> str:
        return f"yarn(beta {self.beta_fast:g}/{self.beta_slow:g}, original {self.original_ctx})"


ARCHITECTURES: dict[str, ArchOptions] = {
    "llama": ArchOptions(experts="optional", rope_factors="freqs"),
    "qwen2": ArchOptions(rope_neox=True),
    "qwen3": ArchOptions(rope_neox=True, qk_norm=True),
    "qwen3moe": ArchOptions(rope_neox=True, qk_norm=True, experts="required"),
    "phi3": ArchOptions(rope_neox=True, fused_ffn=True, rope_factors="longrope"),
    "smollm3": ArchOptions(no_rope_layer_step=4),
    "qwen2moe": ArchOptions(rope_neox=True, experts="required", expert_weights_norm=False),
    "mistral3": ArchOptions(experts="optional", rope_factors="freqs", yarn_keys=True, attn_temperature=True),
    "gpt-oss": ArchOptions(rope_neox=True, experts="required", sliding_window_pattern=2, default_sliding_window=128,
                           ffn_norm="post_attention_norm",
                           ffn_activation="swiglu_oai", expert_gating="softmax_weight", expert_weights_norm=False),
    # ernie4_5: llama's layer (pairs rope, an optional attn_output bias); its MoE is another architecture
    "ernie4_5": ArchOptions(),
    # olmo2: no input norms, q and k normed whole, post-norms; Olmo 3's files (olmo2 too) add a window with
    # llama.cpp's n_pattern 4 (or the file's per-layer list), its sliding layers' rope unscaled
    "olmo2": ArchOptions(rope_neox=True, qk_norm=True, qk_norm_whole=True, pre_norms=False, post_norms=True,
                         sliding_window_pattern=4, sliding_rope="unscaled"),
    # exaone4: olmo2's layer with per-head q/k norms; windows only in the 64-layer 32B (llama.cpp decides by the
    # layer count), whose global layers have no rope
    "exaone4": ArchOptions(rope_neox=True, qk_norm=True, pre_norms=False, post_norms=True, rope_factors="freqs",
                           sliding_window_pattern=4, default_sliding_window=4096, sliding_window_layers=64,
                           sliding_rope="global", rope_sliding_only=True),
    # glm4: interleaved (NORM) rope, usually on part of each head; input and post norms; ffn_up = [gate; up]; the
    # attn_qkv (with its bias) a file has is a layout the loader takes anyway
    "glm4": ArchOptions(post_norms=True, fused_ffn=True),
    # granite: llama's layer (pairs rope, optional rope_freqs and biases) with its scalar multipliers
    "granite": ArchOptions(rope_factors="freqs", multipliers=True),
    # granitemoe: granite's graph in llama.cpp with experts (softmax, renormalized) and an optional plain shared
    # expert (Granite MoE Shared)
    "granitemoe": ArchOptions(rope_factors="freqs", multipliers=True, experts="required"),
    "gemma2": ArchOptions(
        rope_neox=True,
        scale_embeddings=True,
        post_norms=True,
        ffn_activation="gelu_tanh",
        sliding_window_pattern=2,
        default_sliding_window=4096,
        attn_softcap=50.0,
        final_softcap=30.0,
        wide_attention_scale_layers=46,
    ),
    "gemma3": ArchOptions(
        rope_neox=True,
        scale_embeddings=True,
        qk_norm=True,
        post_norms=True,
        ffn_activation="gelu_tanh",
        sliding_window_pattern=6,
        local_rope_base=10000.0,
        wide_attention_scale_layers=62,
    ),
}

ROPE_SCALING = ("none", "linear", "longrope", "yarn")  # rope.scaling.type values we apply
# far above any model's (the largest have ~130): per-layer tables are made before the tensors are checked
MAX_LAYERS = 1 << 16
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
FLOAT32_TRUE_MIN = 1.401298464324817e-45  # the smallest positive (subnormal) float32


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
    local_rope_base: float  # rope base of the sliding-window layers
    rope_freq_scale: float  # positions are multiplied by it (linear rope scaling: 1 / factor)
    rope_attn_factor: float  # cos and sin are multiplied by it (rope.scaling.attn_factor; YaRN's correction)
    rope_scaling: str  # rope.scaling.type: none, linear, longrope or yarn
    rope_original_ctx: int  # LongRoPE: contexts longer than this use the long factors
    rope_yarn: Yarn | None  # YaRN's ramp, when rope.scaling.type is yarn
    n_rot: int
    sliding_window: int  # tokens; 0: every layer sees the whole context
    attn_softcap: float  # 0: none
    final_softcap: float  # 0: none
    n_expert: int  # 0: a dense FFN
    n_expert_used: int
    expert_weights_scale: float
    sliding_layers: tuple[bool, ...]  # per layer: uses the sliding window
    attn_temp_scale: float = 0.0  # q times 1 + attn_temp_scale * ln(floor(p / original_ctx) + 1) at position p
    embedding_scale: float = 1.0  # the embeddings times it (granite's embedding_scale)
    residual_scale: float = 1.0  # each branch's output times it before the residual add (granite)
    logit_scale: float = 1.0  # the logits divided by it (granite)
    attn_scale: float = 0.0  # attention's score scale when not 0 (granite's attention.scale); else 1/sqrt(head_dim)

    @classmethod
    def from_metadata(cls, md: dict[str, Any]) -> ModelConfig:
        arch = md.get("general.architecture")
        if not isinstance(arch, str) or arch not in ARCHITECTURES:  # a list or a number: no dict lookup
            raise UnsupportedModelError(
                f"model architecture {arch!r} is not supported",
                hint=f"llamapyz runs these architectures: {', '.join(sorted(ARCHITECTURES))}",
            )
        options = ARCHITECTURES[arch]

        def key(name: str, default: Any = None) -> Any:
            value = md.get(f"{arch}.{name}", default)
            if value is None:
                raise UnsupportedModelError(f"{arch} model is missing metadata key {arch}.{name}")
            if not isinstance(value, (int, float, str)):  # e.g. per-layer head counts (OpenELM-style)
                raise UnsupportedModelError(f"{arch} model: {arch}.{name} = {str(value)[:40]} is not supported "
                                            "(a single value is)")
            return value

        def integer(name: str, default: Any = None, least: int = 0) -> int:
            value = key(name, default)
            whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
            if isinstance(value, bool) or not whole or not least <= value < 2**31:
                raise _corrupt(arch, name, value, f"an integer from {least} to 2^31 - 1")
            return int(value)

        def real(name: str, default: Any = None, zero: bool = False) -> float:
            # the kernels take these as float32: a float64 key must not round to 0 or overflow to inf there
            value = key(name, default)
            if (isinstance(value, (bool, str)) or not math.isfinite(value) or value < 0 or value > FLOAT32_MAX
                    or (value < FLOAT32_TRUE_MIN and (value != 0 or not zero))):
                raise _corrupt(arch, name, value, "a finite float32 " + (">= 0" if zero else "> 0"))
            return float(value)

        n_layer = integer("block_count", least=1)
        if n_layer > MAX_LAYERS:
            raise _corrupt(arch, "block_count", n_layer, f"at most {MAX_LAYERS}")
        n_embd = integer("embedding_length", least=1)
        n_head = integer("attention.head_count", least=1)
        n_head_kv = integer("attention.head_count_kv", n_head, least=1)
        if n_head % n_head_kv:
            raise _corrupt(arch, "attention.head_count_kv", n_head_kv, f"a divisor of head_count ({n_head})")
        head_dim = integer("attention.key_length", max(1, n_embd // n_head), least=1)
        if integer("attention.value_length", head_dim) != head_dim:
            raise UnsupportedModelError(f"{arch} model: value heads of another size than key heads are not supported")
        n_rot = integer("rope.dimension_count", head_dim, least=2)
        if n_rot > head_dim or n_rot % 2:
            raise _corrupt(arch, "rope.dimension_count", n_rot, f"an even number up to the head size ({head_dim})")
        sections = md.get(f"{arch}.rope.dimension_sections")  # GLM-OCR's and PaddleOCR's multi-axis rope
        if hasattr(sections, "tolist"):
            sections = sections.tolist()
        if isinstance(sections, list) and any(sections):
            raise UnsupportedModelError(f"{arch} model: multi-axis rope (rope.dimension_sections = {sections[:4]}) "
                                        "is not supported")
        rope_base = real("rope.freq_base", 10000.0)
        scaling = str(key("rope.scaling.type", "linear"))
        if scaling not in ROPE_SCALING:
            raise UnsupportedModelError(f"{arch} model: rope scaling {scaling!r} is not supported",
                                        hint=f"llamapyz applies these: {', '.join(ROPE_SCALING)}")
        factor = real("rope.scaling.factor", 0.0, zero=True)
        freq_scale = 1.0 if scaling == "none" or factor == 0.0 else 1.0 / factor
        n_ctx_train = integer("context_length", 4096, least=1)
        original_ctx = integer("rope.scaling.original_context_length", n_ctx_train, least=1)
        yarn, log_mul = None, 0.0
        if scaling == "yarn":
            keys = options.yarn_keys
            yarn = Yarn(real("rope.scaling.yarn_beta_fast", 32.0) if keys else 32.0,
                        real("rope.scaling.yarn_beta_slow", 1.0) if keys else 1.0, original_ctx)
            log_mul = real("rope.scaling.yarn_log_multiplier", 0.0, zero=True) if keys else 0.0
        n_expert = integer("expert_count", 0)
        if options.experts == "no" and n_expert:
            raise UnsupportedModelError(f"{arch} model: experts (expert_count = {n_expert}) are not supported "
                                        f"for this architecture")
        if options.experts == "required" and not n_expert:
            raise UnsupportedModelError(f"{arch} model is missing metadata key {arch}.expert_count")
        n_expert_used = integer("expert_used_count", 0, least=1) if n_expert else 0
        if n_expert_used > n_expert:
            raise _corrupt(arch, "expert_used_count", n_expert_used, f"at most expert_count ({n_expert})")
        multipliers = {}
        if options.multipliers:
            if not md.get(f"{arch}.rope.scaling.finetuned", True):  # llama.cpp: no rope in any layer then
                raise UnsupportedModelError(f"{arch} model: rope.scaling.finetuned = false (no rope) is not supported")
            mapping = md.get(f"{arch}.deepstack_mapping")
            if mapping is not None and any(int(m) >= 0 for m in list(mapping)):
                raise UnsupportedModelError(f"{arch} model: deepstack layers (a vision model's) are not supported")
            # llama.cpp applies each only when not 0; 1 is the same (a product by 1 is exact)
            multipliers = dict(embedding_scale=real("embedding_scale", 0.0, zero=True) or 1.0,
                               residual_scale=real("residual_scale", 0.0, zero=True) or 1.0,
                               logit_scale=real("logit_scale"),
                               attn_scale=real("attention.scale", 0.0, zero=True))
        if integer("nextn_predict_layers", 0):  # multi-token prediction layers, which llama.cpp loads but skips
            raise UnsupportedModelError(f"{arch} model: nextn (multi-token prediction) layers are not supported")
        pattern = options.sliding_window_pattern
        if options.sliding_window_layers and n_layer != options.sliding_window_layers:
            pattern = None
        window = integer("attention.sliding_window", options.default_sliding_window) if pattern is not None else 0
        return cls(
            arch=arch,
            options=options,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx_train=n_ctx_train,
            rms_eps=real("attention.layer_norm_rms_epsilon", 1e-5),
            rope_base=rope_base,
            local_rope_base=real("rope.freq_base_swa", options.local_rope_base or rope_base),
            rope_freq_scale=freq_scale,
            rope_attn_factor=real("rope.scaling.attn_factor", 1.0) * (yarn_magnitude(arch, 1 / freq_scale, log_mul)
                                                                     if yarn else 1.0),
            rope_scaling=scaling,
            rope_original_ctx=original_ctx,
            rope_yarn=yarn,
            n_rot=n_rot,
            sliding_window=window,
            attn_softcap=(real("attn_logit_softcapping", options.attn_softcap, zero=True) if options.attn_softcap
                          else 0.0),
            final_softcap=real("final_logit_softcapping", options.final_softcap, zero=True),
            n_expert=n_expert,
            n_expert_used=n_expert_used,
            expert_weights_scale=real("expert_weights_scale", 0.0, zero=True),
            sliding_layers=_sliding_layers(md.get(f"{arch}.attention.sliding_window_pattern", pattern), n_layer,
                                           window),
            attn_temp_scale=real("attention.temperature_scale", 0.0, zero=True) if options.attn_temperature else 0.0,
            **multipliers,
        )

    def is_global(self, layer: int) -> bool:
        """Whether the layer attends to the whole context (always, unless the model has sliding windows)."""
        return not self.sliding_layers[layer]

    def rope_base_of(self, layer: int) -> float:
        return self.rope_base if self.is_global(layer) else self.local_rope_base

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    @property
    def attention_scale(self) -> float:
        if self.attn_scale:
            return self.attn_scale
        if self.n_layer == self.options.wide_attention_scale_layers:
            return 1.0 / math.sqrt(self.n_embd // self.n_head)
        return 1.0 / math.sqrt(self.head_dim)


def _corrupt(arch: str, name: str, value: Any, rule: str) -> UnsupportedModelError:
    """The error for a hyper-parameter the forward pass cannot use (a corrupt or hostile file): checked at
    load, so no kernel ever indexes or divides by it."""
    return UnsupportedModelError(f"{arch} model: {arch}.{name} = {repr(value)[:60]} must be {rule}",
                                 hint="the file's metadata is corrupt, or not for this architecture")


def yarn_magnitude(arch: str, factor: float, log_mul: float) -> float:
    """YaRN's correction of cos and sin for a context `factor` times the original, as llama.cpp ends up applying
    it (llama-context.cpp sets yarn_attn_factor, ggml's rope multiplies by 1 + 0.1 ln(factor), which the former
    cancels): 1 + 0.1 ln(factor); with yarn_log_multiplier m, (1 + 0.1 ln f) / (1 + 0.1 m ln f) (deepseek2 takes
    m for both, so 1)."""
    def mscale(m: float) -> float:
        return 1.0 if factor <= 1.0 else 0.1 * m * math.log(factor) + 1.0

    if log_mul:
        return mscale(log_mul if arch == "deepseek2" else 1.0) / mscale(log_mul)
    return mscale(1.0)


def _sliding_layers(pattern: Any, n_layer: int, window: int) -> tuple[bool, ...]:
    """Which layers slide: none without a window; else the file's per-layer list (sliding_window_pattern
    as an array of bools), or llama.cpp's n_pattern rule (il % N < N - 1; N = 0: every layer)."""
    if pattern is None or not window:
        return (False,) * n_layer
    if hasattr(pattern, "tolist"):  # a numpy array from the reader
        pattern = pattern.tolist()
    if isinstance(pattern, list):
        if len(pattern) < n_layer:
            raise UnsupportedModelError(f"sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
        if not all(isinstance(p, int) for p in pattern[:n_layer]):  # bools (or 0/1), not strings or arrays
            raise UnsupportedModelError(f"sliding_window_pattern = {str(pattern)[:40]} must be a list of booleans")
        return tuple(bool(p) for p in pattern[:n_layer])
    if isinstance(pattern, bool) or not isinstance(pattern, int) or not 0 <= pattern < 2**31:
        raise UnsupportedModelError(f"sliding_window_pattern = {str(pattern)[:40]} must be an integer >= 0 or a "
                                    "list of booleans")
    n = pattern
    return tuple(n == 0 or il % n < n - 1 for il in range(n_layer))
