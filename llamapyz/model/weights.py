"""The model's weights, named as in the GGUF file (`blk.{i}.attn_q`), checked once at load time.

Loading is strict and table-driven: `config.ArchOptions` says which tensor layouts an architecture accepts,
the file's own tensors pick among them (a bias is used because it is there, the fused `attn_qkv` because it
is there), and every tensor of the file must be taken. One that the forward pass would not use is an
error naming it, never silently ignored, so a half-supported file cannot run wrong.

Matrices stay in their quantized encoding (`QuantMatrix` over the mmap); fused tensors (phi3's
`attn_qkv`, `ffn_up` = [gate; up]) and 3-d expert tensors are used as zero-copy row slices. Only the 1-d
tensors (norms, biases, rope factors) are decoded to float32: the small derived data `derived_bytes`
reports. Those are checked for NaN and inf as they are decoded (a corrupt file; 0.09 ms for SmolLM2's 61
vectors, 0.15 ms for Gemma 3 270M's 109); a non-finite value in a matrix shows in the logits instead (the
server's warm-up, then each request's: `errors.require_finite`, 5-23 us a token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import GGUFError, LlamapyzError, UnsupportedModelError
from ..gguf.reader import GGUFFile, Tensor
from ..kernels.linear import QuantMatrix
from .hparams import ModelConfig
from .recipe import rope_factors


@dataclass
class Experts:
    """A mixture-of-experts FFN: the router and each expert's gated FFN (row slices of the 3-d tensors)."""

    router: QuantMatrix  # ffn_gate_inp (n_expert, n_embd)
    gate: list[QuantMatrix]  # per expert (n_ff_exp, n_embd)
    up: list[QuantMatrix]
    down: list[QuantMatrix]  # per expert (n_embd, n_ff_exp)
    # the shared expert (qwen2moe and later): its gated FFN, and its sigmoid gate's weights when it has one
    shared: tuple[QuantMatrix, QuantMatrix, QuantMatrix] | None = None  # gate, up, down
    shared_gate: np.ndarray | None = None  # ffn_gate_inp_shexp (n_embd,)


@dataclass
class LayerWeights:
    attn_norm: np.ndarray | None  # (n_embd,); None without input norms (olmo2)
    attn_q: QuantMatrix  # (n_head * head_dim, n_embd), its bias if the file has one
    attn_k: QuantMatrix  # (n_head_kv * head_dim, n_embd)
    attn_v: QuantMatrix  # (n_head_kv * head_dim, n_embd)
    attn_output: QuantMatrix  # (n_embd, n_head * head_dim)
    ffn_norm: np.ndarray | None  # (n_embd,); None where the FFN's input norm has another name (gpt-oss) or none
    ffn_gate: QuantMatrix | None = None  # (n_ff, n_embd); None with experts
    ffn_up: QuantMatrix | None = None  # (n_ff, n_embd)
    ffn_down: QuantMatrix | None = None  # (n_embd, n_ff)
    experts: Experts | None = None
    attn_q_norm: np.ndarray | None = None  # (head_dim,) with qk_norm; (n_head * head_dim,) normed whole (olmo2)
    attn_k_norm: np.ndarray | None = None
    post_attention_norm: np.ndarray | None = None  # (n_embd,) with post_norms
    post_ffw_norm: np.ndarray | None = None
    attn_sinks: np.ndarray | None = None  # (n_head,) gpt-oss's attention sinks


