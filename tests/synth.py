"""Small GGUF files for tests: well-formed ones through the `gguf` package's writer (an independent
implementation), hand-assembled bytes for the malformed files the writer refuses to produce, and `Layout`: a
file as data (metadata entries, tensor infos, data), to change and write again."""

from __future__ import annotations

import copy
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llamapyz.gguf.quants import FORMATS, FORMATS_BY_NAME
from llamapyz.gguf.reader import load_gguf

# --- well-formed files through gguf.GGUFWriter ------------------------------------------------------------

METADATA: dict[str, tuple[str, Any]] = {
    "test.u8": ("uint8", 200),
    "test.i8": ("int8", -100),
    "test.u16": ("uint16", 60000),
    "test.i16": ("int16", -30000),
    "test.u32": ("uint32", 4_000_000_000),
    "test.i32": ("int32", -2_000_000_000),
    "test.u64": ("uint64", 2**63 + 5),
    "test.i64": ("int64", -(2**62)),
    "test.f32": ("float32", 1.0),
    "test.f64": ("float64", 1e300),
    "test.bool": ("bool", True),
    "test.string": ("string", "héllo ✓ 🦙"),
    "test.ints": ("array", [1, 2, 3, -4]),
    "test.floats": ("array", [0.25, -1.5]),
    "test.strings": ("array", ["a", "", "日本", "<|im_end|>"]),
    "test.nested": ("array", [[1, 2], [3], [4, 5, 6]]),
}


