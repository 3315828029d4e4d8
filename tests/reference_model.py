"""A plain numpy forward pass: slow, readable, float32, weights dequantized up front.

This is the yardstick the fast engine is tested against (and that is tested against llama.cpp's golden
outputs). It is deliberately naive: no KV cache, every position recomputed, one architecture option per
`if`. Config keys and tensor names are the GGUF ones (`{arch}.attention.head_count`, `blk.{i}.attn_q`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.gguf import load_gguf


@dataclass(frozen=True)
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    rope_base: float
    rope_base_local: float  # gemma3: local (sliding-window) layers use another base
    n_rot: int
    sliding_window: int  # 0: none
    global_every: int  # gemma3: every 6th layer is global

    @classmethod
    def from_metadata(cls, md: dict) -> Config:
        arch = md["general.architecture"]
        n_embd = md[f"{arch}.embedding_length"]
        n_head = md[f"{arch}.attention.head_count"]
        head_dim = md.get(f"{arch}.attention.key_length", n_embd // n_head)
        return cls(
            arch=arch,
            n_layer=md[f"{arch}.block_count"],
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=md.get(f"{arch}.attention.head_count_kv", n_head),
            head_dim=head_dim,
            rms_eps=md[f"{arch}.attention.layer_norm_rms_epsilon"],
            rope_base=md.get(f"{arch}.rope.freq_base", 10000.0),
            rope_base_local=10000.0,
            n_rot=md.get(f"{arch}.rope.dimension_count", head_dim),
            sliding_window=md.get(f"{arch}.attention.sliding_window", 0) if arch == "gemma3" else 0,
            global_every=6 if arch == "gemma3" else 1,
        )


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, base: float, n_rot: int, neox: bool) -> np.ndarray:
    """Rotate (n_tokens, n_heads, head_dim) by position. llama: pairs (2i, 2i+1); NEOX: (i, i + n_rot/2)."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2 / n_rot)
    angle = positions[:, None].astype(np.float64) * inv_freq[None, :]  # (n_tokens, half)
    cos = np.cos(angle).astype(np.float32)[:, None, :]
    sin = np.sin(angle).astype(np.float32)[:, None, :]
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
    def __init__(self, path: Path) -> None:
        with load_gguf(path) as gguf:
            self.config = Config.from_metadata(gguf.metadata)
            if self.config.arch not in ("llama", "gemma3"):
                raise ValueError(f"reference model: unknown architecture {self.config.arch!r}")
            self.w = {name: t.dequantize() for name, t in gguf.tensors.items()}  # numpy shapes (out, in)
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])

    def logits(self, tokens: list[int]) -> np.ndarray:
        """(n_tokens, n_vocab) float32 for every position of a fresh context."""
        c, w = self.config, self.w
        gemma = c.arch == "gemma3"
        n = len(tokens)
        positions = np.arange(n)
        x = w["token_embd.weight"][tokens]  # (n, n_embd)
        if gemma:
            x = x * np.float32(np.sqrt(c.n_embd))
        causal = positions[None, :] <= positions[:, None]  # (query, key)
        for il in range(c.n_layer):
            p = f"blk.{il}."
            is_global = (il + 1) % c.global_every == 0
            # attention
            h = rms_norm(x, w[p + "attn_norm.weight"], c.rms_eps)
            q = (h @ w[p + "attn_q.weight"].T).reshape(n, c.n_head, c.head_dim)
            k = (h @ w[p + "attn_k.weight"].T).reshape(n, c.n_head_kv, c.head_dim)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, c.n_head_kv, c.head_dim)
            if gemma:
                q = rms_norm(q, w[p + "attn_q_norm.weight"], c.rms_eps)
                k = rms_norm(k, w[p + "attn_k_norm.weight"], c.rms_eps)
            base = c.rope_base if (is_global or not gemma) else c.rope_base_local
            q = rope(q, positions, base, c.n_rot, neox=gemma)
            k = rope(k, positions, base, c.n_rot, neox=gemma)
            mask = causal
            if c.sliding_window and not is_global:
                mask = causal & (positions[:, None] - positions[None, :] < c.sliding_window)
            group = c.n_head // c.n_head_kv
            heads = []
            for hd in range(c.n_head):
                scores = q[:, hd] @ k[:, hd // group].T / np.float32(np.sqrt(c.head_dim))
                scores = np.where(mask, scores, -np.inf)
                probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
                probs /= probs.sum(axis=-1, keepdims=True)
                heads.append(probs @ v[:, hd // group])
            attn = np.concatenate(heads, axis=-1) @ w[p + "attn_output.weight"].T
            if gemma:
                attn = rms_norm(attn, w[p + "post_attention_norm.weight"], c.rms_eps)
            x = x + attn
            # feed-forward
            h = rms_norm(x, w[p + "ffn_norm.weight"], c.rms_eps)
            gate = h @ w[p + "ffn_gate.weight"].T
            act = gelu_tanh(gate) if gemma else silu(gate)
            ffn = (act * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            if gemma:
                ffn = rms_norm(ffn, w[p + "post_ffw_norm.weight"], c.rms_eps)
            x = x + ffn
        x = rms_norm(x, w["output_norm.weight"], c.rms_eps)
        return (x @ self.output.T).astype(np.float32)
