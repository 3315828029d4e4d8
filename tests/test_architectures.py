"""Every architecture's options on tiny synthetic models (tests/synth.py), engine against the numpy
reference, plus the strict loader: a tensor the forward pass would not use is refused by name.

The real check against llama.cpp, on models derived from real weights, is tests/test_arch_golden.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from llamapyz import Model, UnsupportedModelError
from llamapyz.model.moe import route
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

VARIANTS = {  # name: (arch, write_model options, n_ctx)
    "qwen2": ("qwen2", {}, 64),
    "qwen3": ("qwen3", {}, 64),
    "qwen3moe": ("qwen3moe", {}, 64),
    "phi3-long": ("phi3", {}, 64),  # n_ctx 64 > original context 32: LongRoPE's long factors
    "phi3-short": ("phi3", {}, 32),
    "gemma2": ("gemma2", {"n_layer": 4}, 64),  # sliding window 8 on layers 0 and 2
    "llama-moe": ("llama", {"experts": True}, 64),
    "llama-rope-freqs": ("llama", {"rope_freqs": True}, 64),
}


@pytest.fixture(scope="module")
def variant_path(tiny_models):
    def get(name: str, weight_type: str):
        arch, options, _ = VARIANTS[name]
        return tiny_models(arch, weight_type, **options)

    return get


@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_K", "F16"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_engine_matches_reference(variant_path, name, weight_type):
    n_ctx = VARIANTS[name][2]
    path = variant_path(name, weight_type)
    model = Model.load(path, n_ctx=n_ctx)
    tokens = model.tokenize(PROMPT)[:n_ctx]
    expected = ReferenceModel(path, n_ctx=n_ctx).logits(tokens)
    got = model.logits(tokens)
    error = float(np.abs(got - expected).max() / np.ptp(expected))
    assert error < TOLERANCE[weight_type], error


@pytest.mark.parametrize("name, feature", [
    ("llama-rope-freqs", "rope factors"), ("phi3-long", "rope factors"), ("gemma2", "soft-capping"),
    ("qwen2", "biases"), ("llama-moe", "experts")])
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
    from llamapyz.model.hparams import ModelConfig

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
    from llamapyz.model.hparams import ModelConfig

    assert ModelConfig.from_metadata(GOOD).head_dim == 16  # the good file loads
    with pytest.raises(UnsupportedModelError, match=f"llama.{key} = .* must be .*{re.escape(rule)}"):
        ModelConfig.from_metadata(GOOD | {f"llama.{key}": value})


def test_yarn_is_refused_not_ignored(tmp_path):
    import gguf

    from tests.synth import byte_level_tokenizer
    path = tmp_path / "yarn.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    for key, (kind, value) in {**byte_level_tokenizer(), "qwen2.block_count": ("uint32", 1),
                               "qwen2.embedding_length": ("uint32", 64), "qwen2.attention.head_count": ("uint32", 1),
                               "qwen2.rope.scaling.type": ("string", "yarn")}.items():
        getattr(writer, f"add_{kind}")(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="rope scaling 'yarn' is not supported"):
        Model.load(path)
