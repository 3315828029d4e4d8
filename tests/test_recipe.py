"""The recipes (llamapyz/model/recipe.py): each family's steps, every backend executing exactly those steps (the
Python steps and fused kernels, the numpy reference, the CUDA layers under the simulator), the printed form
(`llamapyz inspect FILE --layers`) and its copy in docs/architectures.md.

That each backend computes what a step says is the numerical tests' part (tests/test_architectures.py,
tests/test_exactness.py, tests/test_gpu_offload.py); here, that none skips, adds or reorders a step.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from llamapyz import Model
from llamapyz.cli.main import main
from llamapyz.gguf.reader import load_gguf
from llamapyz.loader import load_model
from llamapyz.model import forward, reference
from llamapyz.model.hparams import ARCHITECTURES, ModelConfig
from llamapyz.model.recipe import STEPS, Recipe, recipe, span
from tests import recipe_docs
from tests.synth import write_model
from tests.test_architectures import VARIANTS

PACKAGE = Path(forward.__file__).resolve().parents[1]
MODELS = {"llama": ("llama", {}, 64), "gemma3": ("gemma3", {"n_layer": 6}, 64), **VARIANTS}
PROMPT = "the cat sat on the mat"

ATTENTION = ["rms_norm", "qkv", "rope", "attention", "output", "residual"]
FFN = ["rms_norm", "ffn", "residual"]
GEMMA = ["rms_norm", "qkv", "rope", "attention", "output", "post_norm", "residual", "rms_norm", "ffn", "post_norm",
         "residual"]
# each tiny model's layer steps (or each layer's, where they differ), and steps its recipe must hold (as printed)
FAMILIES = {
    "llama": (ATTENTION + FFN, ["rope(pairs, base=10000)", "ffn(silu, ffn_gate, ffn_up, ffn_down)",
                                "head(token_embd)"]),
    "llama-rope-freqs": (ATTENTION + FFN, ["rope(pairs, base=10000, factors=rope_freqs)"]),
    "llama-moe": (ATTENTION + ["rms_norm", "moe", "residual"],
                  ["moe(silu, top 2 of 4 experts, softmax, renormalized, ffn_gate_inp, ffn_{gate,up,down}_exps)"]),
    "qwen2": (ATTENTION + FFN, ["qkv(attn_q, attn_k, attn_v, +bias)", "rope(neox, base=10000)"]),
    "qwen3": (ATTENTION[:2] + ["qk_norm"] + ATTENTION[2:] + FFN, ["qk_norm(attn_q_norm, attn_k_norm)"]),
    "qwen3moe": (ATTENTION[:2] + ["qk_norm"] + ATTENTION[2:] + ["rms_norm", "moe", "residual"],
                 ["moe(silu, top 2 of 4 experts, softmax, renormalized, ffn_gate_inp, ffn_{gate,up,down}_exps)"]),
    "phi3-long": (ATTENTION + FFN, ["qkv(attn_qkv)", "rope(neox, base=10000, n_rot=48 of 64, factors=longrope, "
                                    "attn_factor=1.2)", "ffn(silu, ffn_up = [gate; up], ffn_down)"]),
    "phi3-short": (ATTENTION + FFN, ["qkv(attn_qkv)"]),
    "gemma2": (GEMMA, ["embed(token_embd, × √n_embd)", "attention(window=8, scale=1/√64, softcap=1)",
                       "attention(global, scale=1/√64, softcap=1)", "ffn(gelu_tanh, ffn_gate, ffn_up, ffn_down)",
                       "post_norm(post_attention_norm)", "post_norm(post_ffw_norm)", "head(token_embd, softcap=3)"]),
    "qwen3-yarn": (ATTENTION[:2] + ["qk_norm"] + ATTENTION[2:] + FFN,
                   ["rope(neox, base=10000, freq_scale=0.5, attn_factor=1.06931, yarn(beta 32/1, original 64))"]),
    "qwen2moe": (ATTENTION + ["rms_norm", "moe", "residual"],
                 ["qkv(attn_q, attn_k, attn_v, +bias)", "moe(silu, top 2 of 4 experts, softmax, ffn_gate_inp, "
                  "ffn_{gate,up,down}_exps, + sigmoid-gated shared expert)"]),
    "mistral3": (ATTENTION[:3] + ["temperature"] + ATTENTION[3:] + FFN,
                 ["rope(pairs, base=10000, freq_scale=0.5, yarn(beta 16/2, original 64))",
                  "temperature(q × 1 + 0.5 ln(⌊p / 64⌋ + 1))"]),
    "gpt-oss": (["rms_norm", "qkv", "rope", "attention", "output", "residual", "rms_norm", "moe", "residual"],
                ["qkv(attn_q, attn_k, attn_v, +bias)", "attention(window=8, scale=1/√64, attn_sinks)",
                 "attention(global, scale=1/√64, attn_sinks)", "output(attn_output, +bias)",
                 "rms_norm(post_attention_norm)", "moe(swiglu_oai, top 2 of 4 experts, softmax of the top logits, "
                 "ffn_gate_inp, ffn_{gate,up,down}_exps, +bias)"]),
    "ernie4_5": (ATTENTION + FFN, ["rope(pairs, base=10000)", "head(token_embd)"]),
    "granite": (ATTENTION + FFN, ["embed(token_embd, × 3)", "attention(global, scale=1/√100)", "residual(h × 0.5)",
                                  "head(token_embd, / 2)"]),
    "olmo2": (["no_norm", "qkv", "qk_norm", "rope", "attention", "output", "post_norm", "residual", "no_norm", "ffn",
               "post_norm", "residual"], ["qk_norm(attn_q_norm, attn_k_norm, over all heads)", "no_norm",
                                          "post_norm(post_attention_norm)", "post_norm(post_ffw_norm)"]),
    "olmo3": (["no_norm", "qkv", "qk_norm", "rope", "attention", "output", "post_norm", "residual", "no_norm", "ffn",
               "post_norm", "residual"], ["rope(neox, base=10000)", "attention(window=8, scale=1/√64)",
                                          "rope(neox, base=10000, freq_scale=0.5, attn_factor=1.06931, yarn(beta 32/1, "
                                          "original 64))", "attention(global, scale=1/√64)"]),
    "exaone4": (["no_norm", "qkv", "qk_norm", "rope", "attention", "output", "post_norm", "residual", "no_norm", "ffn",
                 "post_norm", "residual"], ["qk_norm(attn_q_norm, attn_k_norm)", "rope(neox, base=10000)"]),
    "exaone4-32b": ([["no_norm", "qkv", "qk_norm"] + (["rope"] if il % 4 < 3 else []) + ["attention", "output",
                     "post_norm", "residual", "no_norm", "ffn", "post_norm", "residual"] for il in range(64)],
                    ["attention(window=8, scale=1/√64)", "attention(global, scale=1/√64)"]),
    "glm4": (GEMMA, ["qkv(attn_qkv, +bias)", "rope(pairs, base=10000, n_rot=32 of 64)",
                     "ffn(silu, ffn_up = [gate; up], ffn_down)", "post_norm(post_ffw_norm)"]),
    "granitemoe": (ATTENTION + ["rms_norm", "moe", "residual"],
                   ["moe(silu, top 2 of 4 experts, softmax, renormalized, ffn_gate_inp, ffn_{gate,up,down}_exps)",
                    "residual(h × 0.5)", "head(token_embd, / 2)"]),
    "smollm3": ([ATTENTION + FFN] * 3 + [[s for s in ATTENTION if s != "rope"] + FFN], ["rope(pairs, base=10000)"]),
    "gemma3": (GEMMA[:2] + ["qk_norm"] + GEMMA[2:], ["rope(neox, base=10000)", "rope(neox, base=1000000)",
                                                     "attention(window=8, scale=1/√64)",
                                                     "attention(global, scale=1/√64)"]),
}


@pytest.fixture(scope="module")
def family(tiny_models):
    def get(name: str, weight_type: str = "Q8_0") -> tuple[Path, int]:
        arch, options, n_ctx = MODELS[name]
        return tiny_models(arch, weight_type, **options), n_ctx

    return get


def recipe_of(path: Path) -> Recipe:
    with load_gguf(path) as gguf:
        return recipe(ModelConfig.from_metadata(gguf.metadata), gguf.tensors)


def every_step(r: Recipe, layers: range | None = None, head: bool = True) -> list:
    """The recipe's steps in the order a whole forward pass runs them."""
    layers = range(len(r.layers)) if layers is None else layers
    return [*r.embed, *(s for il in layers for s in r.layers[il]), *r.final, *(r.head if head else ())]


