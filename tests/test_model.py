"""The engine against the plain numpy reference (llamapyz/model/reference.py) on tiny synthetic models of every
quant type and both architectures, plus the Model API's contracts: context limits, errors, embeddings.

Prefill (`Model.logits`) and decode take one numeric path, so their logits are the same bits however a prompt
is chunked or batched, with any thread count, on any CPU tier (tests/test_exactness.py, with prefix reuse).
Both quantize activations to int8 blocks (as llama.cpp does), so logits agree with the float32 reference to a
few percent of the logit range (formats without an integer kernel: to float rounding). That error is not
smooth: rounding to int8 is discontinuous, and on these random tiny models a 1e-6 relative nudge to the
inputs of the int8 rounding moves the logits by 0.5% of the range, so a tighter int8-aware reference does not
help; the kernels themselves are held to 1e-4 against their exact twins in test_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamapyz import ContextOverflowError, Model, UnsupportedModelError
from llamapyz.decode.generation import generate
from llamapyz.gguf.quants import FORMATS_BY_NAME
from llamapyz.model.reference import ReferenceModel
from tests.synth import write_gguf, write_model

WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                "IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                "IQ1_S", "IQ1_M"]
PROMPT = "the cat in the hat, there and here; the end"
TOLERANCE = 0.06  # of the logit range, int8 activations as llama.cpp forms them (q8_0 with float16 scales; q8_K,
# one scale per 256, for the K-quants): measured up to 4.3e-2 (gemma3 Q4_K), 4.1e-2 (gemma3 Q4_1)


def compare(path, n_threads: int = 2) -> tuple[float, float]:
    """(prefill error, decode error) relative to the reference logits' range."""
    model = Model.load(path, n_ctx=64, n_threads=n_threads)
    tokens = model.tokenize(PROMPT)
    expected = ReferenceModel(path).logits(tokens)
    spread = float(expected.max() - expected.min())
    prefill = model.logits(tokens)
    assert prefill.shape == expected.shape and prefill.dtype == np.float32
    model.prefill(tokens[:5])
    decoded = np.stack([model.decode(t) for t in tokens[5:]])
    return (float(np.abs(prefill - expected).max()) / spread,
            float(np.abs(decoded - expected[5:]).max()) / spread)


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_llama_matches_reference(tiny_models, weight_type):
    prefill_error, decode_error = compare(tiny_models("llama", weight_type, tied=False))
    assert prefill_error < TOLERANCE
    assert decode_error < TOLERANCE


@pytest.mark.parametrize("weight_type", ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "F16"])
def test_gemma3_matches_reference(tiny_models, weight_type):
    # 6 layers: five sliding-window layers (window 8 < prompt) and one global layer with its own rope base
    prefill_error, decode_error = compare(tiny_models("gemma3", weight_type))
    assert prefill_error < TOLERANCE
    assert decode_error < TOLERANCE


def test_kv_cache_types_agree(tiny_models):
    path = tiny_models("llama", "Q8_0")
    outputs = []
    for kv_type in ("f16", "f32"):
        model = Model.load(path, n_ctx=64, kv_type=kv_type)
        outputs.append(model.logits(model.tokenize(PROMPT)))
    # f16 rounding of the keys and values can tip an activation's int8 rounding: the int8 tolerance
    np.testing.assert_allclose(outputs[0], outputs[1], atol=TOLERANCE * np.ptp(outputs[1]))


def test_context_limits(tiny_models):
    model = Model.load(tiny_models("llama", "Q8_0"), n_ctx=16)
    assert model.n_ctx == 16
    with pytest.raises(ContextOverflowError, match="16"):
        model.logits(list(range(3, 20)))
    steps = list(generate(model, list(range(3, 13)), max_tokens=100, temperature=1.0, seed=1))
    assert len(steps) == 6 and steps[-1].finish_reason == "length"  # stops when the context is full
    assert Model.load(tiny_models("llama", "Q8_0")).n_ctx == 256  # default: the model's maximum if smaller


def test_bad_input_is_a_clear_error(tiny_models, tmp_path):
    model = Model.load(tiny_models("llama", "Q8_0"), n_ctx=16)
    with pytest.raises(ValueError, match="token ids"):
        model.logits([1, 10_000])
    with pytest.raises(ValueError, match="no tokens"):
        model.logits([])
    unknown = tmp_path / "unknown.gguf"
    write_gguf(unknown, {"w": ("F32", (2, 8))}, metadata={}, arch="mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba'"):
        Model.load(unknown)


def test_missing_tensor_is_named(tmp_path):
    write_model(tmp_path / "broken.gguf", omit=("blk.1.ffn_up.weight",))
    with pytest.raises(UnsupportedModelError, match="blk.1.ffn_up.weight"):
        Model.load(tmp_path / "broken.gguf")


def test_embeddings_are_pooled_and_normalized(tiny_models):
    model = Model.load(tiny_models("llama", "Q8_0"), n_ctx=64)
    vectors = model.embed(["the cat", "the hat", "the cat"])
    assert vectors.shape == (3, model.n_embd)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    hidden = model.transformer.forward(np.array(model.tokenize("the cat")), 0, model.cache, output="hidden")
    pooled = hidden.mean(axis=0)
    np.testing.assert_allclose(vectors[0], pooled / np.linalg.norm(pooled), rtol=1e-5, atol=1e-6)


def test_derived_data_is_small(tiny_models):
    model = Model.load(tiny_models("llama", "Q4_1"), n_ctx=64)
    assert 0 < model.derived_bytes < 0.15 * model.file_bytes
    assert FORMATS_BY_NAME["Q4_1"].name == model.weights.layers[0].attn_q.format.name
