"""Small test models of other architectures, derived from the two real models' weights.

The engine is checked against llama.cpp on qwen2, qwen3, phi3, llama with rope_freqs, Mixtral-style MoE,
qwen3moe and gemma2 files that no package index ships at a testable size. So the weights of SmolLM2-135M
(llama) and Gemma 3 270M are re-laid ("dressed") as those architectures: the activations stay realistic
while every architecture-specific path (biases, qk-norm, fused tensors, partial and scaled rope, experts,
soft-capping, sliding windows) is exercised. How close each stays to its source:

- qwen2, phi3, llama-rope-freqs, llama-moe compute nearly SmolLM2's function (changed by the random biases,
  the rope changes, the experts' weights) and give sensible greedy text;
- qwen3, qwen3moe (a per-head q/k RMSNorm added) and gemma2 (Gemma 3's q/k norm removed) cannot: the norm
  takes away, or gives back, each token's own q/k magnitude, which no fixed weight restores. Their text
  degrades (gemma2's to repetition) while llama.cpp's top-1 margins stay large, which is what the tests need.

    python -m tests.dress FAMILY QUANT OUT.gguf        # FAMILY in FAMILIES, QUANT in F16 / Q8_0 / Q4_K_M

    python -m tests.dress FAMILY QUANT OUT.gguf        # FAMILY in FAMILIES, QUANT in F16 / Q8_0 / Q4_K_M

The bytes are reproducible on any CPU: the tensors are written in a fixed order by gguf.GGUFWriter; random
numbers come from np.random.default_rng(the family's seed); every float statistic (of the weights, or of the
source's activations on a fixed text) is computed in float64 and rounded to 3 significant digits before use;
the encoders (tests/quantize.py) decide bytes with elementwise operations only. `derived_path` builds a file
once into a cache keyed by this code.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from llamapyz.bundler.registry import cache_dir as models_cache_dir
from llamapyz.bundler.registry import fetch_model
from llamapyz.gguf.quants import dequantize
from llamapyz.gguf.reader import GGUFFile, load_gguf
from tests.quantize import quantize

QUANTS = ("F16", "Q8_0", "Q4_K_M")
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}  # general.file_type (llama_ftype)
TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"

# Q4_K_M: the types llama.cpp's quantizer picks per tensor, and its fallbacks for rows not made of 256-blocks
Q4_K_M_Q6_K = {"attn_v", "ffn_down", "ffn_down_exps", "output"}  # everything else 2-d/3-d is Q4_K
K_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
KEEP_F32 = {"ffn_gate_inp", "ffn_gate_inp_shexp"}  # MoE routers
# gpt-oss ships its experts in MXFP4, and llama.cpp's quantizer keeps them so: its quantized variants here too
MXFP4_EXPERTS = {"gpt-oss": {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}}

Tensors = dict[str, np.ndarray]  # float32 values to encode, by name
Metadata = dict[str, tuple[object, gguf.GGUFValueType]]  # keys without the "{arch}." prefix

U32, F32, STR = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING


# --- statistics and weight surgery -------------------------------------------------------------------------


def sig3(x: float) -> float:
    """`x` rounded to 3 significant digits, so bytes derived from it ignore float64 summation order."""
    return float(f"{x:.3g}")


def estimated_rms(w: np.ndarray, norm: np.ndarray) -> float:
    """RMS of W @ x for x = a normed input (unit-variance entries) times the norm weight: (n_out, n_in)."""
    scaled = w.astype(np.float64) * norm.astype(np.float64)
    return sig3(math.sqrt(float(np.mean(np.sum(scaled * scaled, axis=1)))))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's q/k row permutation for interleaved rope: back to NEOX (rotate-halves) order."""
    n_out, n_in = w.shape
    return w.reshape(n_head, n_out // n_head // 2, 2, n_in).swapaxes(1, 2).reshape(n_out, n_in)


def partial_rotary(w: np.ndarray, n_head: int, n_rot: int) -> np.ndarray:
    """Rows of NEOX-ordered q/k heads re-laid for rotary on the first `n_rot` of each head's dims only.

    A head's pairs are (i, i + head_dim/2); with partial rotary they become (i, i + n_rot/2) for i < n_rot/2
    and the rest pass unrotated. The n_rot/2 fastest pairs of the full-rotary layout keep rotating (at the
    partial rotary's frequencies); the slowest ones (nearly constant over a context anyway) move to the
    unrotated tail, their halves together. Un-permuted q/k alone would pair dims (i, i + n_rot/2) that
    belong to different pairs of the source.
    """
    n_out, n_in = w.shape
    half, keep = n_out // n_head // 2, n_rot // 2
    order = np.concatenate([np.arange(keep), half + np.arange(keep),  # rotated: first and second halves
                            np.arange(keep, half), half + np.arange(keep, half)])  # unrotated
    return w.reshape(n_head, 2 * half, n_in)[:, order].reshape(n_out, n_in)


def interleaved_partial_rotary(w: np.ndarray, n_head: int, n_rot: int) -> np.ndarray:
    """Rows of interleaved (pairs) q/k heads re-laid for pairs rotary on the first `n_rot` of each head's dims:
    `partial_rotary` on the NEOX order, then the rotated dims' halves interleaved again (a_0, b_0, a_1, b_1, ...)."""
    n_out, n_in = w.shape
    w = partial_rotary(unpermute(w, n_head), n_head, n_rot).reshape(n_head, n_out // n_head, n_in)
    keep = n_rot // 2
    order = np.concatenate([np.stack([np.arange(keep), keep + np.arange(keep)], axis=1).reshape(-1),
                            np.arange(n_rot, n_out // n_head)])
    return w[:, order].reshape(n_out, n_in)


def llama3_rope_freqs(base: float, head_dim: int, factor: float, low_freq_factor: float,
                      high_freq_factor: float, original_context: int) -> np.ndarray:
    """Llama 3.1's per-frequency rope divisors, as convert_hf_to_gguf.py's LlamaModel writes rope_freqs."""
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# MoE: 4 experts of n_ff/2 units cut from one dense FFN: its two halves (0, 1), its even and its odd units (2, 3).
# Only the pairs {0, 1} and {2, 3} add up to the whole FFN (twice each expert's share at softmax weights of
# about 0.5), so the router's rows are a, (1 + t) a, -a, -(1 + t) a for a random direction a: a token goes to
# {0, 1} when a.x > 0 and to {2, 3} when a.x < 0, expert 1 (3) weighted sigmoid(t |a.x|), a little over 0.5.
# Tried and dropped: independent random rows put a token in a mixed pair like {0, 2} (a quarter of the
# units counted twice, a quarter missing) in two layers of three, and SmolLM2's text turned to noise; rows
# a, a, -a, -a plus small independent noise keep the text but leave near-ties between the 2nd and 3rd expert
# in a band around a.x = 0, where llama.cpp's batched and one-token passes chose different pairs and then
# disagreed on 4 of 160 greedy steps with margins >= 0.5. With these rows the pair changes only where a.x
# itself crosses 0, and both pairs compute about the same function there.
N_EXPERT, N_EXPERT_USED = 4, 2
ROUTER_SPREAD, ROUTER_TILT = 4.0, 0.03


def expert_units(n_ff: int) -> list[np.ndarray]:
    return [np.arange(n_ff // 2), np.arange(n_ff // 2, n_ff), np.arange(0, n_ff, 2), np.arange(1, n_ff, 2)]


def moe_ffn(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    """The layer's FFN as 4 experts of n_ff/2 units, and a router that picks {0, 1} or {2, 3}."""
    gate, up, down = (src.values(f"blk.{i}.{name}.weight") for name in ("ffn_gate", "ffn_up", "ffn_down"))
    norm = src.values(f"blk.{i}.ffn_norm.weight")
    # the router's input is normed (unit-variance entries) times the norm weight: about rms(w) * sqrt(n) long
    rms_in = sig3(math.sqrt(float(np.mean(norm.astype(np.float64) ** 2))))
    unit = sig3(1 / (rms_in * math.sqrt(len(norm))))  # the std of a row whose logits have std 1 on such input
    a = rng.normal(0, ROUTER_SPREAD * unit, len(norm))
    router = np.stack([a, a * (1 + ROUTER_TILT), -a, -a * (1 + ROUTER_TILT)])
    units = expert_units(len(gate))
    return {
        "ffn_gate_inp": router.astype(np.float32),
        "ffn_gate_exps": np.stack([gate[u] for u in units]),
        "ffn_down_exps": np.stack([down[:, u] * np.float32(2) for u in units]),
        "ffn_up_exps": np.stack([up[u] for u in units]),
    }


# --- the source models -------------------------------------------------------------------------------------


class Source:
    """A real model: its metadata and its weights decoded to float32 on demand."""

    def __init__(self, registry_name: str) -> None:
        self.name = registry_name
        self.file: GGUFFile = load_gguf(fetch_model(registry_name))
        arch = self.file.architecture
        self.hparams = {k[len(arch) + 1:]: v for k, v in self.file.metadata.items() if k.startswith(arch + ".")}
        self.n_layer = self.hparams["block_count"]

    def values(self, name: str) -> np.ndarray:
        return self.file.tensor(name).dequantize()

    def raw(self, name: str) -> np.ndarray:
        return self.file.tensor(name).raw

    def layer(self, i: int, names: tuple[str, ...]) -> Tensors:
        return {name: self.values(f"blk.{i}.{name}.weight") for name in names}

    @functools.cached_property
    def qk_rms(self) -> list[tuple[float, float]]:
        """Per layer, the measured rms of q and of k on the calibration text (see `measure_rms`)."""
        return [(m["q"], m["k"]) for m in self.rms]

    @functools.cached_property
    def rms(self) -> list[dict[str, float]]:
        """Per layer, the measured rms of its values on the calibration text (see `measure_rms`)."""
        return measure_rms(self)

    def tokenizer_metadata(self) -> Iterator[tuple[str, object, gguf.GGUFValueType, gguf.GGUFValueType | None]]:
        """(key, value, type, array element type) of every tokenizer.* key, in the source's order."""
        for key, value in self.file.metadata.items():
            if not key.startswith("tokenizer."):
                continue
            kind = self.file.value_types[key]
            if kind.startswith("ARRAY["):
                items = value.tolist() if isinstance(value, np.ndarray) else value
                yield key, items, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType[kind[6:-1]]
            else:
                yield key, value, gguf.GGUFValueType[kind], None


# --- measured q/k magnitudes ---------------------------------------------------------------------------------

# A q/k RMSNorm divides each token's q (k) head by its own rms; a fixed weight can only stand for the typical
# rms. `estimated_rms` guesses it from the weights alone, assuming normed inputs with unit-variance entries:
# right within 1.1-2.6x for SmolLM2, but 10-30x too large for Gemma 3, whose normed inputs are far from
# isotropic (folded with it, Gemma's attention scores shrink to |s| < 0.7 from layer 2 on: uniform
# attention, and the soft-cap never bends). So the typical rms is measured: a float64 forward pass of the
# source over a fixed text, q and k taken before any norm, position 0 (an attention sink) left out.
CALIBRATION_TEXT = ("The capital of France is Paris. Once upon a time, in a small village, there lived a family of "
                    "four. Rivers are the oldest roads of the land, and the weather of a region shapes its rivers.")
CALIBRATION_IDS = {  # CALIBRATION_TEXT as llama.cpp tokenizes it (with the BOS the model adds)
    "smollm2": [504, 3575, 282, 4649, 314, 7042, 30, 4027, 1980, 253, 655, 28, 281, 253, 1165, 6560, 28, 665, 4161,
                253, 1564, 282, 1876, 30, 19968, 359, 260, 9326, 8364, 282, 260, 1666, 28, 284, 260, 3947, 282, 253,
                2695, 6146, 624, 7626, 30],
    "gemma3-270m": [2, 818, 5279, 529, 7001, 563, 9079, 236761, 9920, 3324, 496, 990, 236764, 528, 496, 1944, 9744,
                    236764, 993, 11742, 496, 2523, 529, 2390, 236761, 36835, 659, 506, 24625, 16370, 529, 506, 2601,
                    236764, 532, 506, 7606, 529, 496, 4128, 15965, 1061, 25971, 236761],
}
GEMMA3_LOCAL_ROPE_BASE, GEMMA3_GLOBAL_EVERY = 10000.0, 6  # llama.cpp's gemma3: layers 5, 11, 17 are global


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_neox(x: np.ndarray, base: float) -> np.ndarray:
    """(n_tokens, n_heads, head_dim) rotated by position, pairs (i, i + head_dim/2)."""
    half = x.shape[-1] // 2
    angle = np.arange(len(x))[:, None] * base ** (-np.arange(half) * 2 / x.shape[-1])
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def measure_rms(src: Source) -> list[dict[str, float]]:
    """Per layer, the rms over the calibration text (float64, 3 significant digits) of q and k, of the residual
    stream at its attention ("x_attn") and at its FFN ("x_ffn"), and of the attention's ("attn_out") and the
    FFN's ("ffn_out") outputs before any post-norm.

    SmolLM2 (llama) or Gemma 3: embeddings (times sqrt(n_embd) for Gemma), pre-norm attention with NEOX rope
    on un-permuted q/k (the same function as llama's interleaved rope on the file's rows), Gemma's q/k norm and
    post norms, SiLU / GELU-tanh gated FFN. The text is shorter than any sliding window.
    """
    h, gemma = src.hparams, src.file.architecture == "gemma3"
    ids = CALIBRATION_IDS[src.name]
    n_head, n_kv, eps = h["attention.head_count"], h["attention.head_count_kv"], h["attention.layer_norm_rms_epsilon"]
    head_dim = h.get("attention.key_length", h["embedding_length"] // n_head)
    embd = src.file.tensor("token_embd.weight")
    x = dequantize(embd.raw[ids], embd.format, (len(ids), embd.shape[1])).astype(np.float64)
    if gemma:
        x *= math.sqrt(h["embedding_length"])
    positions = np.arange(len(ids))
    causal = positions[None, :] <= positions[:, None]
    measured = []
    for i in range(src.n_layer):
        w = {name: v.astype(np.float64) for name, v in src.layer(i, GEMMA2_LAYER if gemma else LLAMA_LAYER).items()}
        if not gemma:
            w["attn_q"], w["attn_k"] = unpermute(w["attn_q"], n_head), unpermute(w["attn_k"], n_kv)
        m = {"x_attn": _rms(x)}
        a = _rms_norm(x, w["attn_norm"], eps)
        q, k, v = (a @ w[name].T for name in ("attn_q", "attn_k", "attn_v"))
        m |= {"q": _rms(q), "k": _rms(k)}
        measured.append(m)
        q, k, v = q.reshape(len(ids), n_head, -1), k.reshape(len(ids), n_kv, -1), v.reshape(len(ids), n_kv, -1)
        base = h["rope.freq_base"]
        if gemma:
            q = _rms_norm(q, src.values(f"blk.{i}.attn_q_norm.weight").astype(np.float64), eps)
            k = _rms_norm(k, src.values(f"blk.{i}.attn_k_norm.weight").astype(np.float64), eps)
            base = base if i % GEMMA3_GLOBAL_EVERY == GEMMA3_GLOBAL_EVERY - 1 else GEMMA3_LOCAL_ROPE_BASE
        q, k = _rope_neox(q, base), _rope_neox(k, base)
        heads = []
        for j in range(n_head):
            scores = np.where(causal, q[:, j] @ k[:, j * n_kv // n_head].T / math.sqrt(head_dim), -np.inf)
            probs = np.exp(scores - scores.max(axis=1, keepdims=True))
            heads.append(probs / probs.sum(axis=1, keepdims=True) @ v[:, j * n_kv // n_head])
        out = np.concatenate(heads, axis=1) @ w["attn_output"].T
        m["attn_out"] = _rms(out)
        x = x + (_rms_norm(out, w["post_attention_norm"], eps) if gemma else out)
        m["x_ffn"] = _rms(x)
        a = _rms_norm(x, w["ffn_norm"], eps)
        gate, up = a @ w["ffn_gate"].T, a @ w["ffn_up"].T
        if gemma:
            act = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        else:
            act = gate / (1 + np.exp(-gate))
        out = (act * up) @ w["ffn_down"].T
        m["ffn_out"] = _rms(out)
        x = x + (_rms_norm(out, w["post_ffw_norm"], eps) if gemma else out)
    return measured


def _rms(values: np.ndarray) -> float:
    """The rms of a (n_tokens, ...) array, position 0 (an attention sink) left out, to 3 significant digits."""
    return sig3(math.sqrt(float(np.mean(values[1:] ** 2))))


# --- the families ------------------------------------------------------------------------------------------

LLAMA_LAYER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
               "ffn_down")


@dataclass(frozen=True)
class Family:
    """How to dress one source as one architecture."""

    arch: str
    source: str  # registry name of the real model
    seed: int
    template: str | None  # file under tests/data/templates, else the source's chat template
    hparams: Callable[[Source], Metadata]
    layer: Callable[[Source, int, np.random.Generator], Tensors]  # tensor names without "blk.{i}." and ".weight"
    extra: Callable[[Source], Tensors] = lambda src: {}  # global tensors besides token_embd and output_norm
    name: str | None = None  # general.name; default "{source}-as-{family}"


def smollm2_hparams(src: Source, **changes: tuple[object, gguf.GGUFValueType]) -> Metadata:
    """The shared hyper-parameters of a SmolLM2-derived model (its own values), with `changes`."""
    h = src.hparams
    base: Metadata = {
        "context_length": (8192, U32), "embedding_length": (h["embedding_length"], U32),
        "block_count": (h["block_count"], U32), "feed_forward_length": (h["feed_forward_length"], U32),
        "attention.head_count": (h["attention.head_count"], U32),
        "attention.head_count_kv": (h["attention.head_count_kv"], U32),
        "attention.layer_norm_rms_epsilon": (h["attention.layer_norm_rms_epsilon"], F32),
        "rope.freq_base": (h["rope.freq_base"], F32),
    }
    return base | changes


def neox_attention(src: Source, i: int) -> Tensors:
    """SmolLM2's attention weights with q/k rows back in NEOX order (un-permuted per head)."""
    t = src.layer(i, LLAMA_LAYER)
    t["attn_q"] = unpermute(t["attn_q"], src.hparams["attention.head_count"])
    t["attn_k"] = unpermute(t["attn_k"], src.hparams["attention.head_count_kv"])
    return t


# Random q/k/v biases, as a share of the projection's estimated rms. A v bias passes through attention
# unchanged (softmax weights sum to 1) and so adds a constant to the residual stream in every layer: at 0.3 of
# v's rms that alone turns SmolLM2's greedy text into ". The. The. The."; at 0.05 the text stays sensible
# and leaving the bias out still moves the first step's top logits by about 2.
QWEN2_BIAS_SHARE = {"attn_q": 0.3, "attn_k": 0.3, "attn_v": 0.05}


def qwen2_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t = neox_attention(src, i)
    for name, share in QWEN2_BIAS_SHARE.items():
        std = share * estimated_rms(t[name], t["attn_norm"])
        t[f"{name}.bias"] = rng.normal(0, std, len(t[name])).astype(np.float32)
    return t


def qwen3_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    """q/k-norm weights that restore about the magnitude q and k had before they were normed (measured)."""
    t = neox_attention(src, i)
    head_dim = src.hparams["embedding_length"] // src.hparams["attention.head_count"]
    for name, rms in zip(("attn_q", "attn_k"), src.qk_rms[i], strict=True):
        t[f"{name}_norm"] = (rms * (1 + rng.normal(0, 0.05, head_dim))).astype(np.float32)
    return t


def qwen3moe_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t = qwen3_layer(src, i, rng)
    for name in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[name]
    return t | moe_ffn(src, i, rng)


PHI3_N_ROT, PHI3_CONTEXT, PHI3_ORIGINAL_CONTEXT = 48, 4096, 512


def phi3_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    """Fused qkv (rows q; k; v) and fused gate_up (rows gate; up), q/k laid out for partial rotary."""
    t = neox_attention(src, i)
    q = partial_rotary(t.pop("attn_q"), src.hparams["attention.head_count"], PHI3_N_ROT)
    k = partial_rotary(t.pop("attn_k"), src.hparams["attention.head_count_kv"], PHI3_N_ROT)
    t["attn_qkv"] = np.concatenate([q, k, t.pop("attn_v")])
    t["ffn_up"] = np.concatenate([t.pop("ffn_gate"), t["ffn_up"]])
    return t


def phi3_extra(src: Source) -> Tensors:
    n = PHI3_N_ROT // 2
    return {"rope_factors_long": np.geomspace(1.0, 16.0, n).astype(np.float32),
            "rope_factors_short": np.linspace(1.0, 1.3, n).astype(np.float32)}


def phi3_hparams(src: Source) -> Metadata:
    scale = PHI3_CONTEXT / PHI3_ORIGINAL_CONTEXT  # LongRoPE's attention factor, as convert_hf_to_gguf.py has it
    attn_factor = math.sqrt(1 + math.log(scale) / math.log(PHI3_ORIGINAL_CONTEXT))
    return smollm2_hparams(src, **{
        "context_length": (PHI3_CONTEXT, U32), "rope.dimension_count": (PHI3_N_ROT, U32),
        "rope.scaling.original_context_length": (PHI3_ORIGINAL_CONTEXT, U32),
        "rope.scaling.attn_factor": (attn_factor, F32),
        "attention.sliding_window": (256, U32),  # as real Phi-3 files carry; llama.cpp's loader ignores it
    })


def llama_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    return src.layer(i, LLAMA_LAYER)


def llama_moe_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    return src.layer(i, LLAMA_LAYER[:6]) | moe_ffn(src, i, rng)


def llama_hparams(src: Source, **changes: tuple[object, gguf.GGUFValueType]) -> Metadata:
    """SmolLM2's own llama.* keys, with `changes`."""
    own: Metadata = {key: (value, F32 if isinstance(value, float) else U32) for key, value in src.hparams.items()}
    return own | changes


def llama_rope_freqs_extra(src: Source) -> Tensors:
    head_dim = src.hparams["embedding_length"] // src.hparams["attention.head_count"]
    return {"rope_freqs": llama3_rope_freqs(src.hparams["rope.freq_base"], head_dim, factor=8.0,
                                            low_freq_factor=1.0, high_freq_factor=4.0, original_context=512)}


MOE_KEYS: Metadata = {"expert_count": (N_EXPERT, U32), "expert_used_count": (N_EXPERT_USED, U32)}

GEMMA2_LAYER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_norm",
                "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")


def gemma2_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    """Gemma 3's per-head q/k RMSNorm folded into the projections: rows scaled by w_j / (measured rms)."""
    t = src.layer(i, GEMMA2_LAYER)
    for name, rms in zip(("attn_q", "attn_k"), src.qk_rms[i], strict=True):
        w = src.values(f"blk.{i}.{name}_norm.weight")
        per_row = np.tile(w / np.float32(rms), len(t[name]) // len(w))
        t[name] = t[name] * per_row[:, None]
    return t


def gemma2_hparams(src: Source) -> Metadata:
    h = src.hparams
    return {
        "context_length": (8192, U32), "embedding_length": (h["embedding_length"], U32),
        "block_count": (h["block_count"], U32), "feed_forward_length": (h["feed_forward_length"], U32),
        "attention.head_count": (h["attention.head_count"], U32),
        "attention.head_count_kv": (h["attention.head_count_kv"], U32),
        "attention.key_length": (h["attention.key_length"], U32),
        "attention.value_length": (h["attention.value_length"], U32),
        "attention.layer_norm_rms_epsilon": (h["attention.layer_norm_rms_epsilon"], F32),
        "rope.freq_base": (10000.0, F32),
        "attention.sliding_window": (64, U32),  # llama.cpp: even layers sliding, odd layers global
        "attn_logit_softcapping": (50.0, F32), "final_logit_softcapping": (30.0, F32),
    }


# qwen2moe: qwen2's attention; SmolLM2's FFN as 4 half-experts at half weight (down x 1: qwen2moe leaves the top-2
# softmax weights, about 1/2 each on a clean route, unnormalized) plus the whole FFN as the shared expert, its
# sigmoid gate a random direction (weights between about 0.3 and 0.7): together about the FFN again.
def qwen2moe_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t = qwen2_layer(src, i, rng)
    gate, up, down = (t.pop(name) for name in ("ffn_gate", "ffn_up", "ffn_down"))
    experts = moe_ffn(src, i, rng)
    experts["ffn_down_exps"] = experts["ffn_down_exps"] / np.float32(2)
    unit = 1 / math.sqrt(len(t["ffn_norm"]))
    return t | experts | {"ffn_gate_shexp": gate, "ffn_up_shexp": up, "ffn_down_shexp": down,
                          "ffn_gate_inp_shexp": rng.normal(0, sig3(unit), len(t["ffn_norm"])).astype(np.float32)}


# gpt-oss: swiglu_oai(g, u) = g sigmoid(1.702 g) (u + 1), gate and up clamped at 7. With g = G / 1.702 and
# u = U - 1 (SmolLM2's pre-activations G and U; the up bias -1) it is silu(G) U / 1.702: SmolLM2's FFN once
# down is scaled by 1.702 (and by 2 for the pair weights of about 1/2, as `moe_ffn`), while G < 11.9 and
# |U - 1| < 7. The router softmaxes its top 2 logits: the pairs {0, 1} and {2, 3} as in `moe_ffn`. Sinks near
# the scores' typical size, so they take a share of attention without silencing it; small biases elsewhere.
OAI_ALPHA = 1.702
GPT_OSS_SINK_MEAN, GPT_OSS_SINK_STD, GPT_OSS_ROUTER_BIAS = 1.0, 1.0, 0.1


def gpt_oss_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t = qwen2_layer(src, i, rng)
    t["post_attention_norm"] = t.pop("ffn_norm")  # gpt-oss's name for its FFN's input norm
    for name in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[name]
    experts = moe_ffn(src, i, rng)
    experts["ffn_gate_exps"] = experts["ffn_gate_exps"] / np.float32(OAI_ALPHA)
    experts["ffn_down_exps"] = experts["ffn_down_exps"] * np.float32(OAI_ALPHA)
    n_expert, n_ff, n_embd = experts["ffn_up_exps"].shape
    # the router rows' own pattern (1, 1 + t, -1, -1 - t): the pair still changes only where all four logits meet
    experts["ffn_gate_inp.bias"] = (GPT_OSS_ROUTER_BIAS * np.float32([1, 1 + ROUTER_TILT, -1, -1 - ROUTER_TILT])
                                    ).astype(np.float32)
    experts["ffn_gate_exps.bias"] = np.zeros((n_expert, n_ff), np.float32)
    experts["ffn_up_exps.bias"] = np.full((n_expert, n_ff), -1, np.float32)
    experts["ffn_down_exps.bias"] = rng.normal(0, 0.01, (n_expert, n_embd)).astype(np.float32)
    n_head = src.hparams["attention.head_count"]
    return t | experts | {
        "attn_output.bias": rng.normal(0, 0.01, n_embd).astype(np.float32),
        "attn_sinks": rng.normal(GPT_OSS_SINK_MEAN, GPT_OSS_SINK_STD, n_head).astype(np.float32)}


def gpt_oss_hparams(src: Source) -> Metadata:
    return smollm2_hparams(src, **YARN_KEYS, **MOE_KEYS, **{
        "expert_feed_forward_length": (768, U32), "attention.sliding_window": (128, U32)})


# granite: Granite 3's multipliers, SmolLM2's function kept. The residual stream becomes 12 times SmolLM2's
# (embeddings x 12), so each branch's output must be too: attn_output and ffn_down x 12 / 0.22 (the residual
# scale takes 0.22 back off); attention's scale 1/64 (muP's 1/head_dim) instead of 1/8: q x 8 (exact in every
# format's scales); the logits are divided by 8: output_norm x 8 (the head is SmolLM2's tied embeddings). The
# norms make the stream's size invisible but for eps, so the model computes nearly SmolLM2's function.
GRANITE_EMBEDDING, GRANITE_RESIDUAL, GRANITE_ATTENTION, GRANITE_LOGIT = 12.0, 0.22, 1 / 64, 8.0


def granite_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t = llama_layer(src, i, rng)
    head_dim = src.hparams["embedding_length"] // src.hparams["attention.head_count"]
    t["attn_q"] = t["attn_q"] * np.float32(1 / math.sqrt(head_dim) / GRANITE_ATTENTION)
    for name in ("attn_output", "ffn_down"):
        t[name] = t[name] * np.float32(GRANITE_EMBEDDING / GRANITE_RESIDUAL)
    return t


def granite_hparams(src: Source) -> Metadata:
    return smollm2_hparams(src, **{"embedding_scale": (GRANITE_EMBEDDING, F32),
                                   "residual_scale": (GRANITE_RESIDUAL, F32),
                                   "attention.scale": (GRANITE_ATTENTION, F32), "logit_scale": (GRANITE_LOGIT, F32)})


def granitemoe_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    """llama-moe's experts (the router picks SmolLM2's FFN halves) with granite's multipliers taken back out."""
    t = granite_layer(src, i, rng)
    for name in ("ffn_gate", "ffn_up", "ffn_down"):
        del t[name]
    experts = moe_ffn(src, i, rng)
    experts["ffn_down_exps"] = experts["ffn_down_exps"] * np.float32(GRANITE_EMBEDDING / GRANITE_RESIDUAL)
    return t | experts


def granite_extra(src: Source) -> Tensors:
    return {"output_norm": src.values("output_norm.weight") * np.float32(GRANITE_LOGIT)}


# Layers without input norms (olmo2), their branches normed at the output: SmolLM2's input norm folded into the
# matrices that read the residual stream (columns x norm weight / the stream's measured rms there), so a token of
# typical size gives them SmolLM2's input; q and k normed again by their qk-norm (weights: their measured rms,
# +-5% per dimension, as `qwen3_layer`), which takes each token's own size back out; each branch's output normed
# to its measured rms (+-5%). What no fixed weight restores: v and the FFN's input keep each token's own stream
# size (position 0's, an attention sink's, is many times the typical one), so the text degrades.
NORM_SPREAD = 0.05


def _spread(rms: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """A norm weight of n dimensions about `rms`."""
    return (rms * (1 + rng.normal(0, NORM_SPREAD, n))).astype(np.float32)


def post_norm_layer(src: Source, i: int, rng: np.random.Generator, whole_qk: bool) -> Tensors:
    """SmolLM2's layer (NEOX order) without input norms, q/k normed whole (`whole_qk`) or per head, post-norms."""
    t, m = neox_attention(src, i), src.rms[i]
    attn_norm, ffn_norm = t.pop("attn_norm"), t.pop("ffn_norm")
    for names, norm, rms in ((("attn_q", "attn_k", "attn_v"), attn_norm, m["x_attn"]),
                             (("ffn_gate", "ffn_up"), ffn_norm, m["x_ffn"])):
        for name in names:
            t[name] = t[name] * (norm / np.float32(rms))[None, :]
    head_dim = src.hparams["embedding_length"] // src.hparams["attention.head_count"]
    for name in ("attn_q", "attn_k"):
        t[f"{name}_norm"] = _spread(m[name[-1]], len(t[name]) if whole_qk else head_dim, rng)
    n_embd = len(attn_norm)
    return t | {"post_attention_norm": _spread(m["attn_out"], n_embd, rng),
                "post_ffw_norm": _spread(m["ffn_out"], n_embd, rng)}


# glm4: SmolLM2's layer with its input norms kept and post-norms added (each branch's output normed to its
# measured rms, +-5% per dimension: `post_norm_layer`'s), q/k re-laid for pairs rope on 32 of 64 dimensions
# (`interleaved_partial_rotary`: the fastest pairs keep turning), fused attn_qkv with qwen2's random biases, and
# ffn_up = [gate; up]. The post-norms take each token's own branch size away (as `post_norm_layer`'s), and the
# slow half of each head no longer turns: the text degrades to repetition.
GLM4_N_ROT = 32


def glm4_layer(src: Source, i: int, rng: np.random.Generator) -> Tensors:
    t, m = qwen2_layer(src, i, rng), src.rms[i]
    h = src.hparams
    q = interleaved_partial_rotary(t.pop("attn_q"), h["attention.head_count"], GLM4_N_ROT)
    k = interleaved_partial_rotary(t.pop("attn_k"), h["attention.head_count_kv"], GLM4_N_ROT)
    t["attn_qkv"] = np.concatenate([q, k, t.pop("attn_v")])
    q_bias = interleaved_partial_rotary(t.pop("attn_q.bias")[:, None], h["attention.head_count"], GLM4_N_ROT)
    k_bias = interleaved_partial_rotary(t.pop("attn_k.bias")[:, None], h["attention.head_count_kv"], GLM4_N_ROT)
    t["attn_qkv.bias"] = np.concatenate([q_bias[:, 0], k_bias[:, 0], t.pop("attn_v.bias")])
    t["ffn_up"] = np.concatenate([t.pop("ffn_gate"), t["ffn_up"]])
    n_embd = len(t["attn_norm"])
    return t | {"post_attention_norm": _spread(m["attn_out"], n_embd, rng),
                "post_ffw_norm": _spread(m["ffn_out"], n_embd, rng)}


def output_extra(src: Source) -> Tensors:
    """An output matrix, which llama.cpp requires of qwen2moe and gpt-oss files: SmolLM2's tied embeddings."""
    return {"output": src.values("token_embd.weight")}


HEAD_64: Metadata = {"attention.key_length": (64, U32), "attention.value_length": (64, U32)}
YARN_KEYS: Metadata = {"rope.scaling.type": ("yarn", STR), "rope.scaling.factor": (4.0, F32),
                       "rope.scaling.original_context_length": (256, U32)}
# Ministral 3's YaRN keys (beta 32/1, mscale_all_dim 1) and attention temperature, from an original context of 256
MISTRAL3_KEYS: Metadata = YARN_KEYS | {"rope.scaling.yarn_beta_fast": (32.0, F32),
                                       "rope.scaling.yarn_beta_slow": (1.0, F32),
                                       "rope.scaling.yarn_log_multiplier": (1.0, F32),
                                       "attention.temperature_scale": (0.1, F32)}

FAMILIES: dict[str, Family] = {
    "qwen2": Family("qwen2", "smollm2", 2, "Qwen-Qwen2.5-7B-Instruct.jinja", smollm2_hparams, qwen2_layer),
    "qwen3": Family("qwen3", "smollm2", 3, "Qwen-Qwen3-0.6B.jinja",
                    lambda src: smollm2_hparams(src, **HEAD_64), qwen3_layer),
    # not "...-as-phi3": llama.cpp sets Phi-3 token attributes when general.name contains "phi3" or "phi-3",
    # and fails to load a vocabulary without "</s>"
    "phi3": Family("phi3", "smollm2", 4, "microsoft-Phi-3.5-mini-instruct.jinja", phi3_hparams, phi3_layer,
                   phi3_extra, name="smollm2-as-phi-three"),
    "llama-rope-freqs": Family("llama", "smollm2", 5, None, llama_hparams, llama_layer, llama_rope_freqs_extra),
    "llama-moe": Family("llama", "smollm2", 6, None,
                        lambda src: llama_hparams(src, feed_forward_length=(768, U32), **MOE_KEYS), llama_moe_layer),
    "qwen3moe": Family("qwen3moe", "smollm2", 7, "Qwen-Qwen3-0.6B.jinja",
                       lambda src: smollm2_hparams(src, expert_feed_forward_length=(768, U32), **HEAD_64,
                                                   **MOE_KEYS), qwen3moe_layer),
    "gemma2": Family("gemma2", "gemma3-270m", 8, "google-gemma-2-2b-it.jinja", gemma2_hparams, gemma2_layer),
    # llama's layout; llama.cpp leaves rope out of every 4th layer (n_no_rope_layer_step)
    "smollm3": Family("smollm3", "smollm2", 9, None, smollm2_hparams, llama_layer),
    # qwen3's model (the same seed: the same weights) extended 4x by YaRN from an original context of 256: the
    # long prompt runs past it, and YaRN is all that differs from "qwen3"
    "qwen3-yarn": Family("qwen3", "smollm2", 3, "Qwen-Qwen3-0.6B.jinja",
                         lambda src: smollm2_hparams(src, **HEAD_64, **YARN_KEYS), qwen3_layer),
    "qwen2moe": Family("qwen2moe", "smollm2", 10, "Qwen-Qwen2.5-7B-Instruct.jinja",
                       lambda src: smollm2_hparams(src, expert_feed_forward_length=(768, U32),
                                                   expert_shared_feed_forward_length=(1536, U32), **MOE_KEYS),
                       qwen2moe_layer, output_extra),
    # llama's layout (pairs rope), YaRN 4x past 256 and the attention temperature from position 256 on
    "mistral3": Family("mistral3", "smollm2", 11, "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
                       lambda src: smollm2_hparams(src, **MISTRAL3_KEYS), llama_layer),
    "gpt-oss": Family("gpt-oss", "smollm2", 12, "openai-gpt-oss-120b.jinja", gpt_oss_hparams, gpt_oss_layer,
                      output_extra),
    # llama's layer and rope under ERNIE 4.5's name: SmolLM2 as it is (tied embeddings, as ERNIE-4.5-0.3B)
    "ernie4_5": Family("ernie4_5", "smollm2", 13, None, smollm2_hparams, llama_layer),
    "granite": Family("granite", "smollm2", 14, None, granite_hparams, granite_layer, granite_extra),
    # the experts' width is feed_forward_length in llama.cpp's granitemoe
    "granitemoe": Family("granitemoe", "smollm2", 18, None,
                         lambda src: granite_hparams(src) | {"feed_forward_length": (768, U32)} | MOE_KEYS,
                         granitemoe_layer, granite_extra),
    # no input norms, q and k normed whole, post-norms; llama.cpp requires olmo2's output matrix
    "olmo2": Family("olmo2", "smollm2", 15, None, smollm2_hparams,
                    lambda src, i, rng: post_norm_layer(src, i, rng, whole_qk=True), output_extra),
    # olmo2's layer with per-head q/k norms; SmolLM2's 30 layers are EXAONE 4.0 1.2B's: no window, rope everywhere
    "exaone4": Family("exaone4", "smollm2", 16, None, smollm2_hparams,
                      lambda src, i, rng: post_norm_layer(src, i, rng, whole_qk=False)),
    "glm4": Family("glm4", "smollm2", 17, None,
                   lambda src: smollm2_hparams(src, **{"rope.dimension_count": (GLM4_N_ROT, U32)}), glm4_layer),
}


def general_name(family: str) -> str:
    fam = FAMILIES[family]
    return fam.name or f"{fam.source}-as-{family}"


# --- encoding and writing ----------------------------------------------------------------------------------


def tensor_type(name: str, n_cols: int, quant: str, arch: str = "") -> str:
    """The ggml type of a 2-d/3-d layer matrix in variant `quant` (Q4_K_M: llama.cpp's choices)."""
    kind = name.split(".")[-2]
    if quant != "F16" and kind in MXFP4_EXPERTS.get(arch, ()):
        return "MXFP4"
    if quant != "Q4_K_M":
        return quant
    k_type = "Q6_K" if kind in Q4_K_M_Q6_K else "Q4_K"
    return k_type if n_cols % 256 == 0 else K_FALLBACK[k_type]


def encode(name: str, values: np.ndarray, quant: str, arch: str = "") -> tuple[np.ndarray,
                                                                               gguf.GGMLQuantizationType | None]:
    """(array for GGUFWriter.add_tensor, raw_dtype): 1-d tensors, biases (the experts' are 2-d), sinks and
    routers stay float32."""
    if values.ndim == 1 or name.endswith(".bias") or name.split(".")[-2] in KEEP_F32:
        return np.ascontiguousarray(values, dtype=np.float32), None
    type_name = tensor_type(name, values.shape[-1], quant, arch)
    return quantize(values, type_name), gguf.GGMLQuantizationType[type_name]


def derive(family: str, quant: str, out: Path) -> Path:
    """Write `family` dressed from its source model, matrices encoded as `quant`, to `out`; returns `out`."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; known: {', '.join(QUANTS)}")
    fam = FAMILIES[family]
    src = Source(fam.source)
    rng = np.random.default_rng(fam.seed)
    out = Path(out)
    writer = gguf.GGUFWriter(str(out), fam.arch)
    writer.add_string("general.type", "model")
    writer.add_string("general.name", general_name(family))
    writer.add_uint32("general.file_type", FILE_TYPES[quant])
    writer.add_uint32("general.quantization_version", 2)
    for key, (value, kind) in fam.hparams(src).items():
        writer.add_key_value(f"{fam.arch}.{key}", value, kind)
    template = (TEMPLATES / fam.template).read_text() if fam.template else None
    for key, value, kind, sub_type in src.tokenizer_metadata():
        if key != "tokenizer.chat_template" or template is None:
            writer.add_key_value(key, value, kind, sub_type=sub_type)
    if template is not None:
        writer.add_key_value("tokenizer.chat_template", template, STR)

    embd = src.file.tensor("token_embd.weight")  # copied as it is (Q8_0 in both sources)
    writer.add_tensor("token_embd.weight", embd.raw, raw_dtype=gguf.GGMLQuantizationType[embd.type_name])
    tensors = {f"{name}.weight": values for name, values in fam.extra(src).items()}
    tensors.setdefault("output_norm.weight", src.values("output_norm.weight"))
    for name, values in tensors.items():
        array, raw_dtype = encode(name, values, quant, fam.arch)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    for i in range(src.n_layer):
        for name, values in fam.layer(src, i, rng).items():
            full = f"blk.{i}.{name}" + ("" if name.endswith(".bias") else ".weight")
            array, raw_dtype = encode(full, values, quant, fam.arch)
            writer.add_tensor(full, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    src.file.close()
    return out


# --- the cache the tests use -------------------------------------------------------------------------------


def code_key() -> str:
    """sha256 of the deriving code (this file and the encoders): a change rebuilds every derived file."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(__file__).with_name("quantize.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def derived_path(family: str, quant: str, cache_dir: Path | None = None) -> Path:
    """The derived file in the cache (default ~/.cache/llamapyz/derived), built on first use."""
    folder = Path(cache_dir) if cache_dir is not None else models_cache_dir().parent / "derived"
    target = folder / f"{family}-{quant}-{code_key()}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        derive(family, quant, Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # atomic: a concurrent builder writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for stale in folder.glob(f"{family}-{quant}-{'[0-9a-f]' * 16}.gguf"):  # built by older deriving code
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in FAMILIES or argv[1] not in QUANTS:
        print(f"usage: python -m tests.dress FAMILY QUANT OUT.gguf\n  FAMILY: {' | '.join(FAMILIES)}\n"
              f"  QUANT: {' | '.join(QUANTS)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = derive(argv[0], argv[1], Path(argv[2]))
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
