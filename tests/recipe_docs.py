"""The recipes section of docs/architectures.md, written from `llamapyz.model.recipe` so that it cannot go stale:

    python -m tests.recipe_docs          # rewrite the section in place

tests/test_recipe.py checks that the file holds what `section()` writes, and that every family of
`ARCHITECTURES` has a specimen here. A specimen is a file of the family's usual layout, described by its
metadata and which tensors it holds; the sizes are neutral and six layers show the sliding/global pattern,
everything else is the family's defaults (`ArchOptions`) unless the family's files always set it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llamapyz.model.hparams import ModelConfig
from llamapyz.model.recipe import Recipe, recipe

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
START = "<!-- recipes: written by the recipe work (llamapyz/model/recipe.py); not by hand -->"
END = "<!-- end of recipes -->"
N_LAYER = 6

# (title, arch, metadata beyond the shared keys, what the file holds beyond llama's tensors)
SPECIMENS: list[tuple[str, str, dict, set[str]]] = [
    ("Llama, SmolLM, Mistral", "llama", {}, {"output"}),
    ("Llama 3.1 / 3.2 (rope_freqs.weight)", "llama", {}, {"output", "rope_freqs"}),
    ("Mixtral-style MoE (llama + expert_count)", "llama", {"expert_count": 8, "expert_used_count": 2},
     {"output", "experts"}),
    ("Qwen 2 / 2.5", "qwen2", {}, {"output", "qkv_bias"}),
    ("Qwen 3", "qwen3", {"attention.key_length": 128}, {"output", "qk_norm"}),
    ("Qwen 3 MoE", "qwen3moe", {"attention.key_length": 128, "expert_count": 128, "expert_used_count": 8},
     {"output", "qk_norm", "experts"}),
    ("Phi-3 / 3.5 / 4-mini (here with Phi-4-mini's partial rotary, 96 of 128 dimensions)", "phi3",
     {"rope.dimension_count": 96}, {"output", "fused", "longrope"}),
    ("Qwen 3 with YaRN (rope.scaling.type yarn, factor 4 from 32,768)", "qwen3",
     {"attention.key_length": 128, "rope.freq_base": 1e6, "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
      "rope.scaling.original_context_length": 32768}, {"output", "qk_norm"}),
    ("SmolLM3 (no rope on every 4th layer)", "smollm3", {}, {"output"}),
    ("Qwen 1.5 / 2 MoE (a sigmoid-gated shared expert, unnormalized weights)", "qwen2moe",
     {"expert_count": 60, "expert_used_count": 4}, {"output", "qkv_bias", "experts", "shared_expert"}),
    ("Mistral 3 / Ministral 3 (YaRN from 16,384, attention temperature)", "mistral3",
     {"attention.key_length": 128, "rope.freq_base": 1e6, "rope.scaling.type": "yarn", "rope.scaling.factor": 16.0,
      "rope.scaling.original_context_length": 16384, "rope.scaling.yarn_log_multiplier": 1.0,
      "attention.temperature_scale": 0.1}, {"output"}),
    ("gpt-oss (gpt-oss-20b's window, YaRN and experts)", "gpt-oss",
     {"attention.key_length": 64, "attention.head_count": 64, "rope.freq_base": 150000.0,
      "rope.scaling.type": "yarn", "rope.scaling.factor": 32.0, "rope.scaling.original_context_length": 4096,
      "attention.sliding_window": 128, "expert_count": 32, "expert_used_count": 4},
     {"output", "qkv_bias", "experts", "biases", "sinks"}),
    ("ERNIE 4.5 (dense; ERNIE-4.5-0.3B's tied embeddings)", "ernie4_5", {"attention.key_length": 128}, set()),
    ("Granite 3 (Granite 3.3 8B's multipliers: embedding_scale 12, attention.scale 1/128, residual_scale 0.22, "
     "logit_scale 16)", "granite",
     {"attention.key_length": 128, "embedding_scale": 12.0, "attention.scale": 0.0078125, "residual_scale": 0.22,
      "logit_scale": 16.0}, set()),
    ("Granite 3 MoE (granite-3.1-3b-a800m's experts, Granite 3.3's multipliers)", "granitemoe",
     {"attention.key_length": 64, "embedding_scale": 12.0, "attention.scale": 0.015625, "residual_scale": 0.22,
      "logit_scale": 16.0, "expert_count": 40, "expert_used_count": 8}, {"experts"}),
    ("OLMo 2 (no input norms, q and k normed whole)", "olmo2", {"attention.key_length": 128, "rope.freq_base": 5e5},
     {"output", "no_pre_norms", "qk_norm_whole", "post_norms"}),
    ("Olmo 3 (olmo2 with a window on 3 of 4 layers, YaRN on the global ones)", "olmo2",
     {"attention.key_length": 128, "rope.freq_base": 5e5, "attention.sliding_window": 4096,
      "rope.scaling.type": "yarn", "rope.scaling.factor": 8.0, "rope.scaling.original_context_length": 8192},
     {"output", "no_pre_norms", "qk_norm_whole", "post_norms"}),
    ("EXAONE 4.0 (1.2B's layout; the 32B's 64 layers add a window of 4,096 on 3 of 4, rope only there)", "exaone4",
     {"attention.key_length": 64}, {"no_pre_norms", "qk_norm", "post_norms"}),
    ("GLM-4 (GLM-4-9B-0414's layout: rope on 64 of 128 dimensions, attn_qkv with its bias)", "glm4",
     {"attention.key_length": 128, "rope.dimension_count": 64}, {"fused", "qkv_bias", "post_norms"}),
    ("Gemma 2 (the window and soft-caps are the family's defaults)", "gemma2", {"attention.key_length": 256},
     {"post_norms"}),
    ("Gemma 3 (Gemma 3 270M's window and global rope base)", "gemma3",
     {"attention.key_length": 256, "attention.sliding_window": 512, "rope.freq_base": 1e6},
     {"qk_norm", "post_norms"}),
]


def specimen(arch: str, metadata: dict, features: set[str]) -> Recipe:
    """The recipe of a file of `arch` with these keys (without the "{arch}." prefix) and tensors."""
    keys = {"block_count": N_LAYER, "embedding_length": 2048, "attention.head_count": 16,
            "attention.head_count_kv": 8, "context_length": 8192, **metadata}
    config = ModelConfig.from_metadata({"general.architecture": arch, **{f"{arch}.{k}": v for k, v in keys.items()}})
    return recipe(config, tensor_names(N_LAYER, features))


def tensor_names(n_layer: int, features: set[str]) -> set[str]:
    """The tensors of a file with `features`: output (not tied to token_embd), rope_freqs, longrope, qkv_bias,
    fused (attn_qkv and ffn_up = [gate; up]), qk_norm, post_norms, experts, shared_expert, biases (the experts',
    router's and output's), sinks (gpt-oss's: with its post_attention_norm as the FFN's norm), no_pre_norms (no
    attn_norm, ffn_norm), qk_norm_whole (olmo2's: the tensors are qk_norm's, only longer)."""
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if "output" in features else set())
    names |= {"rope_freqs.weight"} if "rope_freqs" in features else set()
    names |= {"rope_factors_long.weight", "rope_factors_short.weight"} if "longrope" in features else set()
    for i in range(n_layer):
        p = f"blk.{i}."
        layer = ["attn_output"]
        layer += [] if "no_pre_norms" in features else ["attn_norm", "post_attention_norm" if "sinks" in features
                                                         else "ffn_norm"]
        layer += ["attn_qkv"] if "fused" in features else ["attn_q", "attn_k", "attn_v"]
        layer += ["attn_q_norm", "attn_k_norm"] if {"qk_norm", "qk_norm_whole"} & features else []
        layer += ["post_attention_norm", "post_ffw_norm"] if "post_norms" in features else []
        if "experts" in features:
            layer += ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            layer += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp"] if (
                "shared_expert" in features) else []
            layer += ["attn_sinks"] if "sinks" in features else []
            names |= {f"{p}{t}.bias" for t in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps",
                                                 "attn_output")} if "biases" in features else set()
        else:
            layer += ["ffn_up", "ffn_down"] if "fused" in features else ["ffn_gate", "ffn_up", "ffn_down"]
        names |= {f"{p}{t}.weight" for t in layer}
        biased = ("attn_qkv",) if "fused" in features else ("attn_q", "attn_k", "attn_v")
        names |= {f"{p}{t}.bias" for t in biased} if "qkv_bias" in features else set()
    return names


def section() -> str:
    """The section's text, from START to END."""
    lines = [
        START,
        "",
        "Each family's forward pass is a recipe of named steps (`llamapyz/model/recipe.py`), derived from its",
        "`ArchOptions` and the file's keys and tensors; the Python steps, the fused numba kernels, the CUDA layers",
        "and the numpy reference (`llamapyz/model/reference.py`) all execute it, one implementation per step name.",
        "The steps act on x (the residual stream) and h (the current branch's value): `rms_norm(w)` is",
        "h = norm(x) * w, `post_norm(w)` h = norm(h) * w, `residual` x += h; tensor names are the file's, without",
        "`blk.N.` and `.weight`. `llamapyz inspect FILE --layers` prints a file's own recipe (its layer count,",
        "window, bases and soft-caps). Below, each family on a file of its usual layout (neutral numbers, six",
        "layers); generated by `python -m tests.recipe_docs`, checked by `tests/test_recipe.py`.",
    ]
    for title, arch, metadata, features in SPECIMENS:
        lines += ["", f"**{title}**", "", "```", str(specimen(arch, metadata, features)), "```"]
    return "\n".join(lines + ["", END])


def written(text: str) -> str:
    """The doc with its section replaced by `section()` (appended at its end if it has no section yet)."""
    if START not in text:
        return text.rstrip("\n") + "\n\n## Recipes\n\n" + section() + "\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1] if END in rest else "\n"
    return before + section() + after


if __name__ == "__main__":
    DOC.write_text(written(DOC.read_text()))
    print(f"wrote the recipes of {len(SPECIMENS)} specimens into {DOC}", file=sys.stderr)