@dataclass
class Weights:
    token_embd: QuantMatrix  # (n_vocab, n_embd)
    layers: list[LayerWeights]
    output_norm: np.ndarray  # (n_embd,)
    output: QuantMatrix  # (n_vocab, n_embd): output.weight, or token_embd when tied
    rope_factors: dict[str, np.ndarray] = field(default_factory=dict)  # "freqs" / "long" / "short": (n_rot/2,)
    tensor_names: frozenset[str] = frozenset()  # the file's tensors (every one is used): what `recipe` reads

    @property
    def derived_bytes(self) -> int:
        """Bytes decoded out of the file into float32 (norms, biases, rope factors)."""
        vectors = [self.output_norm, *self.rope_factors.values()]
        for layer in self.layers:
            vectors += [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
            vectors += [m.bias for m in vars(layer).values() if isinstance(m, QuantMatrix) and m.bias is not None]
        return sum(v.nbytes for v in vectors)


class _Tensors:
    """The file's tensors, handed out once each; `check_all_taken` refuses a file with any left over."""

    def __init__(self, gguf: GGUFFile, arch: str) -> None:
        self.tensors = gguf.tensors
        self.left = dict.fromkeys(gguf.tensors)  # ordered like the file
        self.arch = arch

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """The tensor `name`, which must exist with `shape` (-1: any size in that place)."""
        if name not in self.tensors:
            raise UnsupportedModelError(f"{self.arch} model is missing tensor {name!r}")
        t = self.tensors[name]
        if len(t.shape) != len(shape) or any(want not in (-1, got) for want, got in zip(shape, t.shape, strict=True)):
            expected = tuple("*" if s == -1 else s for s in shape)
            raise UnsupportedModelError(f"tensor {name!r} has shape {t.shape}, expected {expected} ({self.arch} model)")
        self.left.pop(name, None)
        return t

    def matrix(self, name: str, n_out: int, n_in: int, bias: bool = True) -> QuantMatrix:
        """`name.weight` (n_out, n_in) with `name.bias` (n_out,) if the file has it."""
        weight = self.take(f"{name}.weight", (n_out, n_in))
        return QuantMatrix(weight, self.optional_vector(f"{name}.bias", weight.shape[0]) if bias else None)

    def vector(self, name: str, *shape: int) -> np.ndarray:
        """A float32 tensor of this shape (a vector, or per-expert vectors), checked finite."""
        values = np.ascontiguousarray(self.take(name, shape).dequantize(), dtype=np.float32)
        if not np.isfinite(values).all():
            raise GGUFError(f"tensor {name!r} holds NaN or infinite values: the file is corrupt")
        return values

    def optional_vector(self, name: str, n: int) -> np.ndarray | None:
        return self.vector(name, n) if self.has(name) else None

    def check_all_taken(self) -> None:
        if self.left:
            name = next(iter(self.left))
            more = f" (and {len(self.left) - 1} more)" if len(self.left) > 1 else ""
            raise UnsupportedModelError(
                f"{name} is not used by architecture {self.arch}{more}",
                hint="llamapyz refuses a model it would run only in part; this file needs a runtime that knows "
                     "that tensor")


def load_weights(gguf: GGUFFile, config: ModelConfig) -> Weights:
    c, opt = config, config.options
    t = _Tensors(gguf, c.arch)
    q_dim, kv_dim = c.n_head * c.head_dim, c.kv_dim
    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        if t.has(p + "attn_qkv.weight"):  # fused [q; k; v]
            qkv = t.matrix(p + "attn_qkv", q_dim + 2 * kv_dim, c.n_embd)
            q, k, v = (qkv.slice_rows(a, b, f"{p}attn_qkv[{part}]") for part, a, b in
                       (("q", 0, q_dim), ("k", q_dim, q_dim + kv_dim), ("v", q_dim + kv_dim, q_dim + 2 * kv_dim)))
        else:
            q, k, v = (t.matrix(p + "attn_q", q_dim, c.n_embd), t.matrix(p + "attn_k", kv_dim, c.n_embd),
                       t.matrix(p + "attn_v", kv_dim, c.n_embd))
        layer = LayerWeights(
            attn_norm=t.vector(p + "attn_norm.weight", c.n_embd) if opt.pre_norms else None,
            attn_q=q, attn_k=k, attn_v=v,
            attn_output=t.matrix(p + "attn_output", c.n_embd, q_dim),
            ffn_norm=t.vector(p + "ffn_norm.weight", c.n_embd) if opt.ffn_norm == "ffn_norm" and opt.pre_norms
            else None,
        )
        if opt.ffn_norm != "ffn_norm" and opt.pre_norms:
            setattr(layer, opt.ffn_norm, t.vector(f"{p}{opt.ffn_norm}.weight", c.n_embd))
        if t.has(p + "attn_sinks.weight"):
            layer.attn_sinks = t.vector(p + "attn_sinks.weight", c.n_head)
        if c.n_expert:
            layer.experts = _experts(t, p, c)
        elif opt.fused_ffn:  # ffn_up = [gate; up]
            up = t.matrix(p + "ffn_up", -1, c.n_embd)
            n_ff = up.n_rows // 2
            layer.ffn_gate, layer.ffn_up = up.slice_rows(0, n_ff), up.slice_rows(n_ff, 2 * n_ff)
            layer.ffn_down = t.matrix(p + "ffn_down", c.n_embd, n_ff)
        else:
            layer.ffn_gate = t.matrix(p + "ffn_gate", -1, c.n_embd)
            n_ff = layer.ffn_gate.n_rows
            layer.ffn_up = t.matrix(p + "ffn_up", n_ff, c.n_embd)
            layer.ffn_down = t.matrix(p + "ffn_down", c.n_embd, n_ff)
        if opt.qk_norm:
            whole = opt.qk_norm_whole
            layer.attn_q_norm = t.vector(p + "attn_q_norm.weight", q_dim if whole else c.head_dim)
            layer.attn_k_norm = t.vector(p + "attn_k_norm.weight", kv_dim if whole else c.head_dim)
        if opt.post_norms:
            layer.post_attention_norm = t.vector(p + "post_attention_norm.weight", c.n_embd)
            layer.post_ffw_norm = t.vector(p + "post_ffw_norm.weight", c.n_embd)
        layers.append(layer)
    token_embd = t.matrix("token_embd", _n_tokens(gguf), c.n_embd, bias=False)
    output = t.matrix("output", token_embd.n_rows, c.n_embd) if t.has("output.weight") else token_embd
    weights = Weights(token_embd, layers, t.vector("output_norm.weight", c.n_embd), output, _rope_factors(t, c),
                      frozenset(gguf.tensors))
    t.check_all_taken()
    return weights


def _n_tokens(gguf: GGUFFile) -> int:
    """The vocabulary's size, which the embedding's rows must match (as llama.cpp demands: a token id the
    tokenizer makes must have a row); -1 (any) when the file has no token list (the tokenizer refuses it)."""
    tokens = gguf.get("tokenizer.ggml.tokens")
    return len(tokens) if isinstance(tokens, list) and tokens else -1


def _experts(t: _Tensors, p: str, c: ModelConfig) -> Experts:
    """The router and the per-expert row slices of ffn_{gate,up,down}_exps (n_expert, rows, cols)."""
    n = c.n_expert
    if not 0 < c.n_expert_used <= n:
        raise UnsupportedModelError(f"{c.arch} model: expert_used_count {c.n_expert_used} is not in 1..{n}")
    n_ff = t.take(p + "ffn_gate_exps.weight", (n, -1, c.n_embd)).shape[1]

    def stacked(name: str, rows: int, cols: int) -> QuantMatrix:
        """ffn_*_exps (n, rows, cols) as one matrix of n * rows rows, with its per-expert biases (n, rows)."""
        bias = t.vector(f"{p}{name}.bias", n, rows) if t.has(f"{p}{name}.bias") else None
        return QuantMatrix(t.take(f"{p}{name}.weight", (n, rows, cols)), None if bias is None else bias.reshape(-1))

    def per_expert(m: QuantMatrix, rows: int) -> list[QuantMatrix]:
        return [m.slice_rows(e * rows, (e + 1) * rows, f"{m.name}[{e}]") for e in range(n)]

    gate, up = stacked("ffn_gate_exps", n_ff, c.n_embd), stacked("ffn_up_exps", n_ff, c.n_embd)
    down = stacked("ffn_down_exps", c.n_embd, n_ff)
    experts = Experts(router=t.matrix(p + "ffn_gate_inp", n, c.n_embd), gate=per_expert(gate, n_ff),
                      up=per_expert(up, n_ff), down=per_expert(down, c.n_embd))
    if t.has(p + "ffn_down_shexp.weight"):
        gate_shexp = t.matrix(p + "ffn_gate_shexp", -1, c.n_embd, bias=False)
        n_ff_shared = gate_shexp.n_rows
        experts.shared = (gate_shexp, t.matrix(p + "ffn_up_shexp", n_ff_shared, c.n_embd, bias=False),
                          t.matrix(p + "ffn_down_shexp", c.n_embd, n_ff_shared, bias=False))
        if t.has(p + "ffn_gate_inp_shexp.weight"):
            experts.shared_gate = t.vector(p + "ffn_gate_inp_shexp.weight", c.n_embd)
    return experts


def _rope_factors(t: _Tensors, c: ModelConfig) -> dict[str, np.ndarray]:
    """Per-frequency rope factors: Llama 3.1's rope_freqs, or LongRoPE's long and short sets (which the recipe's
    rope step applies: `recipe.rope_factors`)."""
    kind = rope_factors(c, t.tensors)
    half = c.n_rot // 2
    if kind == "freqs":
        return {"freqs": t.vector("rope_freqs.weight", half)}
    if kind == "longrope":
        return {"long": t.vector("rope_factors_long.weight", half),
                "short": t.vector("rope_factors_short.weight", half)}
    return {}


def support(gguf: GGUFFile) -> str | None:
    """None when llamapyz runs this file's architecture and tensors, else why not (the first problem met):
    the same checks as loading, without building anything else."""
    try:
        load_weights(gguf, ModelConfig.from_metadata(gguf.metadata))
    except LlamapyzError as exc:
        return str(exc)
    return None
