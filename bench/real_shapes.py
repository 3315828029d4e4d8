"""Random-weight models with real models' exact tensor shapes and llama.cpp's quant mixes, made on demand.

    python bench/real_shapes.py llama-3.2-1b Q4_K_M        # prints the path of the (cached) GGUF
    python bench/real_shapes.py --list                     # the shapes and mixes, with file sizes
    python bench/bench_engine.py llama-3.2-1b-Q4_K_M --vs-llama-cpp   # bench_engine makes it when missing

Speed at a real size depends on the shapes and on which format each tensor has, not on the values, so the
weights are random bytes: every block's quantized fields are drawn uniformly, and its float scales (d, dmin)
are one constant per tensor, chosen so that the weights have about the spread 1/sqrt(n_in) of a trained model
(activations stay finite through any number of layers). Norm weights are ones, routers are Gaussian floats.
The tokenizer is llama.cpp's `models/ggml-vocab-llama-bpe.gguf` (Llama 3's 128256 tokens) or
`ggml-vocab-qwen2.gguf` (Qwen's 151936), from the sources tests/llama_cpp_vocabs.py fetches; where the real
vocabulary is larger and its file is not among those (Ministral 3's tekken, gpt-oss's o200k), Llama 3's is
padded with control tokens to the real size, so the embedding and head have their real shapes. The chat
template is the family's (tests/data/templates) or, where none is kept, Llama 3's: it only makes the
first-token prompt.

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
MIXES = ("Q4_K_M", "Q8_0", "Q4_0", "IQ4_XS", "MXFP4_MOE")
FILE_TYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "IQ4_XS": 30, "MXFP4_MOE": 38}  # general.file_type (llama_ftype)
SEED = 1234


@dataclass(frozen=True)
class Shape:
    """A real model's hyper-parameters (from its config.json), as far as they decide tensor shapes and speed."""

    arch: str  # the GGUF architecture
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
    n_ff_shexp: int = 0  # a sigmoid-gated shared expert (qwen2moe)
    n_vocab: int = 0  # the real vocabulary's size when the vocab file's is smaller: padded with control tokens
    biases: bool = False  # q/k/v biases (qwen2moe); gpt-oss: every projection's, the router's and the experts'
    keys: tuple[tuple[str, object], ...] = ()  # more "{arch}." keys, e.g. YaRN's
    mxfp4_experts: bool = False  # the experts ship in MXFP4, the rest in Q8_0 (gpt-oss: its only mix)

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv

    @property
    def mixes(self) -> tuple[str, ...]:
        return ("MXFP4_MOE",) if self.mxfp4_experts else MIXES[:4]

    @property
    def vocab_size(self) -> int:
        return max(self.n_vocab, VOCAB_FILE_SIZE[self.vocab])


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
    # issue 29's families, at their smallest real sizes (the chat template only sizes the first-token prompt)
    "smollm3-3b": Shape(arch="smollm3", vocab="llama-bpe", template="meta-llama-Llama-3.2-3B-Instruct.jinja",
                        n_layer=36, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_ff=11008, tied=True,
                        rope_base=5000000.0, n_ctx_train=65536),
    "ministral-3-3b": Shape(arch="mistral3", vocab="llama-bpe",
                            template="mistralai-Ministral-3-14B-Reasoning-2512.jinja", n_layer=26, n_embd=3072,
                            n_head=32, n_head_kv=8, head_dim=128, n_ff=9216, tied=True,
                            rope_base=1000000.0, n_ctx_train=262144, n_vocab=131072,
                            keys=(("rope.scaling.type", "yarn"), ("rope.scaling.factor", 16.0),
                                  ("rope.scaling.original_context_length", 16384),
                                  ("attention.temperature_scale", 0.1))),
    "qwen1.5-moe-a2.7b": Shape(arch="qwen2moe", vocab="qwen2", template="Qwen-Qwen2.5-7B-Instruct.jinja", n_layer=24,
                               n_embd=2048, n_head=16, n_head_kv=16, head_dim=128, n_ff=5632, tied=False,
                               rope_base=1000000.0, n_ctx_train=8192, n_expert=60, n_expert_used=4, n_ff_exp=1408,
                               n_ff_shexp=5632, biases=True),
    "gpt-oss-20b": Shape(arch="gpt-oss", vocab="llama-bpe", template="openai-gpt-oss-120b.jinja", n_layer=24,
                         n_embd=2880, n_head=64, n_head_kv=8, head_dim=64, n_ff=2880, tied=False, rope_base=150000.0,
                         n_ctx_train=131072, n_expert=32, n_expert_used=4, n_ff_exp=2880, n_vocab=201088,
                         biases=True, mxfp4_experts=True,
                         keys=(("rope.scaling.type", "yarn"), ("rope.scaling.factor", 32.0),
                               ("rope.scaling.original_context_length", 4096), ("attention.sliding_window", 128))),
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
    .weight) in this mix, without an importance matrix, before the fallback for rows of other widths."""
    if quant == "MXFP4_MOE":  # experts MXFP4, every other matrix Q8_0
        return "MXFP4" if role.endswith("_exps") else "Q8_0"
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


# the quantizer's fallback for rows that are not whole blocks of a 256-block type (tensor_type_fallback)
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def plan(shape: Shape, quant: str) -> list[TensorPlan]:
    """Every tensor of the model, in the order llama.cpp's converter writes them."""
    s, q_dim, kv_dim = shape, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    gpt_oss = s.arch == "gpt-oss"

    def matrix(name: str, role: str, il: int, rows: int, n_in: int, n_expert: int = 0) -> TensorPlan:
        dims = (n_expert, rows, n_in) if n_expert else (rows, n_in)
        type_name = mix(s, quant, role, il)
        if n_in % FORMATS_BY_NAME[type_name].block_size:
            type_name = FALLBACK[type_name]
        return TensorPlan(name, dims, type_name, n_in)

    def vector(name: str, *dims: int) -> TensorPlan:
        return TensorPlan(name, dims, "F32", 0)

    tensors = [matrix("token_embd.weight", "token_embd", 0, s.vocab_size, s.n_embd)]
    if s.llama3_rope:
        tensors.append(vector("rope_freqs.weight", s.head_dim // 2))
    for il in range(s.n_layer):
        p = f"blk.{il}."
        tensors.append(vector(f"{p}attn_norm.weight", s.n_embd))
        for role, rows, n_in in (("attn_q", q_dim, s.n_embd), ("attn_k", kv_dim, s.n_embd),
                                 ("attn_v", kv_dim, s.n_embd), ("attn_output", s.n_embd, q_dim)):
            tensors.append(matrix(f"{p}{role}.weight", role, il, rows, n_in))
            if s.biases and (gpt_oss or role != "attn_output"):
                tensors.append(vector(f"{p}{role}.bias", rows))
        if s.arch in ("qwen3", "qwen3moe"):
            tensors += [vector(f"{p}attn_q_norm.weight", s.head_dim), vector(f"{p}attn_k_norm.weight", s.head_dim)]
        if gpt_oss:
            tensors.append(vector(f"{p}attn_sinks.weight", s.n_head))
        tensors.append(vector(f"{p}{'post_attention_norm' if gpt_oss else 'ffn_norm'}.weight", s.n_embd))
        if s.n_expert:
            tensors.append(TensorPlan(f"{p}ffn_gate_inp.weight", (s.n_expert, s.n_embd), "F32", s.n_embd))
            if gpt_oss:
                tensors.append(vector(f"{p}ffn_gate_inp.bias", s.n_expert))
            for role, rows, n_in in (("ffn_gate_exps", s.n_ff_exp, s.n_embd), ("ffn_up_exps", s.n_ff_exp, s.n_embd),
                                     ("ffn_down_exps", s.n_embd, s.n_ff_exp)):
                tensors.append(matrix(f"{p}{role}.weight", role, il, rows, n_in, s.n_expert))
                if gpt_oss:
                    tensors.append(vector(f"{p}{role}.bias", s.n_expert, rows))
            if s.n_ff_shexp:
                tensors += [TensorPlan(f"{p}ffn_gate_inp_shexp.weight", (s.n_embd,), "F32", s.n_embd),
                            matrix(f"{p}ffn_gate_shexp.weight", "ffn_gate", il, s.n_ff_shexp, s.n_embd),
                            matrix(f"{p}ffn_up_shexp.weight", "ffn_up", il, s.n_ff_shexp, s.n_embd),
                            matrix(f"{p}ffn_down_shexp.weight", "ffn_down", il, s.n_embd, s.n_ff_shexp)]
        else:
            tensors += [matrix(f"{p}ffn_gate.weight", "ffn_gate", il, s.n_ff, s.n_embd),
                        matrix(f"{p}ffn_up.weight", "ffn_up", il, s.n_ff, s.n_embd),
                        matrix(f"{p}ffn_down.weight", "ffn_down", il, s.n_embd, s.n_ff)]
    tensors.append(vector("output_norm.weight", s.n_embd))
    if not s.tied:
        tensors.append(matrix("output.weight", "output", 0, s.vocab_size, s.n_embd))
    return tensors


VOCAB_FILE_SIZE = {"llama-bpe": 128256, "qwen2": 151936}  # len(tokenizer.ggml.tokens) of the vocab files


# --- random weights -------------------------------------------------------------------------------------------


def scale_fields(fmt: QuantFormat) -> list[str]:
    """The block's scales, set per tensor: its float16 fields (d, dmin, m), or MXFP4's power-of-two exponent e;
    every other field is random bits."""
    return [name for name, dtype, _ in fmt.fields if dtype == "<f2" or name == "e"]


def set_scale(blocks: np.ndarray, fmt: QuantFormat, scale: float) -> None:
    """Every scale field of `blocks` set to `scale` (an exponent field to the nearest power of two)."""
    for name in scale_fields(fmt):
        blocks[name] = 127 + round(math.log2(scale)) if name == "e" else np.float16(scale)


def unit_spread(fmt: QuantFormat, rng: np.random.Generator) -> float:
    """The standard deviation of the weights of random blocks whose scales are all 1."""
    blocks = np.frombuffer(rng.bytes(4096 * fmt.type_size), dtype=fmt.block_dtype).copy()
    set_scale(blocks, fmt, 1.0)
    return float(dequantize(blocks.view(np.uint8), fmt, (4096 * fmt.block_size,)).std())


def random_weights(t: TensorPlan, rng: np.random.Generator) -> np.ndarray:
    """The tensor's bytes (uint8, rows of whole blocks) with weights of spread about 1/sqrt(n_in)."""
    n = math.prod(t.shape)
    if t.type_name == "F32":
        if t.n_in == 0:  # a norm's weight, a bias (zeros would do as well), a sink
            return np.ones(t.shape, dtype=np.float32)
        return (rng.standard_normal(t.shape, dtype=np.float32) / np.float32(math.sqrt(t.n_in)))
    fmt = FORMATS_BY_NAME[t.type_name]
    blocks = np.frombuffer(rng.bytes(n // fmt.block_size * fmt.type_size), dtype=fmt.block_dtype).copy()
    set_scale(blocks, fmt, 1.0 / math.sqrt(t.n_in) / unit_spread(fmt, rng))
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
    writer.add_uint32(f"{arch}.vocab_size", s.vocab_size)
    if s.n_expert:
        writer.add_uint32(f"{arch}.expert_count", s.n_expert)
        writer.add_uint32(f"{arch}.expert_used_count", s.n_expert_used)
        writer.add_uint32(f"{arch}.expert_feed_forward_length", s.n_ff_exp)
    if s.n_ff_shexp:
        writer.add_uint32(f"{arch}.expert_shared_feed_forward_length", s.n_ff_shexp)
    for key, value in s.keys:
        if isinstance(value, str):
            writer.add_string(f"{arch}.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", int(value))  # type: ignore[call-overload]
    vocab = gguf.GGUFReader(sources_dir() / "models" / f"ggml-vocab-{s.vocab}.gguf")
    for field in vocab.fields.values():
        if not field.name.startswith("tokenizer.") or field.name == "tokenizer.chat_template":
            continue
        value, pad = field.contents(), s.vocab_size - VOCAB_FILE_SIZE[s.vocab]
        if pad and field.name == "tokenizer.ggml.tokens":
            value = value + [f"<|pad_{i}|>" for i in range(pad)]
        elif pad and field.name == "tokenizer.ggml.token_type":
            value = value + [int(gguf.TokenType.CONTROL)] * pad
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
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
        if name != spec and name in SHAPES and quant in SHAPES[name].mixes:
            return name, quant
    return None


def summary(name: str, quant: str) -> str:
    tensors = plan(SHAPES[name], quant)
    size = sum(FORMATS_BY_NAME[t.type_name].n_bytes(math.prod(t.shape)) for t in tensors)
    counts: dict[str, int] = {}
    for t in tensors:
        if t.type_name != "F32":
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
    types = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return f"{name}-{quant}: {size / 2**30:.2f} GiB, {len(tensors)} tensors ({types})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    parser.add_argument("quant", nargs="?", choices=MIXES)
    parser.add_argument("--list", action="store_true", help="print every shape x mix with its size, make nothing")
    args = parser.parse_args()
    if args.list or not (args.shape and args.quant):
        for name, shape in SHAPES.items():
            for quant in shape.mixes:
                print(summary(name, quant))
        return
    if args.quant not in SHAPES[args.shape].mixes:
        parser.error(f"{args.shape} comes in {', '.join(SHAPES[args.shape].mixes)}")
    print(write(args.shape, args.quant))


if __name__ == "__main__":
    main()
