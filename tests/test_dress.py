"""tests/quantize.py (our encoders) and tests/dress.py (the derived architecture test models)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from llamapyz.gguf.quants import FORMATS_BY_NAME, dequantize
from llamapyz.gguf.reader import load_gguf
from tests.dress import (
    FAMILIES,
    QUANTS,
    TEMPLATES,
    derive,
    derived_path,
    general_name,
    interleaved_partial_rotary,
    llama3_rope_freqs,
    partial_rotary,
    unpermute,
)
from tests.quantize import ENCODERS, quantize

ARCH_DATA = Path(__file__).resolve().parent / "data" / "arch"

# --- the encoders ------------------------------------------------------------------------------------------


def sample(rng: np.random.Generator) -> np.ndarray:
    """Weight-like rows (64, 1024) plus blocks that stress the encoders: zeros, one sign only, outliers, ties."""
    x = (rng.standard_normal((64, 1024)) * 0.05).astype(np.float32)
    x[1] = 0
    x[2] = np.abs(x[2])
    x[3] = -np.abs(x[3])
    x[4, ::97] *= 40  # outliers
    x[5] = 0.25  # constant
    x[6, :512] = 0  # half zero, so some sub-blocks are zero and others not
    x[7] *= np.repeat(np.float32([1e-3, 1, 0.1, 10]), 256)  # sub-blocks of very different ranges
    return x


def decode_both(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode with gguf-py and with llamapyz.gguf.quants; they must agree bit for bit."""
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]).reshape(shape)
    ours = dequantize(raw, FORMATS_BY_NAME[type_name], shape)
    assert ours.dtype == np.float32 and np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    return ours


def error_bound(x: np.ndarray, type_name: str) -> np.ndarray:
    """The largest |decoded - x| each value may have, from the encoder's rounding (per block):

    F16: half an f16 ulp. Q8_0: half a step, d = max|x| / 127. Q5_0: one step, d = max|x| / 16 (values at
    the far end of the range, +16 d, clip to +15 d). Q4_K: half its sub-block's step s = (max - min(min, 0)) / 15,
    plus what rounding the 6-bit scale and offset can cost at the ends of the range (7.5 super-steps d = s_max / 63
    and half a super-step of the offsets). Q6_K: one step of its 16-value sub-block, |s| = max|x| / 32, plus what
    rounding the int8 sub-scale costs at +-32 steps (33 super-steps, |d| = |s|_max / 128). MXFP4: its unit
    d = 2^(floor(log2 max|x|) - 3) is exact, its largest level 12 d, so values up to 16 d lose at most 4 d.
    Each with 1% slack for the f16 rounding of the scales, and room for that rounding's absolute error (2^-25)
    when a scale is an f16 subnormal, times the largest multiple of the scale a value can be.
    """
    slack, tiny = 1.01, 2.0**-25 * {"F16": 1, "Q8_0": 127, "Q5_0": 16, "Q4_K": 63 * 16, "Q6_K": 128 * 32,
                                    "MXFP4": 0}[type_name]
    return _bound(x, type_name, slack) + tiny


def _bound(x: np.ndarray, type_name: str, slack: float) -> np.ndarray:
    if type_name == "MXFP4":
        amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
        unit = np.where(amax > 0, np.exp2(np.frexp(amax)[1] - 1 - 3.0), 0)
        return np.broadcast_to(4 * unit * slack, (len(amax), 32)).reshape(x.shape)
    if type_name == "F16":
        return np.abs(x) * 2.0**-11
    if type_name in ("Q8_0", "Q5_0"):
        blocks = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
        step = blocks / (127 if type_name == "Q8_0" else 16)
        return np.broadcast_to(step * (0.5 if type_name == "Q8_0" else 1.0) * slack, (len(step), 32)).reshape(x.shape)
    if type_name == "Q4_K":
        sub = x.reshape(-1, 8, 32).astype(np.float64)
        low = np.minimum(sub.min(axis=2), 0)
        step = (sub.max(axis=2) - low) / 15
        d, dmin = step.max(axis=1, keepdims=True) / 63, (-low).max(axis=1, keepdims=True) / 63
        bound = (step / 2 + 7.5 * d + dmin / 2) * slack
        return np.repeat(bound[:, :, None], 32, axis=2).reshape(x.shape)
    sub = np.abs(x.reshape(-1, 16, 16).astype(np.float64)).max(axis=2) / 32  # Q6_K
    bound = (sub + 33 * sub.max(axis=1, keepdims=True) / 128) * slack
    return np.repeat(bound[:, :, None], 16, axis=2).reshape(x.shape)


