"""The workspace (llamapyz/model/workspace.py): a decode step makes no array but the logits it returns, attention
allocates nothing per query, and what a pass returns is never an array the next pass writes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from numba.core.runtime import _nrt_python, rtsys

from llamapyz import Model
from llamapyz.model import ops


def decode_overhead(path, n: int) -> int:
    """Bytes a decode step of n sequences holds at its peak beyond the logits it returns (tracemalloc: every
    numpy array and Python object), after warm-up, the least of 5 steps."""
    model = Model.load(path, n_ctx=128, n_threads=1)
    contexts = [model.new_context() for _ in range(n)]
    for i, ctx in enumerate(contexts):
        model.prefill([1, 2, 3 + i, 4, 5], ctx)
    for _ in range(2):
        model.decode_batch([7] * n, contexts)
    tracemalloc.start()
    try:
        extras = []
        for _ in range(5):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            logits = model.decode_batch([7] * n, contexts)
            extras.append(tracemalloc.get_traced_memory()[1] - before - logits.nbytes)
            del logits
    finally:
        tracemalloc.stop()
    return min(extras)


@pytest.mark.parametrize("arch, weight_type", [("llama", "Q4_0"), ("llama", "F16"), ("gemma3", "Q8_0")])
def test_a_decode_step_makes_no_array_but_its_logits(tiny_models, arch, weight_type):
    """What a decode step holds beyond its logits (the Python objects of its calls) is the same for a model 8x
    wider: no hidden state, q, attention output, norm, token row or float tile is made per step. (Before the
    workspace: 6.5 KB more on the wide Q4_K model at n=1, 15.6 KB at n=4, 1.06 MB for F16's decoded tiles.)"""
    for n in (1, 4):
        wide = decode_overhead(tiny_models(arch, weight_type), n)
        narrow = decode_overhead(tiny_models(arch, weight_type, small=True), n)
        assert abs(wide - narrow) < 640, (n, wide, narrow)  # one row of x: 1 KB wide, 128 B narrow
        assert wide < 4096, (n, wide)


def test_attention_allocates_nothing_per_query():
    """numba's allocations in one attention call do not grow with its queries: each thread's scratch is the
    workspace's (before: three arrays per query and part of its heads)."""
    rng = np.random.default_rng(0)
    keys, values = (rng.standard_normal((2, 40, 2, 16))).astype(np.float32)
    work = ops.AttentionWork(4, 16, 64)
    counts = []
    _nrt_python.memsys_enable_stats()
    try:
        for n in (1, 8, 8):
            q = rng.standard_normal((n, 4, 16)).astype(np.float32)
            before = rtsys.get_allocation_stats().alloc
            ops.attention(q, keys, values, 40 - n, 0, 0, 0.25, work=work)
            counts.append(rtsys.get_allocation_stats().alloc - before)
    finally:
        _nrt_python.memsys_disable_stats()
    assert counts[1] == counts[2] == counts[0], counts  # the arguments' wrappers only


def test_what_a_pass_returns_is_not_the_next_pass_s_array(tiny_models):
    """Logits and hidden states handed out stay as they were after later passes of the same size."""
    model = Model.load(tiny_models("llama", "Q4_K"), n_ctx=64, n_threads=1)
    a, b = model.new_context(), model.new_context()
    model.prefill([1, 2, 3], a)
    model.prefill([4, 5, 6], b)
    first = model.decode_batch([7], [a])
    kept = first.copy()
    model.decode_batch([9], [b])
    np.testing.assert_array_equal(first, kept)
    hidden = model.transformer.forward(np.array([3, 4]), 0, model.new_context().cache, output="hidden")
    kept = hidden.copy()
    model.transformer.forward(np.array([8, 9]), 0, model.new_context().cache, output="hidden")
    np.testing.assert_array_equal(hidden, kept)
