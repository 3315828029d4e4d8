"""bench/real_shapes.py: the benchmark models' tensor mixes match real files', and their weights have a sane spread."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from bench.real_shapes import SHAPES, TensorPlan, parse, plan, random_weights
from llamapyz.gguf.quants import FORMATS_BY_NAME, dequantize

# Type counts llama.cpp's loader prints for the real files (bartowski's and Qwen's Q4_K_M / Q8_0 GGUFs)
REAL_COUNTS = {
    ("llama-3.1-8b", "Q4_K_M"): {"F32": 66, "Q4_K": 193, "Q6_K": 33},
    ("llama-3.2-1b", "Q4_K_M"): {"F32": 34, "Q4_K": 96, "Q6_K": 17},
    ("llama-3.2-1b", "Q8_0"): {"F32": 34, "Q8_0": 113},
}


@pytest.mark.parametrize(("name", "quant"), sorted(REAL_COUNTS))
def test_the_mix_has_the_real_files_type_counts(name: str, quant: str) -> None:
    assert Counter(t.type_name for t in plan(SHAPES[name], quant)) == REAL_COUNTS[name, quant]


def test_a_moe_shape_has_three_dimensional_experts_and_a_float_router() -> None:
    tensors = {t.name: t for t in plan(SHAPES["qwen3-30b-a3b"], "Q4_K_M")}
    assert tensors["blk.0.ffn_up_exps.weight"].shape == (128, 768, 2048)
    assert tensors["blk.0.ffn_down_exps.weight"].shape == (128, 2048, 768)
    assert tensors["blk.0.ffn_down_exps.weight"].type_name == "Q6_K"  # first eighth of the layers: more bits
    assert tensors["blk.0.ffn_gate_inp.weight"].type_name == "F32"


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "IQ4_XS", "Q5_K", "Q5_0", "MXFP4"])
def test_random_weights_have_about_the_spread_of_trained_ones(type_name: str) -> None:
    n_in = 2048
    t = TensorPlan("w", (64, n_in), type_name, n_in)
    raw = random_weights(t, np.random.default_rng(0))
    w = dequantize(raw, FORMATS_BY_NAME[type_name], t.shape)
    assert np.isfinite(w).all()
    assert 0.8 < w.std() * math.sqrt(n_in) < 1.25


def test_a_model_argument_names_a_shape_and_a_mix() -> None:
    assert parse("llama-3.2-1b-Q4_K_M") == ("llama-3.2-1b", "Q4_K_M")
    assert parse("qwen3-30b-a3b-IQ4_XS") == ("qwen3-30b-a3b", "IQ4_XS")
    assert parse("smollm2") is None and parse("llama-3.2-1b-Q5_K") is None


def test_rows_of_other_widths_fall_back_as_llama_cpps_quantizer_does() -> None:
    tensors = {t.name: t for t in plan(SHAPES["qwen1.5-moe-a2.7b"], "Q4_K_M")}
    assert tensors["blk.3.ffn_down_exps.weight"].type_name == "Q5_0"  # 1408 columns: Q4_K -> Q5_0
    assert tensors["blk.0.ffn_down_exps.weight"].type_name == "Q8_0"  # Q6_K (more bits) -> Q8_0
    assert tensors["blk.3.ffn_up_exps.weight"].type_name == "Q4_K"  # 2048 columns


def test_gpt_oss_has_mxfp4_experts_biases_and_sinks_and_no_other_mix() -> None:
    shape = SHAPES["gpt-oss-20b"]
    tensors = {t.name: t for t in plan(shape, "MXFP4_MOE")}
    assert tensors["blk.0.ffn_gate_exps.weight"].type_name == "MXFP4"
    assert tensors["blk.0.attn_q.weight"].type_name == "Q8_0" and tensors["output.weight"].shape == (201088, 2880)
    assert {"blk.0.attn_sinks.weight", "blk.0.ffn_down_exps.bias", "blk.0.attn_output.bias"} <= tensors.keys()
    assert shape.mixes == ("MXFP4_MOE",) and parse("gpt-oss-20b-Q4_K_M") is None
