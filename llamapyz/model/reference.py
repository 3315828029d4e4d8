"""The families' specification in plain float32 numpy: a forward pass that executes a model's `recipe` step by
step, with weights dequantized whole, textbook attention over the whole sequence, no caches, chunks or kernels.

It is the tests' oracle: the engine's output is checked against it (tests/test_model.py,
tests/test_architectures.py, tests/test_gpu_offload.py), and it against llama.cpp's golden outputs
(tests/test_reference_model.py); its functions are the numba kernels' numpy twins (tests/test_steps.py). Like
every backend it knows the steps (`STEPS`, one method each), never the families: what a file's model does is
its recipe, derived on each call from the config and the tensors as they are then (a test may take a
feature away to see the output change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..gguf.reader import load_gguf
from .hparams import ModelConfig, Yarn
from .ops import rope_angles
from .recipe import Step, recipe


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, base: float, n_rot: int, neox: bool,
         factors: np.ndarray | None = None, freq_scale: float = 1.0, attn_factor: float = 1.0,
         yarn: Yarn | None = None) -> np.ndarray:
    """Rotate (n_tokens, n_heads, head_dim) by position. llama: pairs (2i, 2i+1); NEOX: (i, i + n_rot/2).
    Dimensions past n_rot stay. Frequency i turns by p * freq_scale * base^(-2i/n_rot) / factors[i] (YaRN:
    mixed with the unscaled turn, `ops.rope_angles`)."""
    half = n_rot // 2
    angle = rope_angles(positions, base, n_rot, factors, freq_scale, yarn)  # (n_tokens, half)
    cos = (np.cos(angle) * attn_factor).astype(np.float32)[:, None, :]
    sin = (np.sin(angle) * attn_factor).astype(np.float32)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def swiglu_oai(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g, u = np.minimum(gate, np.float32(7.0)), np.clip(up, np.float32(-7.0), np.float32(7.0))
    return g / (1 + np.exp(np.float32(-1.702) * g)) * (u + 1)


# the FFN's gated activations: (gate, up) -> its input to ffn_down
GATED = {"silu": lambda g, u: silu(g) * u, "gelu_tanh": lambda g, u: gelu_tanh(g) * u, "swiglu_oai": swiglu_oai}


class Values:
    """One call's activations, as the steps pass them on (see `recipe`)."""

    def __init__(self, tokens: np.ndarray, kv_type: str) -> None:
        self.tokens = tokens
        self.positions = np.arange(len(tokens))
        self.kv_type = kv_type
        self.x = self.h = self.q = self.k = self.v = np.empty(0, np.float32)


