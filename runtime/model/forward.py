"""The forward pass: tokens in, logits (or final hidden states) out, one readable function for every
architecture in `config.ARCHITECTURES`.

A call processes chunks of prompt tokens (prefill: one sequence, or several in the server), or one new
token of each of several sequences (decode), each sequence against its own KV cache. Both take one
numeric path: projections are our integer kernels on the quantized weights (activations quantized to
int8 blocks, as llama.cpp does), or our fixed-order float kernel for float formats; attention is computed
row by row. No BLAS: its kernels differ per matrix shape, thread count and CPU.

Each row's result therefore depends only on its own sequence, never on how the rows were batched or
chunked, on any CPU: that is what lets the server batch requests and reuse cached prompts and still give
every request the output it would get alone, and it makes prefill and token-by-token decode bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.linear import MatrixGroup, QuantMatrix
from .config import ModelConfig
from .kv_cache import KVCache
from .moe import moe_ffn
from .ops import Rope, attention, gated_ffn_input, rms_norm, softcap
from .weights import Weights


class Transformer:
    def __init__(self, config: ModelConfig, weights: Weights, n_ctx: int) -> None:
        self.config = config
        self.weights = weights
        self.n_ctx = n_ctx
        c = config
        self.rope_factors = self.choose_rope_factors(config, weights, n_ctx)
        ropes: dict[float, Rope] = {}
        for layer in range(c.n_layer):
            base = c.rope_base_of(layer)
            if base not in ropes:
                ropes[base] = Rope(base, c.n_rot, n_ctx, c.options.rope_neox, weights.rope_factors.get(
                    self.rope_factors), c.rope_freq_scale, c.rope_attn_factor)
        self.rope_of_layer = [ropes[c.rope_base_of(layer)] for layer in range(c.n_layer)]
        self._groups: dict[tuple[int, ...], MatrixGroup] = {}  # by the ids of the matrices (weights live on)

    @staticmethod
    def choose_rope_factors(config: ModelConfig, weights: Weights, n_ctx: int) -> str | None:
        """Which of the file's rope factors apply: rope_freqs always; LongRoPE's long set when the context
        is longer than the original one, else the short set (llama.cpp decides by n_ctx, not by position)."""
        factors = weights.rope_factors
        if "freqs" in factors:
            return "freqs"
        if factors:
            return "long" if n_ctx > config.rope_original_ctx else "short"
        return None

    @property
    def derived_bytes(self) -> int:
        """Float32 data derived from the file: norm weights and rope tables."""
        tables = {id(r): r.cos.nbytes + r.sin.nbytes for r in self.rope_of_layer}
        return self.weights.derived_bytes + sum(tables.values())

    def project(self, x: np.ndarray, *matrices: QuantMatrix, keep: bool = False) -> list[np.ndarray]:
        """x (n, n_in) @ W.T (+ bias) for each W, x quantized once for all of them (in one pass where they
        can share it: `MatrixGroup`). Prefill and decode take this same path, so a token's result is the
        same bits whether it came in a chunk of many, alone, or batched with other sequences. Decode's
        results are valid until the same matrices are used again, unless `keep`."""
        key = tuple(map(id, matrices))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = MatrixGroup(matrices)
        return group.project(x, keep)

    def forward(self, tokens: np.ndarray, pos0: int, cache: KVCache, output: str = "last") -> np.ndarray | None:
        """Run tokens (n,) of one sequence at positions pos0.. through the model (prefill), filling its cache.

        output: "last" -> logits of the last token (1, n_vocab); "all" -> logits (n, n_vocab);
        "hidden" -> final normalized hidden states (n, n_embd); "none" -> nothing (only the cache is filled).
        """
        return self._run(np.asarray(tokens), [Segment(cache, pos0, len(tokens))], output)

    def prefill_batch(self, chunks: list[tuple[np.ndarray, int, KVCache]]) -> None:
        """Prefill chunks of several sequences (tokens, pos0, cache) in one pass over the weights. A chunk's
        keys and values are the same as when it is prefilled alone."""
        tokens = np.concatenate([np.asarray(ids) for ids, _, _ in chunks])
        self._run(tokens, [Segment(cache, pos0, len(ids)) for ids, pos0, cache in chunks], "none")

    def decode_batch(self, tokens: np.ndarray, positions: list[int], caches: list[KVCache]) -> np.ndarray:
        """One token for each of several sequences (token i at positions[i] of caches[i]): logits (n, n_vocab).

        Every sequence's row goes through the same kernels, in the same order, as when it is decoded alone,
        so its logits do not depend on the company it keeps (batch invariance).
        """
        segments = [Segment(cache, pos, 1) for cache, pos in zip(caches, positions, strict=True)]
        return self._run(np.asarray(tokens), segments, "all")

    def _run(self, tokens: np.ndarray, segments: list[Segment], output: str) -> np.ndarray | None:
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
            window = 0 if c.is_global(il) else c.sliding_window
            heads = []
            row = 0
            for seg in segments:
                rows = slice(row, row + seg.n)
                row += seg.n
                self.rope_of_layer[il](q[rows], seg.pos0)
                self.rope_of_layer[il](k[rows], seg.pos0)
                seg.cache.store(il, seg.pos0, k[rows].reshape(seg.n, c.kv_dim), v[rows])
                key_start = max(0, seg.pos0 - window + 1) if window else 0
                keys, values = seg.cache.read(il, key_start, seg.pos0 + seg.n)
                heads.append(attention(q[rows], keys.reshape(-1, c.n_head_kv, c.head_dim),
                                       values.reshape(-1, c.n_head_kv, c.head_dim), seg.pos0, key_start, window,
                                       c.attention_scale, c.attn_softcap))
            attn = heads[0] if len(heads) == 1 else np.concatenate(heads)
            (attn,) = self.project(attn, layer.attn_output)
            if opt.post_norms:
                attn = rms_norm(attn, layer.post_attention_norm, c.rms_eps)
            x += attn
            # feed-forward
            h = rms_norm(x, layer.ffn_norm, c.rms_eps)
            if layer.experts is not None:
                ffn = moe_ffn(h, layer.experts, c, lambda x, *m: self.project(x, *m))
            else:
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
        (logits,) = self.project(x, w.output, keep=True)
        return softcap(logits, c.final_softcap) if c.final_softcap else logits


@dataclass
class Segment:
    """n consecutive tokens of one sequence, at positions pos0.., with that sequence's cache."""

    cache: KVCache
    pos0: int
    n: int
