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

With `-ngl N`, the last N layers (and perhaps the head) run on a GPU (`gpu.offload.Offload`, set by the Model):
the CPU runs the layers before them, then hands the hidden state over once; the device's kernels keep the
same per-token guarantees, with float32 activations instead of int8 ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import layer as fused_kernels
from ..kernels.linear import MatrixGroup, QuantMatrix
from ..kernels.steps import rms_norm_heads
from .fused import NONE, FusedLayer, Scratch, ScratchPool
from .hparams import ModelConfig
from .kv_cache import KVCache
from .moe import moe_ffn
from .ops import Rope, attention, gated_ffn_input, rms_norm, softcap
from .weights import LayerWeights, Weights


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
        self.fused = [FusedLayer.of(layer, self.group) for layer in weights.layers]
        self.scratch = ScratchPool(config, self.fused)
        self.offload = None  # the last layers on a GPU (gpu.offload.Offload), set by the Model

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
        return self.group(*matrices).project(x, keep)

    def group(self, *matrices: QuantMatrix) -> MatrixGroup:
        key = tuple(map(id, matrices))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = MatrixGroup(matrices)
        return group

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
        positions = np.concatenate([np.arange(s.pos0, s.pos0 + s.n) for s in segments])  # (n,) of each row
        scratch = self.scratch.get(n)
        x = w.token_embd.rows(tokens)  # (n, n_embd)
        if opt.scale_embeddings:
            x *= np.float32(np.sqrt(c.n_embd))
        n_cpu = c.n_layer - (self.offload.n_layers if self.offload else 0)
        for il, layer in enumerate(w.layers[:n_cpu]):
            q, k, v = self.attention_input(il, layer, x, positions, scratch)
            attn = self.attend(il, q, k, v, segments)
            self.add_attention_output(il, layer, x, attn, scratch)
            self.add_ffn(il, layer, x, scratch)
        if self.offload is not None:  # the hidden state crosses to the device and back once
            x = self.offload.run(x, positions, segments, output)
            if self.offload.head:  # x is what `output` asks for, logits not yet capped
                return self.capped(x) if output in ("last", "all") else x
        if output == "none":
            return None
        if output == "last":
            x = x[-1:]
        x = rms_norm(x, w.output_norm, c.rms_eps)
        if output == "hidden":
            return x
        (logits,) = self.project(x, w.output, keep=True)
        return self.capped(logits)

    def capped(self, logits: np.ndarray) -> np.ndarray:
        """The final logits' soft-capping (gemma2), where the model has one."""
        cap = self.config.final_softcap
        return softcap(logits, cap) if cap else logits

    # The layer's steps. Each runs as one numba call (`kernels/layer.py`) where the layer's products allow
    # (`fused.FusedLayer`), else as the Python steps below it: the same kernels in the same order.

    def attention_input(self, il: int, layer: LayerWeights, x: np.ndarray, positions: np.ndarray,
                        scratch: Scratch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """rms_norm, then q, k, v (n, dim) each; q and k normed per head (qk_norm) and rotated."""
        c, fused, rope = self.config, self.fused[il], self.rope_of_layer[il]
        q_dim = c.n_head * c.head_dim
        if fused.qkv is not None:
            qkv = scratch.qkv
            fused_kernels.attention_input(
                x, fused.buffer, layer.attn_norm, c.rms_eps, fused.qkv, scratch.embd_forms, scratch.h, qkv,
                _or_none(layer.attn_q_norm),
                _or_none(layer.attn_k_norm),
                (c.n_head, c.n_head_kv, c.head_dim), rope.tables, positions)
            return qkv[:, :q_dim], qkv[:, q_dim:q_dim + c.kv_dim], qkv[:, q_dim + c.kv_dim:]
        h = rms_norm(x, layer.attn_norm, c.rms_eps)
        q, k, v = self.project(h, layer.attn_q, layer.attn_k, layer.attn_v)
        if c.options.qk_norm:
            rms_norm_heads(q, 0, c.n_head, c.head_dim, layer.attn_q_norm, c.rms_eps)
            rms_norm_heads(k, 0, c.n_head_kv, c.head_dim, layer.attn_k_norm, c.rms_eps)
        rope(q, c.n_head, positions)
        rope(k, c.n_head_kv, positions)
        return q, k, v

    def attend(self, il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, segments: list[Segment]) -> np.ndarray:
        """Store each sequence's keys and values in its cache, then its queries' attention (n, q_dim)."""
        c = self.config
        window = 0 if c.is_global(il) else c.sliding_window
        heads = []
        row = 0
        for seg in segments:
            rows = slice(row, row + seg.n)
            row += seg.n
            seg.cache.store(il, seg.pos0, k[rows], v[rows])
            key_start = max(0, seg.pos0 - window + 1) if window else 0
            keys, values = seg.cache.read(il, key_start, seg.pos0 + seg.n)
            heads.append(attention(q[rows].reshape(seg.n, c.n_head, c.head_dim),
                                   keys.reshape(-1, c.n_head_kv, c.head_dim),
                                   values.reshape(-1, c.n_head_kv, c.head_dim), seg.pos0, key_start, window,
                                   c.attention_scale, c.attn_softcap))
        return heads[0] if len(heads) == 1 else np.concatenate(heads)

    def add_attention_output(self, il: int, layer: LayerWeights, x: np.ndarray, attn: np.ndarray,
                             scratch: Scratch) -> None:
        """x += post_norm(attn @ attn_output.T)."""
        c, fused = self.config, self.fused[il]
        if fused.o is not None:
            fused_kernels.add_attention_output(
                x, fused.buffer, attn, fused.o, scratch.q_forms, scratch.out,
                _or_none(layer.post_attention_norm), c.rms_eps)
            return
        (out,) = self.project(attn, layer.attn_output)
        if c.options.post_norms:
            out = rms_norm(out, layer.post_attention_norm, c.rms_eps)
        x += out

    def add_ffn(self, il: int, layer: LayerWeights, x: np.ndarray, scratch: Scratch) -> None:
        """x += post_norm(ffn(rms_norm(x))): the gated FFN, or the experts'."""
        c, opt, fused = self.config, self.config.options, self.fused[il]
        if fused.gate_up is not None:
            fused_kernels.add_ffn(
                x, fused.buffer, layer.ffn_norm, c.rms_eps, fused.gate_up, scratch.embd_forms, scratch.h,
                scratch.gu, opt.ffn_activation == "gelu_tanh", scratch.act, fused.down, scratch.ff_forms,
                scratch.out, _or_none(layer.post_ffw_norm))
            return
        h = rms_norm(x, layer.ffn_norm, c.rms_eps)
        if layer.experts is not None:
            out = moe_ffn(h, layer.experts, c, lambda x, *m: self.project(x, *m))
        else:
            gate, up = self.project(h, layer.ffn_gate, layer.ffn_up)
            (out,) = self.project(gated_ffn_input(gate, up, opt.ffn_activation), layer.ffn_down)
        if opt.post_norms:
            out = rms_norm(out, layer.post_ffw_norm, c.rms_eps)
        x += out


@dataclass
class Segment:
    """n consecutive tokens of one sequence, at positions pos0.., with that sequence's cache."""

    cache: KVCache
    pos0: int
    n: int


def _or_none(weight: np.ndarray | None) -> np.ndarray:
    """A norm weight for the layer kernels: an absent one as the empty array they read as "no norm"."""
    return NONE if weight is None else weight
