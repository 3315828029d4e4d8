"""Every architecture's options on tiny synthetic models (tests/synth.py), engine against the numpy
reference, plus the strict loader: a tensor the forward pass would not use is refused by name.

The real check against llama.cpp, on models derived from real weights, is tests/test_arch_golden.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from llamapyz import Model, UnsupportedModelError
from llamapyz.model.hparams import ModelConfig, Yarn
from llamapyz.model.moe import route
from llamapyz.model.ops import Rope
from llamapyz.model.reference import ReferenceModel
from tests.synth import write_model

PROMPT = "the cat in the hat, there and here; the end of it all, and then some more of the cat"
# Largest logit error allowed, as a fraction of the reference's logit range. F16 has no integer kernel:
# float rounding only (measured <= 2.8e-3, gemma2's soft-capped range being the smallest), so F16 holds each
# architecture's arithmetic tightly. The integer formats quantize activations to int8 blocks (as llama.cpp
# does; see tests/test_model.py), whose error these random tiny models amplify: measured <= 1.0e-2 for Q8_0;
# Q4_K takes llama.cpp's coarser q8_K (one scale per 256): <= 5.8e-2, and 0.116 for qwen3moe, where the
# noise tips an expert choice of the random router. Their kernels are held to 1e-4 against exact twins in
# tests/test_kernels.py, and prefill against decode bit for bit in tests/test_exactness.py.
TOLERANCE = {"F16": 5e-3, "Q8_0": 0.02, "Q4_K": 0.15}
# The same tip of an expert choice, measured: gpt-oss with MXFP4 experts at Q8_0 is within 0.006 at 63 of 64
# positions, but at position 3 layer 2's router has its 2nd and 3rd logits 0.008 apart and the int8 noise swaps
# them (0.074 there). Its F16 variant (0.006: its experts' activations are int8 too, MXFP4 pairs with q8_0) and
# the plain gpt-oss variant hold the usual bounds.
ROUTER_TIES = {("gpt-oss-mxfp4", "Q8_0"): 0.1, ("gpt-oss-mxfp4", "F16"): 0.01}

VARIANTS = {  # name: (arch, write_model options, n_ctx)
    "qwen2": ("qwen2", {}, 64),
    "qwen3": ("qwen3", {}, 64),
    "qwen3moe": ("qwen3moe", {}, 64),
    "phi3-long": ("phi3", {}, 64),  # n_ctx 64 > original context 32: LongRoPE's long factors
    "phi3-short": ("phi3", {}, 32),
    "gemma2": ("gemma2", {"n_layer": 4}, 64),  # sliding window 8 on layers 0 and 2
    "llama-moe": ("llama", {"experts": True}, 64),
    "llama-rope-freqs": ("llama", {"rope_freqs": True}, 64),
    "qwen3-yarn": ("qwen3", {"yarn": True}, 128),  # past the original context of 64
    "smollm3": ("smollm3", {"n_layer": 4}, 64),  # layer 3 without rope
    "qwen2moe": ("qwen2moe", {}, 64),  # q/k/v biases, unnormalized expert weights, a sigmoid-gated shared expert
    "mistral3": ("mistral3", {}, 128),  # YaRN, attention temperature from position 64 on
    "gpt-oss": ("gpt-oss", {"n_layer": 4}, 64),  # sinks, biases, windows of 8 on layers 0 and 2, swiglu_oai
    "gpt-oss-mxfp4": ("gpt-oss", {"n_layer": 4, "expert_type": "MXFP4"}, 64),  # the experts as gpt-oss ships them
    "ernie4_5": ("ernie4_5", {}, 64),  # llama's layer under its own name
    "granite": ("granite", {}, 64),  # embeddings x 3, attention scale 0.1, branches x 0.5, logits / 2
    "granitemoe": ("granitemoe", {}, 64),  # granite's multipliers with experts
    "olmo2": ("olmo2", {}, 64),  # no input norms, q and k normed whole, post-norms
    # Olmo 3's layout: windows of 8 on layers 0-2, YaRN on layer 3 only (the sliding layers' rope is unscaled)
    "olmo3": ("olmo2", {"n_layer": 4, "sliding": True, "yarn": True}, 128),
    "exaone4": ("exaone4", {}, 64),  # no input norms, per-head q/k norms, post-norms
    "glm4": ("glm4", {}, 64),  # attn_qkv with its bias, rope on half of each head, input and post norms
    # EXAONE 4.0 32B's 64 layers: windows of 8 on 3 of every 4, no rope on the 4th
    "exaone4-32b": ("exaone4", {"n_layer": 64, "sliding": True}, 64),
}


@pytest.fixture(scope="module")
def variant_path(tiny_models):
    def get(name: str, weight_type: str):
        arch, options, _ = VARIANTS[name]
        return tiny_models(arch, weight_type, **options)

    return get


# exaone4-32b has 64 random layers (the count that gives EXAONE 4.0 its windows in llama.cpp): the int8 activations'
# rounding accumulates past the integer formats' tolerances over that depth (measured 0.020 of the range for Q8_0,
# 0.23 for Q4_K, where 2 layers stay far inside); its F16 file checks the arithmetic, test_exactness the bits of
# its integer path
FLOAT_ONLY = {"exaone4-32b"}


@pytest.mark.parametrize(("name", "weight_type"), [
    (name, weight_type) for name in sorted(VARIANTS) for weight_type in ("Q8_0", "Q4_K", "F16")
    if name not in FLOAT_ONLY or weight_type == "F16"])
def test_engine_matches_reference(variant_path, name, weight_type):
    n_ctx = VARIANTS[name][2]
    path = variant_path(name, weight_type)
    model = Model.load(path, n_ctx=n_ctx)
    tokens = model.tokenize(PROMPT)[:n_ctx]
    expected = ReferenceModel(path, n_ctx=n_ctx).logits(tokens)
    got = model.logits(tokens)
    error = float(np.abs(got - expected).max() / np.ptp(expected))
    assert error < ROUTER_TIES.get((name, weight_type), TOLERANCE[weight_type]), error


@pytest.mark.parametrize("name, feature", [
    ("llama-rope-freqs", "rope factors"), ("phi3-long", "rope factors"), ("gemma2", "soft-capping"),
    ("qwen2", "biases"), ("llama-moe", "experts"), ("granite", "multipliers")])
def test_each_feature_changes_the_output(variant_path, name, feature):
    """The reference without the feature is several times further from the engine than the reference
    with it: the agreement above is not vacuous."""
    path = variant_path(name, "Q8_0")
    n_ctx = VARIANTS[name][2]
    model = Model.load(path, n_ctx=n_ctx)
    tokens = model.tokenize(PROMPT)[:n_ctx]
    got = model.logits(tokens)
    reference = ReferenceModel(path, n_ctx=n_ctx)
    with_feature = reference.logits(tokens)
    if feature == "rope factors":
        reference.rope_factors = None
    elif feature == "soft-capping":
        object.__setattr__(reference.config, "attn_softcap", 0.0)
        object.__setattr__(reference.config, "final_softcap", 0.0)
    elif feature == "biases":
        for key in [k for k in reference.w if k.endswith(".bias")]:
            del reference.w[key]
    elif feature == "experts":
        object.__setattr__(reference.config, "n_expert_used", 1)
    elif feature == "multipliers":
        for name, neutral in (("embedding_scale", 1.0), ("residual_scale", 1.0), ("logit_scale", 1.0),
                              ("attn_scale", 0.0)):
            object.__setattr__(reference.config, name, neutral)
    without = reference.logits(tokens)
    assert np.abs(got - without).max() > 3 * np.abs(got - with_feature).max()


def test_phi3_short_and_long_contexts_use_their_own_factors(variant_path):
    path = variant_path("phi3-long", "Q8_0")
    assert Model.load(path, n_ctx=64).transformer.rope_factors == "long"
    assert Model.load(path, n_ctx=32).transformer.rope_factors == "short"
    tokens = Model.load(path, n_ctx=32).tokenize(PROMPT)[:32]
    assert not np.array_equal(Model.load(path, n_ctx=64).logits(tokens), Model.load(path, n_ctx=32).logits(tokens))


def test_every_expert_is_chosen(variant_path):
    path = variant_path("llama-moe", "Q8_0")
    model = Model.load(path, n_ctx=64)
    hidden = model.transformer.forward(np.array(model.tokenize(PROMPT)), 0, model.new_context().cache,
                                       output="hidden")
    chosen, weights = route(model.weights.layers[0].experts.router.matmul(hidden), 2)
    assert set(chosen.ravel().tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert (weights[:, 0] >= weights[:, 1]).all()


@pytest.mark.parametrize("arch, extra", [("llama", "blk.0.foo.weight"), ("qwen3", "blk.1.attn_q.bias_extra"),
                                         ("gemma2", "rope_freqs.weight")])
def test_a_tensor_the_model_would_not_use_is_refused_by_name(tmp_path, arch, extra):
    path = tmp_path / "extra.gguf"
    write_model(path, arch, extra=(extra,))
    message = f"^{extra.replace('.', '[.]')} is not used by architecture {arch}$"
    with pytest.raises(UnsupportedModelError, match=message):
        Model.load(path)


def test_a_tensor_of_another_layout_is_refused(tmp_path):
    # qwen2 biases on a llama-layout file are used (llama.cpp accepts q/k/v biases everywhere), but
    # gemma3's q/k norms on a llama file are not
    path = tmp_path / "norms.gguf"
    write_model(path, "llama", extra=("blk.0.attn_q_norm.weight",))
    with pytest.raises(UnsupportedModelError, match="blk.0.attn_q_norm.weight is not used by architecture llama"):
        Model.load(path)


def test_per_layer_head_counts_are_refused_clearly():

    metadata = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
                "llama.attention.head_count": [4, 8]}
    with pytest.raises(UnsupportedModelError, match="llama.attention.head_count = .* is not supported"):
        ModelConfig.from_metadata(metadata)


GOOD = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2}


@pytest.mark.parametrize("key, value, rule", [
    ("attention.head_count", 0, "from 1"),  # was a ZeroDivisionError
    ("attention.head_count_kv", 3, "a divisor of head_count"),
    ("rope.dimension_count", 32, "up to the head size"),  # was memory corruption (SIGSEGV) in rope
    ("rope.dimension_count", 7, "an even number"),
    ("attention.layer_norm_rms_epsilon", 0.0, "> 0"),
    ("attention.layer_norm_rms_epsilon", float("nan"), "finite"),
    ("rope.freq_base", -1.0, "> 0"),
    ("rope.freq_base", float("inf"), "finite"),
    ("block_count", 2**40, "to 2^31 - 1"),
    ("context_length", "many", "an integer"),
    ("embedding_length", 64.5, "an integer"),
])
def test_hyper_parameters_the_forward_pass_cannot_use_are_refused_naming_the_key(key, value, rule):

    assert ModelConfig.from_metadata(GOOD).head_dim == 16  # the good file loads
    with pytest.raises(UnsupportedModelError, match=f"llama.{key} = .* must be .*{re.escape(rule)}"):
        ModelConfig.from_metadata(GOOD | {f"llama.{key}": value})


def test_an_unknown_rope_scaling_is_refused_not_ignored():
    with pytest.raises(UnsupportedModelError, match="rope scaling 'dynamic' is not supported"):
        ModelConfig.from_metadata(GOOD | {"llama.rope.scaling.type": "dynamic"})


def ggml_rope_yarn_table(n_positions: int, base: float, n_rot: int, freq_scale: float, yarn: Yarn,
                         attn_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (n_positions, n_rot/2) as ggml's CPU rope computes them (ggml-cpu/ops.cpp: rope_yarn,
    rope_yarn_ramp, ggml_rope_yarn_corr_dims, theta *= theta_scale in float32), written out loop by loop, with
    the attention factor llama-context.cpp hands it (ext_factor 1; no log multiplier)."""
    f32 = np.float32
    factor = 1 / freq_scale
    yarn_attn = f32(0.1 * np.log(f32(factor)) + 1) if factor > 1 else f32(1)
    yarn_attn = f32(yarn_attn * f32(1 / (1 + 0.1 * np.log(f32(factor)))) * f32(attn_factor))

    def corr_dim(beta: float) -> float:
        return n_rot * np.log(f32(yarn.original_ctx) / f32(beta * 2 * np.pi)) / (2 * np.log(f32(base)))

    low, high = max(0.0, np.floor(corr_dim(yarn.beta_fast))), min(n_rot - 1.0, np.ceil(corr_dim(yarn.beta_slow)))
    theta_scale = f32(base) ** f32(-2.0 / n_rot)
    cos, sin = np.empty((n_positions, n_rot // 2), f32), np.empty((n_positions, n_rot // 2), f32)
    for p in range(n_positions):
        theta = f32(p)
        for i0 in range(0, n_rot, 2):
            interp = f32(freq_scale) * theta
            ramp = 1 - min(1.0, max(0.0, (i0 // 2 - low) / max(0.001, high - low)))
            mixed = f32(interp * f32(1 - ramp) + theta * f32(ramp))
            mscale = f32(yarn_attn * f32(1 + 0.1 * np.log(f32(1 / freq_scale))))
            cos[p, i0 // 2], sin[p, i0 // 2] = f32(np.cos(mixed)) * mscale, f32(np.sin(mixed)) * mscale
            theta = f32(theta * theta_scale)
    return cos, sin


@pytest.mark.parametrize("base, n_rot, factor, original", [(1e6, 64, 4.0, 4096), (10000.0, 128, 8.0, 8192),
                                                           (500000.0, 64, 2.0, 64)])
def test_yarn_tables_are_ggmls(base, n_rot, factor, original):
    """The rope tables of a YaRN model, read from its keys as the loader reads them, against a loop-by-loop
    transcription of ggml's float32 code: within float32 rounding of the angle at position 4,000."""
    md = GOOD | {"llama.rope.freq_base": base, "llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": factor,
                 "llama.rope.scaling.original_context_length": original, "llama.attention.key_length": n_rot,
                 "llama.attention.value_length": n_rot}
    c = ModelConfig.from_metadata(md)
    assert c.rope_yarn == Yarn(32.0, 1.0, original) and c.rope_freq_scale == 1 / factor
    rope = Rope(c.rope_base, c.n_rot, 4000, False, None, c.rope_freq_scale, c.rope_attn_factor, c.rope_yarn)
    cos, sin = ggml_rope_yarn_table(4000, base, n_rot, 1 / factor, c.rope_yarn, 1.0)
    np.testing.assert_allclose(rope.cos, cos, atol=2e-3 * (1 + 0.1 * np.log(factor)))
    np.testing.assert_allclose(rope.sin, sin, atol=2e-3 * (1 + 0.1 * np.log(factor)))
    assert abs(float(rope.cos[0, 0]) - (1 + 0.1 * np.log(factor))) < 1e-6  # the magnitude correction


def test_yarn_keys_are_read_only_where_llama_cpp_reads_them():
    """qwen3 keeps beta 32 and 1 whatever its file says (llama.cpp reads the keys for mistral3 and deepseek2 only)."""
    md = {"general.architecture": "qwen3", "qwen3.block_count": 1, "qwen3.embedding_length": 64,
          "qwen3.attention.head_count": 4, "qwen3.rope.scaling.type": "yarn", "qwen3.rope.scaling.factor": 4.0,
          "qwen3.rope.scaling.yarn_beta_fast": 8.0}
    assert ModelConfig.from_metadata(md).rope_yarn.beta_fast == 32.0