def test_every_family_has_a_tiny_model_here():
    assert {MODELS[name][0] for name in FAMILIES} == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_familys_recipe(family, name):
    names, shown = FAMILIES[name]
    r = recipe_of(family(name)[0])
    per_layer = names if isinstance(names[0], list) else [names] * len(r.layers)
    assert [[s.name for s in steps] for steps in r.layers] == per_layer
    printed = {str(s) for s in every_step(r)}
    assert set(shown) <= printed, set(shown) - printed


def test_gemma_layers_differ_only_in_their_window_and_rope_base(family):
    r = recipe_of(family("gemma3")[0])
    (sliding, first), (glob, last) = r.kinds()
    assert (sliding, glob) == ([0, 1, 2, 3, 4], [5])
    assert [(a.name, b.name) for a, b in zip(first, last, strict=True) if a != b] == [("rope", "rope"),
                                                                                      ("attention", "attention")]
    assert str(r).splitlines()[-5:-2] == ["  layer 5: as layer 0, but", "    rope(neox, base=1000000)",
                                         "    attention(global, scale=1/√64)"]


def test_the_recipe_follows_the_files_tensors():
    """A bias, a fused layout, an output matrix, rope factors: used because the file holds them."""
    config = recipe_docs.specimen("qwen2", {}, set())  # for its config's numbers only
    assert config.layers[0][1].bias is False
    with_bias = recipe_docs.specimen("qwen2", {}, {"qkv_bias"})
    assert with_bias.layers[0][1].bias is True and str(with_bias.layers[0][1]) == "qkv(attn_q, attn_k, attn_v, +bias)"
    assert str(recipe_docs.specimen("llama", {}, {"output"}).head[0]) == "head(output)"
    assert str(recipe_docs.specimen("llama", {}, set()).head[0]) == "head(token_embd)"
    assert recipe_docs.specimen("llama", {}, {"rope_freqs"}).layers[0][2].factors == "freqs"
    assert recipe_docs.specimen("qwen2", {}, {"rope_freqs"}).layers[0][2].factors == ""  # not a qwen2 tensor