# relative RMS error on the weight-like rows: round-to-nearest quality, far from a broken layout (~1.0)
RMS_LIMIT = {"F16": 1e-3, "Q8_0": 0.01, "Q5_0": 0.06, "Q4_K": 0.1, "Q6_K": 0.03, "MXFP4": 0.15}


@pytest.mark.parametrize("type_name", sorted(ENCODERS))
def test_encoder_decodes_close_to_input(type_name: str) -> None:
    x = sample(np.random.default_rng(1))
    raw = quantize(x, type_name)
    fmt = FORMATS_BY_NAME[type_name]
    assert raw.dtype == np.uint8 and raw.shape == (64, 1024 // fmt.block_size * fmt.type_size)
    y = decode_both(raw, type_name, x.shape)
    assert np.all(np.abs(y - x) <= error_bound(x, type_name))
    assert np.all(y[1] == 0)  # zeros stay exactly zero
    plain = slice(8, None)
    rel_rms = np.sqrt(np.mean((y[plain] - x[plain]) ** 2)) / np.std(x[plain])
    assert rel_rms < RMS_LIMIT[type_name]


@pytest.mark.parametrize("type_name", sorted(ENCODERS))
def test_encoder_is_deterministic(type_name: str) -> None:
    x = sample(np.random.default_rng(2))
    first = quantize(x, type_name)
    assert np.array_equal(first, quantize(x.copy(), type_name))
    # rows are encoded independently: a row's bytes do not depend on its neighbours or the batch size
    assert np.array_equal(first[10:11], quantize(x[10:11], type_name))
    assert np.array_equal(first.reshape(2, 32, -1), quantize(x.reshape(2, 32, -1), type_name))


def test_mxfp4_encoder_gives_gguf_pys_bytes() -> None:
    x = sample(np.random.default_rng(3))
    assert np.array_equal(quantize(x, "MXFP4"), gguf.quants.quantize(x, gguf.GGMLQuantizationType.MXFP4))


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "Q4_K", "Q6_K", "MXFP4"])
def test_encoder_refuses_partial_blocks(type_name: str) -> None:
    with pytest.raises(ValueError, match="multiple"):
        quantize(np.zeros((2, FORMATS_BY_NAME[type_name].block_size + 16), np.float32), type_name)


# --- weight surgery ----------------------------------------------------------------------------------------


def test_unpermute_inverts_the_converters_permutation() -> None:
    n_head, head_dim, n_in = 3, 8, 5
    hf = np.arange(n_head * head_dim * n_in, dtype=np.float32).reshape(n_head * head_dim, n_in)
    gguf_rows = hf.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(hf.shape)  # convert_hf_to_gguf
    assert np.array_equal(unpermute(gguf_rows, n_head), hf)


