"""The forward pass: tokens in, logits (or final hidden states) out, one readable function for every
architecture in `config.ARCHITECTURES`.

A call processes n tokens at positions pos0..pos0+n-1 against the KV cache. With n == 1 (decode) every
projection is an integer matrix-vector kernel on the quantized weights; with n > 1 (a prefill chunk) it
is a decoded-tile matrix product through BLAS, one pass over the weights for the whole chunk.
"""

from __future__ import annotations

import numpy as np

from ..kernels.linear import QuantizedVector, QuantMatrix
from .config import ModelConfig
from .kv_cache import KVCache
from .ops import Rope, attention, gated_ffn_input, rms_norm
from .weights import Weights


class Transformer:
    def __init__(self, config: ModelConfig, weights: Weights, n_ctx: int) -> None:
        self.config = config
        self.weights = weights
        self.n_ctx = n_ctx
        c = config
        ropes: dict[float, Rope] = {}
        for layer in range(c.n_layer):
            base = c.rope_base_of(layer)
            if base not in ropes:
                ropes[base] = Rope(base, c.n_rot, n_ctx, c.options.rope_neox)
        self.rope_of_layer = [ropes[c.rope_base_of(layer)] for layer in range(c.n_layer)]
        self._vectors: dict[int, QuantizedVector] = {}  # decode: quantized input, by length

    @property
    def derived_bytes(self) -> int:
        """Float32 data derived from the file: norm weights and rope tables."""
        tables = {id(r): r.cos.nbytes + r.sin.nbytes for r in self.rope_of_layer}
        return self.weights.derived_bytes + sum(tables.values())

    def project(self, x: np.ndarray, *matrices: QuantMatrix) -> list[np.ndarray]:
        """x (n, n_in) @ W.T for each W; one quantization of x serves every W in decode."""
        if x.shape[0] > 1:
            return [m.matmul(x) for m in matrices]
        n_in = x.shape[1]
        if n_in not in self._vectors:
            self._vectors[n_in] = QuantizedVector(n_in)
        vector = self._vectors[n_in].set(x[0])
        return [m.matvec(vector, np.empty((1, m.n_rows), np.float32)[0])[None, :] for m in matrices]

    def forward(self, tokens: np.ndarray, pos0: int, cache: KVCache, output: str = "last") -> np.ndarray | None:
        """Run tokens (n,) at positions pos0.. through the model, filling the cache.

        output: "last" -> logits of the last token (1, n_vocab); "all" -> logits (n, n_vocab);
        "hidden" -> final normalized hidden states (n, n_embd); "none" -> nothing (only the cache is filled).
        """
        c, w, opt = self.config, self.weights, self.config.options
        n = len(tokens)
        x = w.token_embd.rows(tokens)  # (n, n_embd)
        if opt.scale_embeddings:
            x *= np.float32(np.sqrt(c.n_embd))
        for il, layer in enumerate(w.layers):
            # attention
            h = rms_norm(x, layer.attn_norm, c.rms_eps)
            q, k, v = self.project(h, layer.attn_q, layer.attn_k, layer.attn_v)
            q = q.reshape(n, c.n_head, c.head_dim)
            k = k.reshape(n, c.n_head_kv, c.head_dim)
            if opt.qk_norm:
                q = rms_norm(q, layer.attn_q_norm, c.rms_eps)
                k = rms_norm(k, layer.attn_k_norm, c.rms_eps)
            self.rope_of_layer[il](q, pos0)
            self.rope_of_layer[il](k, pos0)
            cache.store(il, pos0, k.reshape(n, c.kv_dim), v)
            window = 0 if c.is_global(il) else c.sliding_window
            key_start = max(0, pos0 - window + 1) if window else 0
            keys, values = cache.read(il, key_start, pos0 + n)
            attn = attention(q, keys.reshape(-1, c.n_head_kv, c.head_dim), values.reshape(-1, c.n_head_kv, c.head_dim),
                             pos0, key_start, window, c.attention_scale)
            (attn,) = self.project(attn, layer.attn_output)
            if opt.post_norms:
                attn = rms_norm(attn, layer.post_attention_norm, c.rms_eps)
            x += attn
            # feed-forward
            h = rms_norm(x, layer.ffn_norm, c.rms_eps)
            gate, up = self.project(h, layer.ffn_gate, layer.ffn_up)
            (ffn,) = self.project(gated_ffn_input(gate, up, opt.ffn_activation), layer.ffn_down)
            if opt.post_norms:
                ffn = rms_norm(ffn, layer.post_ffw_norm, c.rms_eps)
            x += ffn
        if output == "none":
            return None
        if output == "last":
            x = x[-1:]
        x = rms_norm(x, w.output_norm, c.rms_eps)
        if output == "hidden":
            return x
        (logits,) = self.project(x, w.output)
        return logits
