"""A plain float32 numpy forward pass for every architecture the engine runs: weights dequantized whole,
textbook attention over the full sequence, no caches, no chunks, no kernels. The engine's output is
checked against it (tests/test_model.py, tests/test_architectures.py), and it against llama.cpp's golden
outputs (tests/test_reference_model.py).

It is keyed on the same named options as the product (`llamapyz.model.hparams`: rope style, qk norm, post
norms, sliding layers, soft-capping, experts ...), never on architecture names, and reads the tensor
layouts straight from the file (fused `attn_qkv` / `ffn_up`, biases, 3-d expert tensors, rope factors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llamapyz.gguf.reader import load_gguf
from llamapyz.model.hparams import ModelConfig


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, base: float, n_rot: int, neox: bool,
         factors: np.ndarray | None = None, freq_scale: float = 1.0, attn_factor: float = 1.0) -> np.ndarray:
    """Rotate (n_tokens, n_heads, head_dim) by position. llama: pairs (2i, 2i+1); NEOX: (i, i + n_rot/2).
    Dimensions past n_rot stay. Frequency i turns by p * freq_scale * base^(-2i/n_rot) / factors[i]."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2 / n_rot) * freq_scale
    if factors is not None:
        inv_freq = inv_freq / factors
    angle = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (n_tokens, half)
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


class ReferenceModel:
    def __init__(self, path: Path, n_ctx: int | None = None) -> None:
        with load_gguf(path) as gguf:
            self.config = ModelConfig.from_metadata(gguf.metadata)
            self.w = {name: t.dequantize() for name, t in gguf.tensors.items()}  # numpy shapes (out, in)
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])
        c = self.config
        n_ctx = n_ctx or min(4096, c.n_ctx_train)  # LongRoPE: long factors when the context is the longer
        self.rope_factors = self.w.get("rope_freqs.weight")
        if "rope_factors_long.weight" in self.w:
            self.rope_factors = self.w["rope_factors_long.weight" if n_ctx > c.rope_original_ctx
                                       else "rope_factors_short.weight"]

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[name + ".weight"].T
        return y + self.w[name + ".bias"] if name + ".bias" in self.w else y

    def qkv(self, h: np.ndarray, p: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.config
        if p + "attn_qkv.weight" not in self.w:
            return self.linear(h, p + "attn_q"), self.linear(h, p + "attn_k"), self.linear(h, p + "attn_v")
        fused = self.linear(h, p + "attn_qkv")
        q_dim = c.n_head * c.head_dim
        return fused[:, :q_dim], fused[:, q_dim:q_dim + c.kv_dim], fused[:, q_dim + c.kv_dim:]

    def ffn(self, h: np.ndarray, p: str) -> np.ndarray:
        c = self.config
        act = gelu_tanh if c.options.ffn_activation == "gelu_tanh" else silu
        if c.n_expert:
            return self.moe(h, p, act)
        if c.options.fused_ffn:
            gate_up = self.linear(h, p + "ffn_up")
            gate, up = np.split(gate_up, 2, axis=-1)
        else:
            gate, up = self.linear(h, p + "ffn_gate"), self.linear(h, p + "ffn_up")
        return self.linear(act(gate) * up, p + "ffn_down")

    def moe(self, h: np.ndarray, p: str, act) -> np.ndarray:
        """Softmax router, top-k experts, weights renormalized, summed best first (llama.cpp's order)."""
        c = self.config
        logits = h @ self.w[p + "ffn_gate_inp.weight"].T  # (n, n_expert)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.zeros_like(h)
        gate, up, down = (self.w[p + f"ffn_{k}_exps.weight"] for k in ("gate", "up", "down"))
        for i in range(len(h)):
            chosen = np.argsort(-probs[i], kind="stable")[:c.n_expert_used]
            weights = probs[i, chosen] / probs[i, chosen].sum()
            if c.expert_weights_scale not in (0.0, 1.0):
                weights = weights * c.expert_weights_scale
            for e, weight in zip(chosen, weights, strict=True):
                out[i] += weight * (down[e] @ (act(gate[e] @ h[i]) * (up[e] @ h[i])))
        return out

    def logits(self, tokens: list[int], kv_type: str = "f32") -> np.ndarray:
        """(n_tokens, n_vocab) float32 for every position of a fresh context; kv_type "f16": keys (after rope)
        and values rounded to float16, as a float16 KV cache stores them."""
        c, w, opt = self.config, self.w, self.config.options
        n = len(tokens)
        positions = np.arange(n)
        x = w["token_embd.weight"][tokens]  # (n, n_embd)
        if opt.scale_embeddings:
            x = x * np.float32(np.sqrt(c.n_embd))
        causal = positions[None, :] <= positions[:, None]  # (query, key)
        for il in range(c.n_layer):
            p = f"blk.{il}."
            # attention
            h = rms_norm(x, w[p + "attn_norm.weight"], c.rms_eps)
            q, k, v = self.qkv(h, p)
            q, k = q.reshape(n, c.n_head, c.head_dim), k.reshape(n, c.n_head_kv, c.head_dim)
            v = v.reshape(n, c.n_head_kv, c.head_dim)
            if opt.qk_norm:
                q = rms_norm(q, w[p + "attn_q_norm.weight"], c.rms_eps)
                k = rms_norm(k, w[p + "attn_k_norm.weight"], c.rms_eps)
            turn = dict(base=c.rope_base_of(il), n_rot=c.n_rot, neox=opt.rope_neox, factors=self.rope_factors,
                        freq_scale=c.rope_freq_scale, attn_factor=c.rope_attn_factor)
            q, k = rope(q, positions, **turn), rope(k, positions, **turn)
            if kv_type == "f16":
                k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
            mask = causal
            if not c.is_global(il):
                mask = causal & (positions[:, None] - positions[None, :] < c.sliding_window)
            group = c.n_head // c.n_head_kv
            heads = []
            for hd in range(c.n_head):
                scores = q[:, hd] @ k[:, hd // group].T * np.float32(c.attention_scale)
                if c.attn_softcap:
                    scores = c.attn_softcap * np.tanh(scores / c.attn_softcap)
                scores = np.where(mask, scores, -np.inf)
                probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
                probs /= probs.sum(axis=-1, keepdims=True)
                heads.append(probs @ v[:, hd // group])
            attn = self.linear(np.concatenate(heads, axis=-1), p + "attn_output")
            if opt.post_norms:
                attn = rms_norm(attn, w[p + "post_attention_norm.weight"], c.rms_eps)
            x = x + attn
            # feed-forward
            ffn = self.ffn(rms_norm(x, w[p + "ffn_norm.weight"], c.rms_eps), p)
            if opt.post_norms:
                ffn = rms_norm(ffn, w[p + "post_ffw_norm.weight"], c.rms_eps)
            x = x + ffn
        x = rms_norm(x, w["output_norm.weight"], c.rms_eps)
        logits = x @ self.output.T
        if c.final_softcap:
            logits = c.final_softcap * np.tanh(logits / c.final_softcap)
        return logits.astype(np.float32)
