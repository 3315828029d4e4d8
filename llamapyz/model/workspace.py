"""Every array a forward pass writes, made once (llama2.c's RunState): a decode step allocates nothing in
Python beyond the logits it returns (`tests/test_workspace.py` measures it).

A `Workspace` holds the arrays of a pass of n rows; `Workspaces` makes one per n up to `REUSED_TOKENS`
(decode: one token of each of up to that many sequences) and keeps it, and a fresh one for a longer pass
(prefill, where the arithmetic dwarfs the allocation). Attention's per-query scratch is one set per thread
of the numba pool (`ops.AttentionWork`), sized by the context, shared by every pass of the model.

Each buffer carries its shape in a comment. A step writes its result into its buffer and the next step
reads it; no buffer outlives the pass that wrote it, except what the pass returns.
"""

from __future__ import annotations

import numpy as np

from ..kernels.linear import REUSED_TOKENS, form_buffers
from .hparams import ModelConfig
from .ops import AttentionWork


class Workspace:
    """The arrays of a forward pass of n rows (the fused kernels' and the Python steps' alike)."""

    def __init__(self, c: ModelConfig, n: int, n_ff: int, activations: dict[str, set[str]]) -> None:
        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.tokens = np.empty(n, np.int64)  # (n,) the rows' token ids
        self.positions = np.empty(n, np.int64)  # (n,) each row's position in its sequence
        self.x = np.empty((n, c.n_embd), np.float32)  # the residual stream
        self.h = np.empty((n, c.n_embd), np.float32)  # a norm's output: the input of q/k/v, gate/up, the head
        self.qkv = np.empty((n, q_dim + 2 * kv_dim), np.float32)  # q, k and v side by side (fused kernels)
        self.q = np.empty((n, q_dim), np.float32)  # q contiguous, as the attention kernel reads it
        self.attn = np.empty((n, q_dim), np.float32)  # attention's output
        self.out = np.empty((n, c.n_embd), np.float32)  # attn_output's and ffn_down's products (fused kernels)
        self.gu = np.empty((n, 2 * n_ff), np.float32)  # gate and up side by side (fused kernels)
        self.act = np.empty((n, n_ff), np.float32)  # act(gate) * up
        self.embd_forms = form_buffers(n, c.n_embd, activations["embd"])  # int8 forms of h
        self.q_forms = form_buffers(n, q_dim, activations["q"])  # of attn
        self.ff_forms = form_buffers(n, n_ff, activations["ff"])  # of act


class Workspaces:
    """A `Workspace` per number of rows up to REUSED_TOKENS, kept; fresh ones for longer passes. The FFN width
    is the first dense layer's (a layer of another width, if a family ever had one, takes the Python FFN:
    `fused.FusedLayer` of it has no FFN)."""

    def __init__(self, config: ModelConfig, n_ff: int, activations: dict[str, set[str]], n_ctx: int) -> None:
        self.config = config
        self.n_ff = n_ff
        self.activations = activations
        self.attention = AttentionWork(config.n_head, config.head_dim, n_ctx)
        self._kept: dict[int, Workspace] = {}

    def get(self, n: int) -> Workspace:
        if n > REUSED_TOKENS:
            return Workspace(self.config, n, self.n_ff, self.activations)
        if n not in self._kept:
            self._kept[n] = Workspace(self.config, n, self.n_ff, self.activations)
        return self._kept[n]