class ReferenceModel:
    def __init__(self, path: Path, n_ctx: int | None = None) -> None:
        with load_gguf(path) as gguf:
            self.config = ModelConfig.from_metadata(gguf.metadata)
            self.w = {name: t.dequantize() for name, t in gguf.tensors.items()}  # numpy shapes (out, in)
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])  # (n_vocab, n_embd)
        c = self.config
        n_ctx = n_ctx or min(4096, c.n_ctx_train)  # LongRoPE: long factors when the context is the longer
        self.rope_factors = self.w.get("rope_freqs.weight")
        if "rope_factors_long.weight" in self.w:
            self.rope_factors = self.w["rope_factors_long.weight" if n_ctx > c.rope_original_ctx
                                       else "rope_factors_short.weight"]

    def logits(self, tokens: list[int], kv_type: str = "f32") -> np.ndarray:
        """(n_tokens, n_vocab) float32 for every position of a fresh context; kv_type "f16": keys (after rope)
        and values rounded to float16, as a float16 KV cache stores them."""
        r = recipe(self.config, self.w)
        a = Values(np.asarray(tokens), kv_type)
        for step in r.embed:
            self.run(step, "", a)
        for il, steps in enumerate(r.layers):
            for step in steps:
                self.run(step, f"blk.{il}.", a)
        for step in r.final + r.head:
            self.run(step, "", a)
        return a.h.astype(np.float32)

    def run(self, step: Step, p: str, a: Values) -> None:
        """One step; p: its tensors' prefix ("blk.{il}." in a layer)."""
        self.STEPS[step.name](self, step, p, a)

    def linear(self, x: np.ndarray, name: str, bias: bool = False) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        return y + self.w[name + ".bias"] if bias and name + ".bias" in self.w else y

    def bias(self, name: str, e: int | None = None) -> np.ndarray | float:
        """The tensor's bias (expert e's row of a per-expert one), or 0 when the file has none."""
        b = self.w.get(name + ".bias")
        return 0.0 if b is None else b if e is None else b[e]

    # --- the steps ---------------------------------------------------------------------------------------

    def embed(self, step, p: str, a: Values) -> None:
        a.x = self.w["token_embd.weight"][a.tokens]  # (n, n_embd)
        if step.scaled:
            a.x = a.x * np.float32(np.sqrt(self.config.n_embd))
        if step.multiplier != 1.0:
            a.x = a.x * np.float32(step.multiplier)

    def norm(self, step, p: str, a: Values) -> None:
        a.h = rms_norm(a.x, self.w[f"{p}{step.weight}.weight"], self.config.rms_eps)

    def no_norm(self, step, p: str, a: Values) -> None:
        a.h = a.x

    def qkv(self, step, p: str, a: Values) -> None:
        c, n = self.config, len(a.tokens)
        if step.fused:
            fused = self.linear(a.h, p + "attn_qkv", step.bias)
            q_dim = c.n_head * c.head_dim
            q, k, v = fused[:, :q_dim], fused[:, q_dim:q_dim + c.kv_dim], fused[:, q_dim + c.kv_dim:]
        else:
            q, k, v = (self.linear(a.h, p + name, step.bias) for name in ("attn_q", "attn_k", "attn_v"))
        a.q, a.k = q.reshape(n, c.n_head, c.head_dim), k.reshape(n, c.n_head_kv, c.head_dim)
        a.v = v.reshape(n, c.n_head_kv, c.head_dim)

    def qk_norm(self, step, p: str, a: Values) -> None:
        q, k = (a.q.reshape(len(a.q), -1), a.k.reshape(len(a.k), -1)) if step.whole else (a.q, a.k)  # whole: (n, all)
        a.q = rms_norm(q, self.w[p + "attn_q_norm.weight"], self.config.rms_eps).reshape(a.q.shape)
        a.k = rms_norm(k, self.w[p + "attn_k_norm.weight"], self.config.rms_eps).reshape(a.k.shape)

    def rotate(self, step, p: str, a: Values) -> None:
        turn = dict(base=step.base, n_rot=step.n_rot, neox=step.neox,
                    factors=self.rope_factors if step.factors else None, freq_scale=step.freq_scale,
                    attn_factor=step.attn_factor, yarn=step.yarn)
        a.q, a.k = rope(a.q, a.positions, **turn), rope(a.k, a.positions, **turn)

    def temperature(self, step, p: str, a: Values) -> None:
        scale = 1 + step.scale * np.log(np.floor(a.positions / step.floor_scale) + 1)
        a.q = a.q * scale.astype(np.float32)[:, None, None]

    def attention(self, step, p: str, a: Values) -> None:
        c, q, k, v, positions = self.config, a.q, a.k, a.v, a.positions
        if a.kv_type == "f16":
            k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        mask = positions[None, :] <= positions[:, None]  # (query, key): causal
        if step.window:
            mask = mask & (positions[:, None] - positions[None, :] < step.window)
        group = c.n_head // c.n_head_kv
        heads = []
        for hd in range(c.n_head):
            scores = q[:, hd] @ k[:, hd // group].T * np.float32(step.scale)
            if step.softcap:
                scores = step.softcap * np.tanh(scores / step.softcap)
            scores = np.where(mask, scores, -np.inf)
            best = scores.max(axis=-1, keepdims=True)
            if step.sinks:  # one more score per head, without a value
                best = np.maximum(best, self.w[p + "attn_sinks.weight"][hd])
            probs = np.exp(scores - best)
            total = probs.sum(axis=-1, keepdims=True)
            if step.sinks:
                total = total + np.exp(self.w[p + "attn_sinks.weight"][hd] - best)
            probs /= total
            heads.append(probs @ v[:, hd // group])
        a.h = np.concatenate(heads, axis=-1)

    def attn_output(self, step, p: str, a: Values) -> None:
        a.h = self.linear(a.h, p + "attn_output", step.bias)

    def post_norm(self, step, p: str, a: Values) -> None:
        a.h = rms_norm(a.h, self.w[f"{p}{step.weight}.weight"], self.config.rms_eps)

    def residual(self, step, p: str, a: Values) -> None:
        a.x = a.x + (a.h * np.float32(step.scale) if step.scale != 1.0 else a.h)

    def ffn(self, step, p: str, a: Values) -> None:
        if step.fused:
            gate, up = np.split(self.linear(a.h, p + "ffn_up", step.bias), 2, axis=-1)
        else:
            gate, up = self.linear(a.h, p + "ffn_gate", step.bias), self.linear(a.h, p + "ffn_up", step.bias)
        a.h = self.linear(GATED[step.activation](gate, up), p + "ffn_down", step.bias)

    def moe(self, step, p: str, a: Values) -> None:
        """The router (softmax, then top-k, renormalized or not; or top-k logits, then their softmax), each chosen
        expert's FFN summed best first (llama.cpp's order), plus the shared expert's."""
        h, act = a.h, GATED[step.activation]
        logits = self.linear(h, p + "ffn_gate_inp", bias=True)  # (n, n_expert)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.zeros_like(h)
        name = {k: p + f"ffn_{k}_exps" for k in ("gate", "up", "down")}
        gate, up, down = (self.w[name[k] + ".weight"] for k in ("gate", "up", "down"))
        for i in range(len(h)):
            if step.gating == "softmax_weight":
                chosen = np.argsort(-logits[i], kind="stable")[:step.n_used]
                weights = np.exp(logits[i, chosen] - logits[i, chosen].max())
                weights /= weights.sum()
            else:
                chosen = np.argsort(-probs[i], kind="stable")[:step.n_used]
                weights = probs[i, chosen] / (probs[i, chosen].sum() if step.normalize else 1)
            if step.weights_scale not in (0.0, 1.0):
                weights = weights * step.weights_scale
            for e, weight in zip(chosen, weights, strict=True):
                g = gate[e] @ h[i] + self.bias(name["gate"], e)
                u = up[e] @ h[i] + self.bias(name["up"], e)
                out[i] += weight * (down[e] @ act(g, u) + self.bias(name["down"], e))
        if step.shared:
            g, u = self.linear(h, p + "ffn_gate_shexp"), self.linear(h, p + "ffn_up_shexp")
            shared = self.linear(act(g, u), p + "ffn_down_shexp")
            if step.shared == "gated":
                shared = shared / (1 + np.exp(-(h @ self.w[p + "ffn_gate_inp_shexp.weight"])))[:, None]
            out = out + shared
        a.h = out

    def head(self, step, p: str, a: Values) -> None:
        logits = a.h @ self.w[step.tensor + ".weight"].T
        if step.softcap:
            logits = step.softcap * np.tanh(logits / step.softcap)
        if step.logit_scale != 1.0:
            logits = logits * step.multiplier
        a.h = logits

    STEPS = {"embed": embed, "rms_norm": norm, "no_norm": no_norm, "qkv": qkv, "qk_norm": qk_norm, "rope": rotate,
             "temperature": temperature, "attention": attention,
             "output": attn_output, "post_norm": post_norm, "residual": residual, "ffn": ffn, "moe": moe, "head": head}
