"""Random-weight models with real models' exact tensor shapes and llama.cpp's quant mixes, made on demand.

    python bench/real_shapes.py llama-3.2-1b Q4_K_M        # prints the path of the (cached) GGUF
    python bench/real_shapes.py --list                     # the shapes and mixes, with file sizes
    python bench/bench_engine.py llama-3.2-1b-Q4_K_M --vs-llama-cpp   # bench_engine makes it when missing

Speed at a real size depends on the shapes and on which format each tensor has, not on the values, so the
weights are random bytes: every block's quantized fields are drawn uniformly, and its float scales (d, dmin)
are one constant per tensor, chosen so that the weights have about the spread 1/sqrt(n_in) of a trained model
(activations stay finite through any number of layers). Norm weights are ones, routers are Gaussian floats.
The tokenizer is the real one: llama.cpp's `models/ggml-vocab-llama-bpe.gguf` (Llama 3's 128256 tokens) or
`ggml-vocab-qwen2.gguf` (Qwen's 151936), from the sources tests/llama_cpp_vocabs.py fetches; the chat template
is the family's (tests/data/templates), so both engines tokenize and embed exactly as for the real model.

Each tensor's format follows llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, the version vendored in
llama-cpp-python 0.3.36) for a quantization without an importance matrix; `mix` below says which rules apply.
Files go to the models cache (~/.cache/llamapyz/models/real-shapes/), keyed by this module's source, and are
written tensor by tensor (an 8B model needs ~300 MiB of memory, not its size). Never commit them.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llamapyz.bundler.registry import cache_dir  # noqa: E402
from llamapyz.gguf.quants import FORMATS_BY_NAME, QuantFormat, dequantize  # noqa: E402
from tests.dress import llama3_rope_freqs  # noqa: E402
from tests.llama_cpp_vocabs import sources_dir  # noqa: E402

TEMPLATES = ROOT / "tests" / "data" / "templates"
MIXES = ("Q4_K_M", "Q8_0", "Q4_0", "IQ4_XS")
FILE_TYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "IQ4_XS": 30}  # general.file_type (llama_ftype)
SEED = 1234


@dataclass(frozen=True)
class Shape:
    """A real model's hyper-parameters (from its config.json), as far as they decide tensor shapes and speed."""

    arch: str  # llama, qwen3, qwen3moe
    vocab: str  # llama.cpp's ggml-vocab-NAME.gguf
    template: str  # tests/data/templates/NAME
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    tied: bool  # no output.weight: token_embd is the head too
    rope_base: float
    n_ctx_train: int
    llama3_rope: tuple[float, float, float, int] | None = None  # factor, low, high, original context
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv


LLAMA3 = dict(arch="llama", vocab="llama-bpe", rope_base=500000.0, n_ctx_train=131072)
QWEN3 = dict(vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja", rope_base=1000000.0, n_ctx_train=40960)
SHAPES: dict[str, Shape] = {
    "llama-3.2-1b": Shape(**LLAMA3, template="meta-llama-Llama-3.2-3B-Instruct.jinja", n_layer=16, n_embd=2048,
                          n_head=32, n_head_kv=8, head_dim=64, n_ff=8192, tied=True,
                          llama3_rope=(32.0, 1.0, 4.0, 8192)),
    "llama-3.2-3b": Shape(**LLAMA3, template="meta-llama-Llama-3.2-3B-Instruct.jinja", n_layer=28, n_embd=3072,
                          n_head=24, n_head_kv=8, head_dim=128, n_ff=8192, tied=True,
                          llama3_rope=(32.0, 1.0, 4.0, 8192)),
    "qwen3-4b": Shape(**QWEN3, arch="qwen3", n_layer=36, n_embd=2560, n_head=32, n_head_kv=8, head_dim=128, n_ff=9728,
                      tied=True),
    "llama-3.1-8b": Shape(**LLAMA3, template="meta-llama-Llama-3.1-8B-Instruct.jinja", n_layer=32, n_embd=4096,
                          n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, tied=False,
                          llama3_rope=(8.0, 1.0, 4.0, 8192)),
    "qwen3-30b-a3b": Shape(**QWEN3, arch="qwen3moe", n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128,
                           n_ff=6144, tied=False, n_expert=128, n_expert_used=8, n_ff_exp=768),
}


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order: (…, rows, n_in)
    type_name: str
    n_in: int  # the length of the vectors it multiplies (its rows' length)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's rule for the layers whose attn_v / ffn_down get more bits in the _M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def mix(shape: Shape, quant: str, role: str, i_layer: int) -> str:
    """The format llama.cpp's quantizer gives a weight matrix of this role (its GGUF name without blk.N. and
    .weight) in this mix, without an importance matrix. Every shape here has rows of whole 256-blocks, so the
    fallbacks for other widths never apply."""
    if role == "output" or (role == "token_embd" and shape.tied):
        return "Q8_0" if quant == "Q8_0" else "Q6_K"
    default = {"Q4_K_M": "Q4_K"}.get(quant, quant)
    if role == "token_embd" or quant in ("Q8_0", "Q4_0"):
        return default
    if role == "attn_v":
        if quant == "Q4_K_M" and use_more_bits(i_layer, shape.n_layer):
            return "Q6_K"
        if quant == "IQ4_XS" and shape.n_gqa >= 4:
            return "Q5_K"
    if role in ("ffn_down", "ffn_down_exps"):
        if quant == "Q4_K_M" and use_more_bits(i_layer, shape.n_layer):
            return "Q6_K"
        if quant == "IQ4_XS" and i_layer < shape.n_layer // 8:
            return "Q5_K"
    return default


def plan(shape: Shape, quant: str) -> list[TensorPlan]:
    """Every tensor of the model, in the order llama.cpp's converter writes them."""
    s, q_dim, kv_dim = shape, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    tensors = [TensorPlan("token_embd.weight", (LLAMA_VOCAB_SIZE[s.vocab], s.n_embd), mix(s, quant, "token_embd", 0),
                          s.n_embd)]
    if s.llama3_rope:
        tensors.append(TensorPlan("rope_freqs.weight", (s.head_dim // 2,), "F32", 0))

    def matrix(il: int, role: str, rows: int, n_in: int, n_expert: int = 0) -> TensorPlan:
        dims = (n_expert, rows, n_in) if n_expert else (rows, n_in)
        return TensorPlan(f"blk.{il}.{role}.weight", dims, mix(s, quant, role, il), n_in)

    for il in range(s.n_layer):
        tensors += [TensorPlan(f"blk.{il}.attn_norm.weight", (s.n_embd,), "F32", 0),
                    matrix(il, "attn_q", q_dim, s.n_embd), matrix(il, "attn_k", kv_dim, s.n_embd),
                    matrix(il, "attn_v", kv_dim, s.n_embd), matrix(il, "attn_output", s.n_embd, q_dim)]
        if s.arch in ("qwen3", "qwen3moe"):
            tensors += [TensorPlan(f"blk.{il}.attn_q_norm.weight", (s.head_dim,), "F32", 0),
                        TensorPlan(f"blk.{il}.attn_k_norm.weight", (s.head_dim,), "F32", 0)]
        tensors.append(TensorPlan(f"blk.{il}.ffn_norm.weight", (s.n_embd,), "F32", 0))
        if s.n_expert:
            tensors += [TensorPlan(f"blk.{il}.ffn_gate_inp.weight", (s.n_expert, s.n_embd), "F32", s.n_embd),
                        matrix(il, "ffn_gate_exps", s.n_ff_exp, s.n_embd, s.n_expert),
                        matrix(il, "ffn_up_exps", s.n_ff_exp, s.n_embd, s.n_expert),
                        matrix(il, "ffn_down_exps", s.n_embd, s.n_ff_exp, s.n_expert)]
        else:
            tensors += [matrix(il, "ffn_gate", s.n_ff, s.n_embd), matrix(il, "ffn_up", s.n_ff, s.n_embd),
                        matrix(il, "ffn_down", s.n_embd, s.n_ff)]
    tensors.append(TensorPlan("output_norm.weight", (s.n_embd,), "F32", 0))
    if not s.tied:
        tensors.append(TensorPlan("output.weight", (LLAMA_VOCAB_SIZE[s.vocab], s.n_embd), mix(s, quant, "output", 0),
                                  s.n_embd))
    return tensors


LLAMA_VOCAB_SIZE = {"llama-bpe": 128256, "qwen2": 151936}  # len(tokenizer.ggml.tokens) of the vocab files


# --- random weights -------------------------------------------------------------------------------------------


def scale_fields(fmt: QuantFormat) -> list[str]:
    """The block's float fields (d, dmin, m): the scales, set per tensor; every other field is random bits."""
    return [name for name, dtype, _ in fmt.fields if dtype == "<f2"]


def unit_spread(fmt: QuantFormat, rng: np.random.Generator) -> float:
    """The standard deviation of the weights of random blocks whose float scales are all 1."""
    blocks = np.frombuffer(rng.bytes(4096 * fmt.type_size), dtype=fmt.block_dtype).copy()
    for name in scale_fields(fmt):
        blocks[name] = 1.0
    return float(dequantize(blocks.view(np.uint8), fmt, (4096 * fmt.block_size,)).std())


def random_weights(t: TensorPlan, rng: np.random.Generator) -> np.ndarray:
    """The tensor's bytes (uint8, rows of whole blocks) with weights of spread about 1/sqrt(n_in)."""
    n = math.prod(t.shape)
    if t.type_name == "F32":
        if t.n_in == 0:  # a norm's weight (rope_freqs is written by `write`)
            return np.ones(t.shape, dtype=np.float32)
        return (rng.standard_normal(t.shape, dtype=np.float32) / np.float32(math.sqrt(t.n_in)))
    fmt = FORMATS_BY_NAME[t.type_name]
    blocks = np.frombuffer(rng.bytes(n // fmt.block_size * fmt.type_size), dtype=fmt.block_dtype).copy()
    scale = np.float16(1.0 / math.sqrt(t.n_in) / unit_spread(fmt, rng))
    for name in scale_fields(fmt):
        blocks[name] = scale
    return blocks.view(np.uint8).reshape(*t.shape[:-1], t.shape[-1] // fmt.block_size * fmt.type_size)


# --- the file -------------------------------------------------------------------------------------------------


def path_of(name: str, quant: str) -> Path:
    """Where the model lives in the cache; the key changes with this module's source."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    return cache_dir() / "real-shapes" / f"{name}-{quant}-{key}.gguf"


def metadata(writer: gguf.GGUFWriter, name: str, shape: Shape, quant: str) -> None:
    s, arch = shape, shape.arch
    writer.add_name(f"random weights, {name} shape, {quant}")
    writer.add_uint32("general.file_type", FILE_TYPES[quant])
    writer.add_uint32(f"{arch}.block_count", s.n_layer)
    writer.add_uint32(f"{arch}.context_length", s.n_ctx_train)
    writer.add_uint32(f"{arch}.embedding_length", s.n_embd)
    writer.add_uint32(f"{arch}.feed_forward_length", s.n_ff)
    writer.add_uint32(f"{arch}.attention.head_count", s.n_head)
    writer.add_uint32(f"{arch}.attention.head_count_kv", s.n_head_kv)
    writer.add_uint32(f"{arch}.attention.key_length", s.head_dim)
    writer.add_uint32(f"{arch}.attention.value_length", s.head_dim)
    writer.add_uint32(f"{arch}.rope.dimension_count", s.head_dim)
    writer.add_float32(f"{arch}.rope.freq_base", s.rope_base)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5 if arch == "llama" else 1e-6)
    writer.add_uint32(f"{arch}.vocab_size", LLAMA_VOCAB_SIZE[s.vocab])
    if s.n_expert:
        writer.add_uint32(f"{arch}.expert_count", s.n_expert)
        writer.add_uint32(f"{arch}.expert_used_count", s.n_expert_used)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", s.n_ff_exp)
    vocab = gguf.GGUFReader(sources_dir() / "models" / f"ggml-vocab-{s.vocab}.gguf")
    for field in vocab.fields.values():
        if field.name.startswith("tokenizer.") and field.name != "tokenizer.chat_template":
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_chat_template((TEMPLATES / s.template).read_text())


def write(name: str, quant: str, progress: bool = True) -> Path:
    """Make the model (when not cached) and return its path."""
    target = path_of(name, quant)
    if target.is_file():
        return target
    shape = SHAPES[name]
    tensors = plan(shape, quant)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), shape.arch)
    metadata(writer, name, shape, quant)
    for t in tensors:
        fmt = FORMATS_BY_NAME[t.type_name]
        nbytes = fmt.n_bytes(math.prod(t.shape))
        raw = None if t.type_name == "F32" else gguf.GGMLQuantizationType[t.type_name]
        byte_shape = (*t.shape[:-1], t.shape[-1] // fmt.block_size * fmt.type_size)
        writer.add_tensor_info(t.name, byte_shape if raw else t.shape, np.dtype(np.uint8 if raw else np.float32),
                               nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(SEED)
    total, done, shown = sum(FORMATS_BY_NAME[t.type_name].n_bytes(math.prod(t.shape)) for t in tensors), 0, -1
    for t in tensors:
        if t.name == "rope_freqs.weight":
            data = llama3_rope_freqs(shape.rope_base, shape.head_dim, *shape.llama3_rope)  # type: ignore[misc]
        else:
            data = random_weights(t, rng)
        writer.write_tensor_data(data)
        done += data.nbytes
        if progress and done * 10 // total > shown:  # every tenth
            shown = done * 10 // total
            print(f"{target.name}: {done / 2**30:.2f} of {total / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    writer.close()
    os.replace(tmp, target)
    return target


def parse(spec: str) -> tuple[str, str] | None:
    """"llama-3.2-1b-Q4_K_M" -> ("llama-3.2-1b", "Q4_K_M"); None when it names no shape and mix."""
    for quant in MIXES:
        name = spec.removesuffix(f"-{quant}")
        if name != spec and name in SHAPES:
            return name, quant
    return None


def summary(name: str, quant: str) -> Iterator[str]:
    tensors = plan(SHAPES[name], quant)
    size = sum(FORMATS_BY_NAME[t.type_name].n_bytes(math.prod(t.shape)) for t in tensors)
    counts: dict[str, int] = {}
    for t in tensors:
        if t.type_name != "F32":
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
    types = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    yield f"{name}-{quant}: {size / 2**30:.2f} GiB, {len(tensors)} tensors ({types})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    parser.add_argument("quant", nargs="?", choices=MIXES)
    parser.add_argument("--list", action="store_true", help="print every shape x mix with its size, make nothing")
    args = parser.parse_args()
    if args.list or not (args.shape and args.quant):
        for name in SHAPES:
            for quant in MIXES:
                print(*summary(name, quant))
        return
    print(write(args.shape, args.quant))


if __name__ == "__main__":
    main()