@pytest.mark.parametrize("weight_type", ["Q8_0", "F16"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_cpu_runs_exactly_the_recipe(family, name, weight_type):
    """Each layer's plan covers its steps in order: Q8_0 layers as the fused kernels (but experts), F16 ones as
    the Python steps; and a forward call runs each op once, in the recipe's order."""
    path, n_ctx = family(name, weight_type)
    model = Model.load(path, n_ctx=n_ctx, n_threads=1)
    t = model.transformer
    for il, ops in enumerate(t.plans):
        assert [s for op in ops for s in op.steps] == list(t.recipe.layers[il])
        kernels = [op.kernel for op in ops]
        names = [s.name for s in t.recipe.layers[il]]
        if weight_type == "F16":
            assert kernels == [""] * len(ops)
        else:  # attention (and the temperature before it) in Python; experts too
            between = [""] * (1 + ("temperature" in names))
            ffn = ["", "", ""] if "moe" in names else ["add_ffn"]
            assert kernels == ["attention_input", *between, "add_attention_output", *ffn]
    ran = []

    def traced(ops: list[forward.Op]) -> list[forward.Op]:
        return [forward.Op(lambda a, op=op: (ran.extend(op.steps), op.run(a))[1], op.steps, op.kernel) for op in ops]

    t.embed_ops, t.final_ops, t.head_ops = traced(t.embed_ops), traced(t.final_ops), traced(t.head_ops)
    t.plans = [traced(ops) for ops in t.plans]
    logits = model.logits(model.tokenize(PROMPT))
    assert ran == every_step(t.recipe) and np.isfinite(logits).all()


def test_the_fused_kernels_give_way_to_the_python_steps_where_a_layer_cannot_take_them(family):
    """A layer whose products have no table runs every step in Python: matched by the recipe, decided per layer."""
    import dataclasses

    model = Model.load(family("gemma3")[0], n_ctx=64, n_threads=1)
    t = model.transformer
    fused = list(t.fused)
    fused[5] = dataclasses.replace(fused[5], qkv=None, gate_up=None)
    t.fused = fused
    assert [op.kernel for op in t.plans[5]] == ["", "", "", "", "", "add_attention_output", "", "", "", ""]
    assert [op.kernel for op in t.plans[4]] == ["attention_input", "", "add_attention_output", "add_ffn"]


def test_a_fused_kernel_takes_only_the_runs_of_steps_it_knows(family):
    """A setting the kernel lacks (an activation): no kernel there, so the layer takes the Python steps rather than
    a kernel that misreads a step; a step it does not know between its steps: the kernel stops before it (its
    steps after it are optional: qk_norm, rope), so no step is skipped."""
    import dataclasses

    from llamapyz.model.fused import fused_run
    from llamapyz.model.recipe import Step

    model = Model.load(family("llama")[0], n_ctx=64, n_threads=1)
    t = model.transformer
    steps, args = t.recipe.layers[0], (t.fused[0], model.weights.layers[0], model.config, t.ropes)
    assert fused_run(steps, 0, *args)[:2] == ("attention_input", 3)
    assert fused_run(steps, 6, *args)[:2] == ("add_ffn", 3)
    relu = tuple(dataclasses.replace(s, activation="relu") if s.name == "ffn" else s for s in steps)
    assert fused_run(relu, 6, *args) is None
    clamp = dataclasses.make_dataclass("Clamp", [], bases=(Step,), frozen=True, namespace={"name": "clamp"})
    unknown = steps[:2] + (clamp(),) + steps[2:]
    assert fused_run(unknown, 0, *args)[:2] == ("attention_input", 2)
    unknown = steps[:1] + (clamp(),) + steps[1:]
    assert fused_run(unknown, 0, *args) is None


@pytest.mark.parametrize("name", ["llama-moe", "phi3-long", "gemma2"])
def test_the_reference_runs_exactly_the_recipe(family, name, monkeypatch):
    path, n_ctx = family(name, "F16")
    ref = reference.ReferenceModel(path, n_ctx=n_ctx)
    ran = []
    steps = dict(reference.ReferenceModel.STEPS)
    monkeypatch.setattr(reference.ReferenceModel, "STEPS", {
        key: lambda self, step, p, a, f=f: (ran.append(step), f(self, step, p, a)) for key, f in steps.items()})
    ref.logits([1, 2, 3])
    assert ran == every_step(recipe(ref.config, ref.w))


@pytest.mark.parametrize("arch, ngl", [("llama", -1), ("gemma3", 2), ("qwen3moe", -1)])
def test_the_gpu_runs_exactly_the_recipe(tmp_path, arch, ngl):
    """The offloaded layers' launches cover their steps in order (and the final norm when the head is there
    too); a residual and the next norm are one launch."""
    path = tmp_path / f"{arch}.gguf"
    write_model(path, arch, "Q8_0", small=True, n_layer=6 if arch == "gemma3" else 2)
    model = load_model(path, n_ctx=32, n_threads=1, n_gpu_layers=ngl)
    device = model.transformer.offload
    first = model.config.n_layer - device.n_layers
    assert (device.n_layers, device.head) == ((2, False) if ngl == 2 else (model.config.n_layer, True))
    want = [s for il in range(first, model.config.n_layer) for s in device.recipe.layers[il]]
    want += list(device.recipe.final) if device.head else []
    assert [s for launch in device.launches for s in launch.steps] == want
    kernels = [launch.kernel for launch in device.launches]
    assert kernels.count("add_norm") == 2 * device.n_layers and ("qk_norm_rope" in kernels)
    assert kernels[0] == "rms_norm"  # the first offloaded layer's input norm; the CPU ran the residual before it


def test_every_backend_implements_every_step():
    from llamapyz.gpu.offload import LAUNCHES

    names = {step.name for step in STEPS}
    assert set(forward.Transformer.STEPS) == names
    assert set(reference.ReferenceModel.STEPS) == names
    on_device = {name for _, pattern in LAUNCHES for names in pattern for name in names.rstrip("?").split("|")}
    assert on_device == names - {"embed", "head"}  # the CPU embeds; Offload._run runs the head's product


def test_no_backend_reads_the_family_options():
    """What a family does reaches the backends through its recipe only: they never read `ArchOptions`."""
    for path in ["model/forward.py", "model/fused.py", "model/moe.py", "model/reference.py", "gpu/offload.py",
                 "kernels/layer.py"]:
        tree = ast.parse((PACKAGE / path).read_text())
        reads = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "options"]
        reads += [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "ArchOptions"]
        assert not reads, f"{path} reads the family's options at lines {reads}"


def test_inspect_layers_prints_the_files_recipe(family):
    path = family("gemma3")[0]
    result = CliRunner().invoke(main, ["inspect", str(path), "--layers"])
    assert result.exit_code == 0, result.output
    assert result.output == str(recipe_of(path)) + "\n"
    assert result.output.startswith("gemma3, 6 layers:\n  embed(token_embd, × √n_embd)\n  layers 0-4:\n")
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--layers", "--json"]).output)
    assert [kind["layers"] for kind in as_json["layers"]] == [[0, 1, 2, 3, 4], [5]]
    assert as_json["head"] == ["head(token_embd)"]


def test_inspect_layers_of_a_file_llamapyz_does_not_run_says_why(tmp_path):
    path = tmp_path / "extra.gguf"
    write_model(path, "llama", extra=("blk.0.foo.weight",))
    result = CliRunner().invoke(main, ["inspect", str(path), "--layers"])
    assert result.exit_code == 1
    assert "no recipe: blk.0.foo.weight is not used by architecture llama" in result.output


def test_the_docs_show_every_familys_recipe():
    """docs/architectures.md holds what `python -m tests.recipe_docs` writes (run it after changing a recipe)."""
    assert {arch for _, arch, _, _ in recipe_docs.SPECIMENS} == set(ARCHITECTURES)
    assert recipe_docs.section() in recipe_docs.DOC.read_text()


@pytest.mark.parametrize("indices, shown", [([0, 1, 2, 3, 4, 6, 7, 8], "0-4, 6-8"), ([5, 11, 17], "5, 11, 17"),
                                            ([1, 3, 5, 7, 9], "1, 3, …, 9"), ([4], "4"), ([0, 1], "0-1")])
def test_layer_lists_are_short(indices, shown):
    assert span(indices) == shown




def test_inspect_layers_sees_the_files_tensors(tmp_path):
    """The recipe depends on which tensors the file holds (here a separate head): `inspect --layers` built it
    after closing the file, which forgets them, and printed head(token_embd) for a file with output.weight."""
    path = tmp_path / "untied.gguf"
    write_model(path, "qwen2", tied=False)
    result = CliRunner().invoke(main, ["inspect", str(path), "--layers"])
    assert result.exit_code == 0, result.output
    assert result.output == str(recipe_of(path)) + "\n"
    assert result.output.endswith("  head(output)\n") and "qkv(attn_q, attn_k, attn_v, +bias)" in result.output
