"""A transformer layer's steps around attention, each one numba call: what decode spends its time on
besides the matrix products when every step is a Python call (~10 kernel calls, their arguments and numpy
views per layer and token: a third of a 2-thread decode step on SmolLM2, measured).

Each function does a run of a layer's recipe steps (`model/recipe.py`; `model/fused.py` matches the runs by
their steps' names), in the same order and with the same kernels as `model/forward.py`'s Python steps, which
layers these cannot take run instead (products without an integer kernel, experts), so a layer's results are
the same bits either way (`tests/test_exactness.py` compares them):

- `attention_input`: h = rms_norm(x) (or x, when the norm is empty); [q k v] = h @ [Wq; Wk; Wv].T + biases; q and
  k heads normed (qk-norm, when q_norm/k_norm are not empty: each head, or all of q's and of k's at once) and
  rotated by their rows' positions.
- `add_attention_output`: x += post_norm(attn @ Wo.T) (post_norm when not empty) times the residual's scale.
- `add_ffn`: x += post_norm(down(act(h @ Wg.T) * (h @ Wu.T))) times the residual's scale, h = rms_norm(x).

A product is (table, bias) for `matvec.product`; forms are its int8 buffers for x, scratch arrays have the
call's n rows. The products run in parallel (their own prange); the rest is small and runs here.
"""

from __future__ import annotations

from numba import njit

from .matvec import product
from .steps import gated_activation, rms_norm_heads, rms_norm_rows, rope_rows

_OPTS = dict(error_model="numpy", cache=True, nogil=True)  # as ops.py: a NaN never raises


@njit(**_OPTS)
def attention_input(x, w, norm, eps, qkv, forms, h, out, q_norm, k_norm, heads, spans, rope, positions):
    """out (n, (n_head + 2 n_kv) * head_dim) = [q k v] of x (n, n_embd); heads = (n_head, n_kv, head_dim),
    spans = ((count, width) of q's normed spans, k's), rope = (cos, sin, n_rot, neox), positions (n,) int64;
    h (n, n_embd) scratch."""
    n_head, n_kv, head_dim = heads
    (q_spans, q_width), (k_spans, k_width) = spans
    cos, sin, n_rot, neox = rope
    _branch_input(x, norm, eps, h)
    product(h, w, qkv[0], qkv[1], forms, out)
    q_dim = n_head * head_dim
    if q_norm.size:
        rms_norm_heads(out, 0, q_spans, q_width, q_norm, eps)
    if k_norm.size:
        rms_norm_heads(out, q_dim, k_spans, k_width, k_norm, eps)
    rope_rows(out, 0, n_head, head_dim, cos, sin, positions, n_rot, neox)
    rope_rows(out, q_dim, n_kv, head_dim, cos, sin, positions, n_rot, neox)


@njit(**_OPTS)
def add_attention_output(x, w, attn, o, forms, out, post_norm, eps, scale):
    """x (n, n_embd) += post_norm(attn @ Wo.T + bias) * scale (float32; 1: none); out (n, n_embd) scratch."""
    product(attn, w, o[0], o[1], forms, out)
    if post_norm.size:
        rms_norm_rows(out, post_norm, eps, out)
    _add(x, out, scale)


@njit(**_OPTS)
def add_ffn(x, w, norm, eps, gate_up, forms, h, gu, kind, act, down, ff_forms, out, post_norm, scale):
    """x (n, n_embd) += post_norm(act(gate) * up @ Wd.T) * scale, [gate up] = rms_norm(x) @ [Wg; Wu].T; scratch:
    h (n, n_embd), gu (n, 2 n_ff), act (n, n_ff), out (n, n_embd). An empty norm: h = x."""
    _branch_input(x, norm, eps, h)
    product(h, w, gate_up[0], gate_up[1], forms, gu)
    n_ff = act.shape[1]
    for t in range(x.shape[0]):
        gated_activation(gu[t, :n_ff], gu[t, n_ff:], kind, act[t])
    product(act, w, down[0], down[1], ff_forms, out)
    if post_norm.size:
        rms_norm_rows(out, post_norm, eps, out)
    _add(x, out, scale)


@njit(**_OPTS)
def _branch_input(x, norm, eps, h):
    """h = rms_norm(x) * norm, or h = x when norm is empty (a layer without input norms)."""
    if norm.size:
        rms_norm_rows(x, norm, eps, h)
    else:
        h[:] = x


@njit(**_OPTS)
def _add(x, y, scale):
    """x += y, y first times scale (the Python step's order: h *= scale, then x += h) unless it is 1."""
    scaled = scale != 1.0
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            x[t, j] += y[t, j] * scale if scaled else y[t, j]