def test_partial_rotary_keeps_the_fastest_pairs_together() -> None:
    n_head, head_dim, n_rot = 2, 64, 48
    w = np.arange(n_head * head_dim, dtype=np.float32).reshape(-1, 1)
    out = partial_rotary(w, n_head, n_rot).reshape(n_head, head_dim)
    for h in range(n_head):
        assert sorted(out[h]) == list(range(h * head_dim, (h + 1) * head_dim))  # a permutation within the head
        for k in range(n_rot // 2):  # NEOX pair (k, k + 32) becomes the partial-rotary pair (k, k + 24)
            assert (out[h, k], out[h, k + n_rot // 2]) == (h * head_dim + k, h * head_dim + k + 32)


def test_interleaved_partial_rotary_keeps_the_fastest_pairs_in_place() -> None:
    """glm4's pairs rope on 32 of 64 dims: the file's pairs (2k, 2k+1) for k < 16 stay where they are (and keep
    their frequency's index); the slower pairs move, their halves together, into the unrotated tail."""
    n_head, head_dim, n_rot = 2, 64, 32
    w = np.arange(n_head * head_dim, dtype=np.float32).reshape(-1, 1)
    out = interleaved_partial_rotary(w, n_head, n_rot).reshape(n_head, head_dim)
    for h in range(n_head):
        own = h * head_dim + np.arange(head_dim)
        assert list(out[h, :n_rot]) == list(own[:n_rot])
        assert sorted(out[h]) == list(own)
        assert list(out[h, n_rot:n_rot + 16]) == list(own[n_rot::2])  # the slow pairs' first halves


def test_llama3_rope_freqs() -> None:
    """Llama 3.1's formula on base 100000, head_dim 64, factor 8, low/high 1/4, original context 512."""
    factors = llama3_rope_freqs(100000.0, 64, 8.0, 1.0, 4.0, 512)
    assert factors.dtype == np.float32 and factors.shape == (32,)
    wavelen = 2 * math.pi * 100000.0 ** (np.arange(0, 64, 2) / 64)
    assert np.all(factors[wavelen < 128] == 1) and np.all(factors[wavelen > 512] == 8)
    middle = (wavelen >= 128) & (wavelen <= 512)
    smooth = (512 / wavelen[middle] - 1) / 3
    np.testing.assert_allclose(factors[middle], 1 / ((1 - smooth) / 8 + smooth), rtol=1e-6)
    assert middle.sum() == 4 and np.all(np.diff(factors) >= 0)


# --- the derived files -------------------------------------------------------------------------------------

SMOL = dict(n_layer=30, vocab=49152, embd=576, q=576, kv=192, ff=1536)
GEMMA = dict(n_layer=18, vocab=262144, embd=640, q=1024, kv=256, ff=2048)


def expected_tensors(family: str) -> dict[str, tuple[int, ...]]:
    """The tensors (numpy shapes) each family must have, written out from the architectures' specs."""
    m = GEMMA if family == "gemma2" else SMOL
    e, q, kv, ff = m["embd"], m["q"], m["kv"], m["ff"]
    attention = {"attn_norm": (e,), "attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q)}
    dense = {"ffn_norm": (e,), "ffn_gate": (ff, e), "ffn_up": (ff, e), "ffn_down": (e, ff)}
    moe = {"ffn_norm": (e,), "ffn_gate_inp": (4, e), "ffn_gate_exps": (4, 768, e), "ffn_up_exps": (4, 768, e),
           "ffn_down_exps": (4, e, 768)}
    qk_norm = {"attn_q_norm": (64,), "attn_k_norm": (64,)}
    qkv_bias = {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)}
    shared = {"ffn_gate_shexp": (ff, e), "ffn_up_shexp": (ff, e), "ffn_down_shexp": (e, ff),
              "ffn_gate_inp_shexp": (e,)}
    gpt_oss = {"post_attention_norm": (e,), "attn_sinks": (9,), "attn_output.bias": (e,), "ffn_gate_inp.bias": (4,),
               "ffn_gate_exps.bias": (4, 768), "ffn_up_exps.bias": (4, 768), "ffn_down_exps.bias": (4, e)}
    moe_no_norm = {k: v for k, v in moe.items() if k != "ffn_norm"}
    # no input norms, post-norms (olmo2, exaone4)
    post_normed = {k: v for k, v in (attention | dense).items() if k not in ("attn_norm", "ffn_norm")} | {
        "post_attention_norm": (e,), "post_ffw_norm": (e,)}
    layer, extra = {
        "qwen2": (attention | dense | qkv_bias, {}),
        "qwen3": (attention | dense | qk_norm, {}),
        "qwen3-yarn": (attention | dense | qk_norm, {}),
        "smollm3": (attention | dense, {}),
        "phi3": ({"attn_norm": (e,), "attn_qkv": (q + 2 * kv, e), "attn_output": (e, q), "ffn_norm": (e,),
                  "ffn_up": (2 * ff, e), "ffn_down": (e, ff)},
                 {"rope_factors_long": (24,), "rope_factors_short": (24,)}),
        "llama-rope-freqs": (attention | dense, {"rope_freqs": (32,)}),
        "llama-moe": (attention | moe, {}),
        "qwen3moe": (attention | moe | qk_norm, {}),
        "gemma2": (attention | dense | {"post_attention_norm": (e,), "post_ffw_norm": (e,)}, {}),
        "qwen2moe": (attention | qkv_bias | moe | shared, {"output": (m["vocab"], e)}),
        "mistral3": (attention | dense, {}),
        "ernie4_5": (attention | dense, {}),
        "granite": (attention | dense, {}),
        "granitemoe": (attention | moe, {}),
        "exaone4": (post_normed | qk_norm, {}),
        "glm4": ({"attn_norm": (e,), "attn_qkv": (q + 2 * kv, e), "attn_qkv.bias": (q + 2 * kv,), "attn_output": (e, q),
                  "post_attention_norm": (e,), "ffn_norm": (e,), "ffn_up": (2 * ff, e), "ffn_down": (e, ff),
                  "post_ffw_norm": (e,)}, {}),
        "olmo2": (post_normed | {"attn_q_norm": (q,), "attn_k_norm": (kv,)}, {"output": (m["vocab"], e)}),
        "gpt-oss": (attention | qkv_bias | moe_no_norm | gpt_oss, {"output": (m["vocab"], e)}),
    }[family]
    names = {"token_embd": (m["vocab"], e), "output_norm": (e,)} | extra
    names |= {f"blk.{i}.{n}": shape for i in range(m["n_layer"]) for n, shape in layer.items()}
    return {n if n.endswith(".bias") else f"{n}.weight": shape for n, shape in names.items()}


def expected_type(name: str, shape: tuple[int, ...], quant: str, family: str = "") -> str:
    """llama.cpp's choices: Q4_K_M = Q6_K for attn_v/ffn_down/output, Q4_K for the other matrices, Q5_0/Q8_0
    instead when rows are not made of 256-value blocks; routers, biases and 1-d tensors F32; token_embd as in the
    source; gpt-oss's experts MXFP4 but in F16 files."""
    kind = name.split(".")[-2]
    if name == "token_embd.weight":
        return "Q8_0"
    if len(shape) == 1 or name.endswith(".bias") or kind in ("ffn_gate_inp", "ffn_gate_inp_shexp"):
        return "F32"
    if family == "gpt-oss" and quant != "F16" and kind.endswith("_exps"):
        return "MXFP4"
    if quant != "Q4_K_M":
        return quant
    if kind in ("attn_v", "ffn_down", "ffn_down_exps", "output"):
        return "Q6_K" if shape[-1] % 256 == 0 else "Q8_0"
    return "Q4_K" if shape[-1] % 256 == 0 else "Q5_0"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(family: str, quant: str) -> dict:
    path = ARCH_DATA / f"{family}-{quant}.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run bench/arch_golden.py")
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_derived_tensors_and_metadata(family: str) -> None:
    quant = "Q4_K_M"
    with load_gguf(derived_path(family, quant)) as model:
        shapes = {name: t.shape for name, t in model.tensors.items()}
        assert shapes == expected_tensors(family)
        for name, t in model.tensors.items():
            assert t.type_name == expected_type(name, t.shape, quant, family), name
        meta, arch = model.metadata, FAMILIES[family].arch
        assert meta["general.architecture"] == arch
        assert meta["general.name"] == general_name(family)
        assert "phi3" not in meta["general.name"] and "phi-3" not in meta["general.name"]  # see dress.FAMILIES
        template = FAMILIES[family].template
        if template is not None:
            assert meta["tokenizer.chat_template"] == (TEMPLATES / template).read_text()
        assert len(meta["tokenizer.ggml.tokens"]) == model.tensors["token_embd.weight"].shape[0]
        if family == "phi3":
            assert meta["phi3.rope.dimension_count"] == 48
            assert meta["phi3.rope.scaling.original_context_length"] == 512
            assert meta["phi3.attention.sliding_window"] == 256
            assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(8) / math.log(512)))
        if family == "gemma2":
            assert meta["gemma2.attention.sliding_window"] == 64
            assert (meta["gemma2.attn_logit_softcapping"], meta["gemma2.final_logit_softcapping"]) == (50.0, 30.0)
        if family.endswith("moe") or family == "gpt-oss":
            assert (meta[f"{arch}.expert_count"], meta[f"{arch}.expert_used_count"]) == (4, 2)
            # any input goes to experts {0, 1} (the FFN's halves) or {2, 3} (its even and odd units)
            router = model.tensors["blk.0.ffn_gate_inp.weight"].dequantize()
            logits = np.random.default_rng(0).standard_normal((1000, router.shape[1])).astype(np.float32) @ router.T
            pairs = {tuple(sorted(row)) for row in np.argsort(-logits, axis=1)[:, :2].tolist()}
            assert pairs == {(0, 1), (2, 3)}


@pytest.mark.slow
@pytest.mark.real_model
def test_derive_is_reproducible(tmp_path: Path) -> None:
    """Two builds give the same bytes, and the bytes llama.cpp's outputs were recorded on."""
    first, second = derive("qwen2", "Q8_0", tmp_path / "a.gguf"), derive("qwen2", "Q8_0", tmp_path / "b.gguf")
    assert sha256(first) == sha256(second) == recorded("qwen2", "Q8_0")["sha256"]


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recorded_outputs_belong_to_these_files(family: str, quant: str) -> None:
    record = recorded(family, quant)
    assert (record["family"], record["quant"], record["arch"]) == (family, quant, FAMILIES[family].arch)
    assert sha256(derived_path(family, quant)) == record["sha256"]
