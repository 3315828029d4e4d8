"""-ngl under numba's CUDA simulator (CI has no GPU): whole models with their last layers, and their head, on the
"device", against the CPU path and the float reference (llamapyz/model/reference.py).

Tolerances. With every layer and the head offloaded, the model computes what the reference computes: float32
activations times the weights' exact values, keys and values rounded to float16 as the cache stores them
(`ReferenceModel.logits(kv_type="f16")`). They differ only in the order of float32 sums (about 1e-6 of a
logit's size), which can flip a key's or value's float16 rounding by one unit (2^-11 of that one element):
1e-4 of the logit range holds that with a margin (measured: 1.6e-6 llama, 1.8e-7 qwen2, 1.8e-5 gemma3).
With only some layers offloaded, the CPU layers quantize activations to int8 as llama.cpp does, and the CPU
path's own tolerance against the reference applies (tests/test_model.py's TOLERANCE).

Each simulated CUDA thread is a Python thread, so these models are an eighth of the usual tiny ones
(`write_model(small=True)`), the kernels run with `kernels.SIMULATED`'s few threads, and Python switches
threads more often than its default 5 ms while they run (the simulator's scheduler polls its threads).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from llamapyz import Model, gpu
from llamapyz.gpu import offload
from llamapyz.loader import load_model
from llamapyz.model.reference import ReferenceModel
from tests.synth import write_model
from tests.test_model import TOLERANCE

ARCHS = ["llama", "qwen2", "gemma3", "smollm3", "gpt-oss", "qwen2moe", "mistral3", "granite", "olmo2", "exaone4",
         "glm4"]
# plain; q/k/v biases; qk-norm, post-norms, gelu, a window of 8 tokens; a layer without rope (smollm3's 4th); sinks,
# biased experts, swiglu_oai; a gated shared expert; attention temperature (from position 8 on); granite's
# multipliers; no input norms, q and k normed whole; no input norms, q and k normed per head; fused qkv with its
# bias, pairs rope on half of each head, input and post norms
PROMPT = "the cat sat"  # 12 tokens with BOS: the last four are decoded, past gemma3's window
PREFILLED = 8
ALL_ON_GPU_TOLERANCE = 1e-4


@pytest.fixture
def fast_simulator():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    paths = {}

    def get(arch: str):
        if arch not in paths:
            paths[arch] = tmp_path_factory.mktemp("gpu") / f"{arch}-small.gguf"
            write_model(paths[arch], arch, "Q8_0", small=True, n_layer=4 if arch == "smollm3" else 2)
        return paths[arch]

    return get


def prefill_then_decode(model: Model, tokens: list[int]) -> np.ndarray:
    """Logits after tokens PREFILLED-1 .. end: the first from one prefill, the rest decoded one by one."""
    rows = [model.prefill(tokens[:PREFILLED])]
    rows += [model.decode(t) for t in tokens[PREFILLED:-1]]
    return np.stack(rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_offloaded_layers_agree_with_the_reference(arch, small_model, fast_simulator):
    path = small_model(arch)
    tokens = Model.load(path, n_ctx=32, n_threads=1).tokenize(PROMPT)
    reference = ReferenceModel(path).logits(tokens, kv_type="f16")[PREFILLED - 1:-1]
    spread = float(np.ptp(reference))
    n_layer = Model.load(path, n_ctx=32).config.n_layer
    for ngl, layers, head in ((1, 1, False), (-1, n_layer, True)):
        model = load_model(path, n_ctx=32, n_threads=1, n_gpu_layers=ngl)
        assert (model.gpu.layers, model.gpu.head, model.gpu.warning) == (layers, head, None)
        assert model.n_cpu_layers == n_layer - layers and model.cache.keys.shape[0] == n_layer - layers
        error = float(np.abs(prefill_then_decode(model, tokens) - reference).max()) / spread
        assert error < (ALL_ON_GPU_TOLERANCE if head else TOLERANCE), (ngl, error)


def test_on_the_device_prefill_decode_and_batching_give_the_same_bits(small_model, fast_simulator):
    """A token's logits are the same bits decoded alone, decoded beside another sequence, or computed as the
    last of a prefilled chunk: the product kernel gives each token its own sums in a fixed order."""
    model = load_model(small_model("llama"), n_ctx=32, n_threads=1, n_gpu_layers=-1)
    tokens = model.tokenize(PROMPT)
    decoded = prefill_then_decode(model, tokens)
    chunk = model.new_context()
    np.testing.assert_array_equal(model.prefill(tokens[:-1], chunk), decoded[-1])
    other = model.new_context()
    model.prefill(tokens[:5], other)
    alone = model.decode(tokens[5], other)
    again = model.new_context()
    model.prefill(tokens[:5], again)
    together = model.decode_batch([tokens[5], tokens[-1]], [again, chunk])
    np.testing.assert_array_equal(together[0], alone)


def test_plan_gives_up_the_head_then_layers_until_what_is_left_fits():
    mib = gpu.MiB
    sizes, kv = [10 * mib] * 4, 2 * mib  # per layer
    reserve = gpu.RESERVE_BYTES
    assert gpu.plan(4, True, sizes, 30 * mib, kv, None) == (4, True, None)  # unknown memory: as asked
    assert gpu.plan(4, True, sizes, 30 * mib, kv, reserve + 78 * mib) == (4, True, None)
    layers, head, why = gpu.plan(4, True, sizes, 30 * mib, kv, reserve + 77 * mib)
    assert (layers, head) == (4, False) and why.startswith("not enough GPU memory for 4 layers and the output")
    assert gpu.plan(4, False, sizes, 30 * mib, kv, reserve + 25 * mib)[:2] == (2, False)
    assert gpu.plan(4, False, sizes, 30 * mib, kv, reserve // 2)[:2] == (0, False)
    assert gpu.wanted(-1, 30) == gpu.wanted(99, 30) == (30, True)
    assert gpu.wanted(30, 30) == (30, False) and gpu.wanted(0, 30) == (0, False)


def test_too_little_gpu_memory_offloads_fewer_layers_and_says_so(small_model, monkeypatch):
    path = small_model("llama")
    probe = gpu.probe()
    layer = offload.layer_bytes(Model.load(path, n_ctx=32, n_threads=1).weights.layers[1])
    kv = 2 * 2 * 32 * 16  # f16 keys and values of one layer, n_ctx 32, one KV head of 16
    monkeypatch.setattr(gpu, "MiB", 1)  # the test model's few KiB count in bytes: free_mib is then in bytes
    monkeypatch.setattr(gpu, "RESERVE_BYTES", 0)
    monkeypatch.setattr(gpu, "probe", lambda main_gpu=0: gpu.Device(0, probe.name, 80000, layer + kv + 1))
    model = load_model(path, n_ctx=32, n_threads=1, n_gpu_layers=-1)
    assert (model.gpu.layers, model.gpu.head) == (1, False)
    assert model.gpu.warning.startswith("not enough GPU memory for 2 layers and the output layer")
    assert model.gpu.warning.endswith(": offloading 1 of 2 layers")
    assert [line.split(" (")[0] for line in model.gpu.lines()] == [
        "warning: not enough GPU memory for 2 layers and the output layer", "offloaded 1/2 layers to GPU"]


def test_without_numba_cuda_probe_says_so(monkeypatch):
    """numba ships a deprecated CUDA target of its own: that one is never used."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "numba_cuda" else find_spec(name, *rest))
    assert gpu.probe().startswith("numba-cuda is not installed")