def random_blocks(type_name: str, n_blocks: int, rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    """Random raw blocks of a format, with finite random float scales in [-scale, scale] and power-of-two
    scales (E8M0 fields, `e`) of 1/16 to 1 times the largest power of two up to `scale`, as a uint8 array."""
    fmt = FORMATS_BY_NAME[type_name]
    raw = rng.integers(0, 256, size=n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    for name in fmt.block_dtype.names:
        if name == "e":  # E8M0: 2^(e - 127), taken halved with levels doubled (MXFP4)
            top = 128 + math.floor(math.log2(scale))
            blocks[name] = rng.integers(top - 4, top + 1, size=blocks[name].shape)
        elif fmt.block_dtype[name].base == np.float16:
            blocks[name] = rng.uniform(-scale, scale, size=blocks[name].shape).astype(np.float16)
        elif fmt.block_dtype[name].base in (np.float32, np.float64):
            blocks[name] = rng.uniform(-scale, scale, size=blocks[name].shape)
        elif type_name == "BF16":
            blocks[name] = (rng.uniform(-scale, scale, size=n_blocks).astype(np.float32).view(np.uint32) >> 16)
    if type_name == "IQ1_M":  # its float16 d has no field of its own
        set_iq1_m_scale(blocks, rng.uniform(-scale, scale, size=n_blocks).astype(np.float16))
    return raw


def set_iq1_m_scale(blocks: np.ndarray, d: np.ndarray) -> None:
    """Write IQ1_M's float16 super-block scales `d` into the top nibbles of its 4 scale words (nibble i of d's
    bits in word i), the inverse of `llamapyz.gguf.quants.iq1_m_scale`."""
    bits = d.astype(np.float16).view(np.uint16)
    for i in range(4):
        blocks["scales"][:, i] = (blocks["scales"][:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)


# scale fields at the edges: float16 zeros, subnormals, the largest finite, infinities; E8M0's subnormals
# (e < 2), first normal, 1/2 and top exponents (2^127 * 12 overflows to inf, as in ggml)
EDGE_F16 = np.array([0.0, -0.0, 2.0**-24, -(2.0**-14), 1.0, 65504.0, -65504.0, np.inf, -np.inf], np.float16)
EDGE_E8M0 = np.array([0, 1, 2, 126, 127, 128, 200, 254, 255], np.uint8)


def edge_scale_blocks(type_name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`random_blocks` whose scale fields (float16, E8M0) cycle through the edge values above, each field
    from another starting point."""
    fmt = FORMATS_BY_NAME[type_name]
    raw = random_blocks(type_name, n_blocks, rng)
    blocks = raw.view(fmt.block_dtype)
    for i, name in enumerate(fmt.block_dtype.names):
        edges = EDGE_E8M0 if name == "e" else EDGE_F16 if fmt.block_dtype[name] == np.float16 else None
        if edges is not None:
            blocks[name] = np.resize(np.roll(edges, i), len(blocks))
    if type_name == "IQ1_M":
        set_iq1_m_scale(blocks, np.resize(EDGE_F16, len(blocks)))
    return raw


def write_gguf(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]] | None = None,
               metadata: dict[str, tuple[str, Any]] | None = None, arch: str = "llama",
               seed: int = 0) -> dict[str, np.ndarray]:
    """Write a GGUF with `metadata` and random tensors {name: (type, numpy shape)}; returns their raw bytes."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in (METADATA if metadata is None else metadata).items():
        getattr(writer, f"add_{kind}")(key, value)
    written: dict[str, np.ndarray] = {}
    for name, (type_name, shape) in (tensors or {}).items():
        fmt = FORMATS_BY_NAME[type_name]
        n_blocks = int(np.prod(shape)) // fmt.block_size
        raw = random_blocks(type_name, n_blocks, rng).reshape(*shape[:-1], -1)
        written[name] = raw
        writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


# --- tiny models ------------------------------------------------------------------------------------------

# Block scales of the random weights, chosen so that every format's values come out around +-0.05 (typical
# |q| of the format times its sub-scales); larger ones make a random llama's activations blow up.
WEIGHT_SCALE = {"Q4_0": 0.01, "Q4_1": 0.005, "Q5_0": 0.005, "Q5_1": 0.003, "Q8_0": 0.0008, "Q2_K": 0.003,
                "Q3_K": 0.001, "Q4_K": 0.0002, "Q5_K": 0.0001, "Q6_K": 0.00005, "IQ4_NL": 0.0007,
                "IQ4_XS": 0.00003, "MXFP4": 0.008, "TQ1_0": 0.06, "TQ2_0": 0.06, "IQ2_XXS": 0.0012,
                "IQ2_XS": 0.0012, "IQ2_S": 0.0012, "IQ3_XXS": 0.0005, "IQ3_S": 0.0005, "IQ1_S": 0.01, "IQ1_M": 0.01}


def byte_level_tokenizer() -> dict[str, tuple[str, Any]]:
    """GPT-2 byte-level BPE metadata: <|endoftext|> (BOS/EOS), <|im_end|> (EOG), the 256 byte tokens, a few merges."""
    from llamapyz.tokenizer.bpe import byte_to_unicode

    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r"]
    tokens = ["<|endoftext|>", "<|im_end|>", *byte_to_unicode(), *[m.replace(" ", "") for m in merges]]
    return {
        "tokenizer.ggml.model": ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "gpt-2"),
        "tokenizer.ggml.tokens": ("array", tokens),
        "tokenizer.ggml.token_type": ("array", [3, 3] + [1] * (len(tokens) - 2)),
        "tokenizer.ggml.merges": ("array", merges),
        "tokenizer.ggml.bos_token_id": ("uint32", 0),
        "tokenizer.ggml.eos_token_id": ("uint32", 0),
        "tokenizer.ggml.eot_token_id": ("uint32", 1),
        "tokenizer.chat_template": ("string", "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}"
                                              "{% if add_generation_prompt %}<assistant>{% endif %}"),
    }


# What each architecture's tiny model carries beyond llama's tensors (see llamapyz/model/hparams.py).
ARCH_FEATURES = {
    "llama": set(),
    "qwen2": {"qkv_bias"},
    "qwen3": {"qk_norm"},
    "qwen3moe": {"qk_norm", "experts"},
    "phi3": {"fused", "longrope"},
    "smollm3": set(),  # llama's tensors; no rope on every 4th layer
    "qwen2moe": {"qkv_bias", "experts", "shared_expert"},
    "mistral3": {"temperature"},  # llama's tensors, YaRN and attention temperature past the original context
    "gpt-oss": {"qkv_bias", "experts", "sinks", "biases", "window"},  # experts, router and output with biases
    "ernie4_5": set(),  # llama's tensors and rope
    "granite": {"multipliers"},  # llama's tensors; embedding, attention, residual and logit scales
    "granitemoe": {"multipliers", "experts"},  # granite's multipliers, Mixtral-style experts
    "olmo2": {"no_pre_norms", "qk_norm", "qk_norm_whole", "post_norms"},  # q and k normed whole
    "exaone4": {"no_pre_norms", "qk_norm", "post_norms"},  # olmo2's layer with per-head q/k norms
    "glm4": {"fused", "qkv_bias", "post_norms", "partial_rope"},  # attn_qkv with its bias, ffn_up = [gate; up]
    "gemma2": {"post_norms", "window", "softcap"},
    "gemma3": {"qk_norm", "post_norms", "window"},
}


def write_model(path: Path, arch: str = "llama", weight_type: str = "Q8_0", seed: int = 0,
                n_layer: int = 2, tied: bool = True, omit: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                experts: bool = False, rope_freqs: bool = False, small: bool = False,
                chat_template: bool = True, yarn: bool = False, expert_type: str | None = None,
                sliding: bool = False) -> None:
    """A tiny random model of `arch` (an `ARCH_FEATURES` key) with its matrices in `weight_type`, less `omit`,
    plus `extra` F32 vectors (tensors no architecture uses). `experts`: llama as a Mixtral-style MoE (4
    experts, 2 used); `rope_freqs`: llama with Llama 3.1-style per-frequency rope factors; `small`: an eighth
    of the width (n_embd 32, two heads of 16 sharing one KV head), for what runs under numba's CUDA simulator;
    `chat_template`: False leaves tokenizer.chat_template out, as a base model's file does; `yarn`: YaRN rope
    scaling by 2 from an original context of 64 (a ramp over the rotary dimensions at this size), always on
    for mistral3, whose attention temperature starts there (8 for `small`); `expert_type`: the experts' format, if not
    `weight_type` (gpt-oss ships MXFP4 experts); `sliding`: a sliding window of 8 (for families that take one from
    the file, as olmo2 does for Olmo 3)."""
    n_embd, n_ff, n_head, n_head_kv, head_dim = (32, 64, 2, 1, 16) if small else (256, 512, 4, 2, 64)
    features = ARCH_FEATURES[arch] | ({"experts"} if experts else set()) | ({"window"} if sliding else set())
    n_expert, n_ff_expert = 4, (64 if small else 256)
    rng = np.random.default_rng(seed)
    tokenizer = byte_level_tokenizer()
    if not chat_template:
        del tokenizer["tokenizer.chat_template"]
    n_vocab = len(tokenizer["tokenizer.ggml.tokens"][1])
    a = arch
    metadata = {
        **tokenizer,
        f"{a}.block_count": ("uint32", n_layer), f"{a}.context_length": ("uint32", 256),
        f"{a}.embedding_length": ("uint32", n_embd), f"{a}.feed_forward_length": ("uint32", n_ff),
        f"{a}.attention.head_count": ("uint32", n_head), f"{a}.attention.head_count_kv": ("uint32", n_head_kv),
        f"{a}.attention.layer_norm_rms_epsilon": ("float32", 1e-6), f"{a}.rope.freq_base": ("float32", 10000.0),
    }
    if arch in ("gemma2", "gemma3", "qwen3", "qwen3moe"):
        metadata.update({f"{a}.attention.key_length": ("uint32", head_dim),
                         f"{a}.attention.value_length": ("uint32", head_dim)})
    if "window" in features:
        metadata[f"{a}.attention.sliding_window"] = ("uint32", 8)
    if arch == "gemma3":
        metadata[f"{a}.rope.freq_base"] = ("float32", 1e6)
    if "softcap" in features:  # small caps, so that they bite on a tiny random model
        metadata.update({f"{a}.attn_logit_softcapping": ("float32", 1.0),
                         f"{a}.final_logit_softcapping": ("float32", 3.0)})
    if "experts" in features:
        metadata.update({f"{a}.expert_count": ("uint32", n_expert), f"{a}.expert_used_count": ("uint32", 2),
                         f"{a}.expert_feed_forward_length": ("uint32", n_ff_expert)})
    if "temperature" in features:
        yarn = True
        metadata.update({f"{a}.attention.temperature_scale": ("float32", 0.5),  # real: 0.1, from 16384 on
                         f"{a}.rope.scaling.yarn_beta_fast": ("float32", 16.0),
                         f"{a}.rope.scaling.yarn_beta_slow": ("float32", 2.0),
                         f"{a}.rope.scaling.yarn_log_multiplier": ("float32", 1.0)})
    if yarn:
        metadata.update({f"{a}.rope.scaling.type": ("string", "yarn"), f"{a}.rope.scaling.factor": ("float32", 2.0),
                         f"{a}.rope.scaling.original_context_length": ("uint32", 8 if small else 64)})
    if "multipliers" in features:  # far from 1, so that each shows
        metadata.update({f"{a}.embedding_scale": ("float32", 3.0), f"{a}.residual_scale": ("float32", 0.5),
                         f"{a}.attention.scale": ("float32", 0.1), f"{a}.logit_scale": ("float32", 2.0)})
    if "partial_rope" in features:  # rope on half of each head
        metadata[f"{a}.rope.dimension_count"] = ("uint32", head_dim // 2)
    if "longrope" in features:  # partial rotary, LongRoPE factors; contexts over 32 use the long ones
        metadata.update({f"{a}.rope.dimension_count": ("uint32", 48),
                         f"{a}.rope.scaling.original_context_length": ("uint32", 32),
                         f"{a}.rope.scaling.attn_factor": ("float32", 1.2)})
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in metadata.items():
        getattr(writer, f"add_{kind}")(key, value)

    def matrix(name: str, *shape: int, type_name: str = weight_type) -> None:
        fmt = FORMATS_BY_NAME[type_name]
        raw = random_blocks(type_name, int(np.prod(shape)) // fmt.block_size, rng, WEIGHT_SCALE.get(type_name, 0.01))
        if name not in omit:
            writer.add_tensor(name, raw.reshape(*shape[:-1], -1), raw_dtype=gguf.GGMLQuantizationType[type_name])

    def norm(name: str, n: int, mean: float = 1.0, std: float = 0.1) -> None:
        if name not in omit:
            writer.add_tensor(name, rng.normal(mean, std, n).astype(np.float32))

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim
    matrix("token_embd.weight", n_vocab, n_embd, type_name="Q8_0" if tied else weight_type)
    for i in range(n_layer):
        p = f"blk.{i}."
        if "no_pre_norms" not in features:
            norm(p + "attn_norm.weight", n_embd)
        if "fused" in features:
            matrix(p + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
        else:
            matrix(p + "attn_q.weight", q_dim, n_embd)
            matrix(p + "attn_k.weight", kv_dim, n_embd)
            matrix(p + "attn_v.weight", kv_dim, n_embd)
        matrix(p + "attn_output.weight", n_embd, q_dim)
        if "no_pre_norms" not in features:
            norm(p + ("post_attention_norm.weight" if arch == "gpt-oss" else "ffn_norm.weight"), n_embd)
        if "experts" in features:
            writer.add_tensor(p + "ffn_gate_inp.weight", rng.normal(0, 0.2, (n_expert, n_embd)).astype(np.float32))
            for name, shape in (("gate", (n_ff_expert, n_embd)), ("up", (n_ff_expert, n_embd)),
                                ("down", (n_embd, n_ff_expert))):
                matrix(f"{p}ffn_{name}_exps.weight", n_expert, *shape, type_name=expert_type or weight_type)
                if "biases" in features and f"{p}ffn_{name}_exps.bias" not in omit:  # (n_expert, rows)
                    writer.add_tensor(f"{p}ffn_{name}_exps.bias",
                                      rng.normal(0, 0.3, (n_expert, shape[0])).astype(np.float32))
        elif "fused" in features:
            matrix(p + "ffn_up.weight", 2 * n_ff, n_embd)
            matrix(p + "ffn_down.weight", n_embd, n_ff)
        else:
            matrix(p + "ffn_gate.weight", n_ff, n_embd)
            matrix(p + "ffn_up.weight", n_ff, n_embd)
            matrix(p + "ffn_down.weight", n_embd, n_ff)
        if "shared_expert" in features:
            matrix(p + "ffn_gate_shexp.weight", n_ff, n_embd)
            matrix(p + "ffn_up_shexp.weight", n_ff, n_embd)
            matrix(p + "ffn_down_shexp.weight", n_embd, n_ff)
            norm(p + "ffn_gate_inp_shexp.weight", n_embd, 0.0, 0.2)
        if "biases" in features:
            norm(p + "ffn_gate_inp.bias", n_expert, 0.0, 0.5)
            norm(p + "attn_output.bias", n_embd, 0.0, 0.2)
        if "sinks" in features:
            norm(p + "attn_sinks.weight", n_head, 0.0, 1.0)
        if "qk_norm" in features:
            whole = "qk_norm_whole" in features
            norm(p + "attn_q_norm.weight", q_dim if whole else head_dim)
            norm(p + "attn_k_norm.weight", kv_dim if whole else head_dim)
        if "post_norms" in features:
            norm(p + "post_attention_norm.weight", n_embd)
            norm(p + "post_ffw_norm.weight", n_embd)
        if "qkv_bias" in features and "fused" in features:
            norm(p + "attn_qkv.bias", q_dim + 2 * kv_dim, 0.0, 0.5)
        elif "qkv_bias" in features:
            norm(p + "attn_q.bias", q_dim, 0.0, 0.5)
            norm(p + "attn_k.bias", kv_dim, 0.0, 0.5)
            norm(p + "attn_v.bias", kv_dim, 0.0, 0.5)
    norm("output_norm.weight", n_embd)
    if not tied:
        matrix("output.weight", n_vocab, n_embd)
    if rope_freqs:
        writer.add_tensor("rope_freqs.weight", rng.uniform(1.0, 8.0, head_dim // 2).astype(np.float32))
    if "longrope" in features:
        writer.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 16.0, 24).astype(np.float32))
        writer.add_tensor("rope_factors_short.weight", np.linspace(1.0, 1.5, 24).astype(np.float32))
    for name in extra:
        norm(name, n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


SMALL_TENSORS = {
    "f32": ("F32", (3, 8)),
    "f16": ("F16", (2, 16)),
    "q4_0": ("Q4_0", (2, 64)),
    "q4_k": ("Q4_K", (2, 256)),
}

# --- hand-assembled bytes ---------------------------------------------------------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def tensor_info(name: str, ne: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<IQ", type_id, offset)


def gguf_bytes(kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3,
               magic: bytes = b"GGUF", alignment: int = 32, n_kv: int | None = None,
               n_tensors: int | None = None) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    pad = (-len(body)) % alignment
    return body + b"\0" * pad + data


# --- a GGUF file as data, to change and write again (tests/gguf_mutations.py) ---------------------------------

SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}
INT_TYPES = {0: (0, 2**8 - 1), 1: (-2**7, 2**7 - 1), 2: (0, 2**16 - 1), 3: (-2**15, 2**15 - 1), 4: (0, 2**32 - 1),
             5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1), 11: (-2**63, 2**63 - 1)}
F64 = 12
TYPE_IDS = {"UINT8": 0, "INT8": 1, "UINT16": 2, "INT16": 3, "UINT32": 4, "INT32": 5, "FLOAT32": 6, "BOOL": 7,
            "STRING": 8, "UINT64": 10, "INT64": 11, "FLOAT64": 12}
NUMPY_OF = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1", 10: "<u8", 11: "<i8",
            12: "<f8"}


@dataclass
class Entry:
    """One metadata key/value: `value` of an ARRAY is (element type, items), items nested the same way."""

    key: str
    vtype: int
    value: Any


@dataclass
class Info:
    """One tensor info, and the bytes of its data in the clean file (what a re-layout starts from)."""

    name: str
    ne: list[int]
    type_id: int
    offset: int
    data: bytes = b""


@dataclass
class Layout:
    """A GGUF file as data: its metadata entries, tensor infos and data section, to change and `encode` again
    (`read_layout` makes one from a clean file)."""

    entries: list[Entry]
    infos: list[Info]
    data: list[bytes]  # the data section, in pieces
    version: int = 3
    alignment: int = 32  # what the writer pads to (general.alignment may be mutated to disagree)
    # the clean file's encoded values by id (values are replaced, never changed in place; the clean layout
    # keeps them alive, so an id here is never reused by a new value)
    encoded: dict[int, tuple[Any, int, bytes]] = field(default_factory=dict)

    def copy(self) -> Layout:
        """A copy whose entries and infos can be changed (values and data bytes are shared, never mutated)."""
        if not self.encoded:
            self.encoded.update((id(e.value), (e.value, e.vtype, encode_value(e.vtype, e.value)))
                                for e in self.entries)
        infos = [Info(i.name, list(i.ne), i.type_id, i.offset, i.data) for i in self.infos]
        return Layout([copy.copy(e) for e in self.entries], infos, self.data, self.version, self.alignment,
                      self.encoded)

    def entry(self, key: str) -> Entry | None:
        return next((e for e in self.entries if e.key == key), None)

    @property
    def arch(self) -> str:
        e = self.entry("general.architecture")
        return e.value if e is not None and isinstance(e.value, str) else "llama"

    def encode(self) -> list[bytes]:
        """The file's bytes, in pieces: the header (its end padded) first, then the data section."""
        head = [b"GGUF", struct.pack("<IQQ", self.version, len(self.infos), len(self.entries))]
        for e in self.entries:
            value, vtype, raw = self.encoded.get(id(e.value), (None, None, b""))
            if value is not e.value or vtype != e.vtype:
                raw = encode_value(e.vtype, e.value)
            head += [_gguf_string(e.key), struct.pack("<I", e.vtype), raw]
        for i in self.infos:
            head += [_gguf_string(i.name), struct.pack("<I", len(i.ne)), struct.pack(f"<{len(i.ne)}Q", *i.ne),
                     struct.pack("<IQ", i.type_id, i.offset)]
        body = b"".join(head)
        return [body + b"\0" * ((-len(body)) % self.alignment), *self.data]


def _gguf_string(text: str | bytes) -> bytes:
    """`gstr`, keeping lone surrogates (what the reader makes of bytes that are not UTF-8) as their bytes."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def encode_value(vtype: int, value: Any) -> bytes:
    """A metadata value of type `vtype` as its bytes in the file (an ARRAY's value: (element type, items))."""
    if vtype in SCALAR_FORMATS:
        return struct.pack(SCALAR_FORMATS[vtype], value)
    if vtype == STRING:
        return _gguf_string(value)
    elem, items = value
    head = struct.pack("<IQ", elem, len(items))
    if elem in NUMPY_OF:
        return head + np.array(items, dtype=NUMPY_OF[elem]).tobytes()
    return head + b"".join(encode_value(elem, item) for item in items)


def read_layout(path: Path) -> Layout:
    """A clean file (written by tests/synth.py, so no nested arrays) as a `Layout`."""
    with load_gguf(path) as g:
        entries = []
        for key, value in g.metadata.items():
            kind = g.value_types[key]
            if kind.startswith("ARRAY["):
                elem = TYPE_IDS[kind[6:-1]]
                entries.append(Entry(key, ARRAY, (elem, value if elem == STRING else np.array(value))))
            else:
                entries.append(Entry(key, TYPE_IDS[kind], value))
        data = bytes(g.buffer[g.data_offset:])
        infos = [Info(t.name, list(t.ne), t.format.type_id, t.offset, data[t.offset:t.offset + t.n_bytes])
                 for t in g.tensors.values()]
        return Layout(entries, infos, [data], g.version, g.alignment)


def relayout(layout: Layout, rng: np.random.Generator) -> None:
    """Give every tensor its own aligned data again, after its shape or type changed: its old bytes cut to
    the new size or repeated. A tensor of an unknown type keeps its offset."""
    chunks, pos = [], 0
    for info in layout.infos:
        fmt = FORMATS.get(info.type_id)
        n_elements = math.prod(info.ne)
        if fmt is None or n_elements >= 1 << 26:  # unknown type, or too big to write: left as it is
            continue
        n_bytes = fmt.n_bytes(n_elements)
        data = info.data
        if len(data) != n_bytes:  # its own bytes cut or repeated: blocks stay blocks, scales stay finite
            data = (data * (n_bytes // max(1, len(data)) + 1) if data else rng.bytes(n_bytes))[:n_bytes]
        info.offset = pos
        pad = (-n_bytes) % layout.alignment
        chunks += [data, b"\0" * pad]
        pos += n_bytes + pad
    layout.data = chunks