def test_no_usable_gpu_is_one_warning_and_the_cpu(small_model, monkeypatch):
    monkeypatch.setattr(gpu, "probe", lambda main_gpu=0: "no NVIDIA GPU or driver found")
    model = load_model(small_model("llama"), n_ctx=32, n_threads=1, n_gpu_layers=99)
    assert model.transformer.offload is None and model.n_cpu_layers == 2
    assert model.gpu.lines() == ["warning: no NVIDIA GPU or driver found; running all layers on the CPU"]
    assert model.gpu.as_json()["n_gpu_layers"] == 0
    assert Model.load(small_model("llama"), n_ctx=32, n_threads=1).gpu.lines() == []  # -ngl 0: silence


def test_layers_the_kernels_cannot_run_stay_on_the_cpu(small_model, monkeypatch):
    """Heads wider than the attention kernel's local arrays keep every layer on the CPU; the output layer
    still goes."""
    monkeypatch.setattr(offload.kernels, "MAX_HEAD_DIM", 8)
    model = load_model(small_model("llama"), n_ctx=32, n_threads=1, n_gpu_layers=-1)
    assert (model.gpu.layers, model.gpu.head) == (0, True)
    assert model.gpu.warning == ("heads of 16 are wider than the GPU attention kernel's 8: offloading 0 of 2 "
                                 "layers")
    assert model.gpu.lines()[1].startswith("offloaded 0/2 layers and the output layer to GPU")


def test_a_mixture_of_experts_runs_on_the_device(tmp_path, fast_simulator):
    """Routing on the host as on the CPU, each chosen expert once on its tokens, ranks summed in order."""
    path = tmp_path / "moe.gguf"
    write_model(path, "qwen3moe", "Q8_0", small=True)
    model = load_model(path, n_ctx=32, n_threads=1, n_gpu_layers=-1)
    assert (model.gpu.layers, model.gpu.head, model.gpu.warning) == (2, True, None)
    tokens = model.tokenize(PROMPT)[:PREFILLED + 2]
    reference = ReferenceModel(path).logits(tokens, kv_type="f16")[PREFILLED - 1:-1]
    error = float(np.abs(prefill_then_decode(model, tokens) - reference).max()) / float(np.ptp(reference))
    assert error < ALL_ON_GPU_TOLERANCE, error


def test_embeddings_take_the_hidden_states_from_the_device(small_model, fast_simulator):
    """output "hidden" with the head on the device: the final norm runs there, the pooled vectors agree with
    the CPU path's (int8 activations) to its tolerance."""
    path = small_model("llama")
    on_gpu = load_model(path, n_ctx=32, n_threads=1, n_gpu_layers=-1).embed(["the"])
    on_cpu = Model.load(path, n_ctx=32, n_threads=1).embed(["the"])
    assert on_gpu.shape == on_cpu.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(on_gpu), 1.0, rtol=1e-5)
    assert float(on_gpu[0] @ on_cpu[0]) > 0.99
