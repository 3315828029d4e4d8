"""The GGUF fuzz's mutations and one case: a seed made into a corrupt file, then opened, loaded and run.

Each case starts from one of a few tiny random models (tests/synth.py: llama dense, MoE and with rope
factors, qwen2, qwen3moe, phi3, gemma2, gemma3, in float and quantized weights), held as data (`Layout`:
metadata entries, tensor infos, the data section), and applies one to three seeded mutations:

- metadata values: a model hyper-parameter or tokenizer key set to 0, -1, NaN, inf, a huge or a wrong-typed
  value, a string or an array; nudged (+-1, x2, /2); retyped; dropped; added where the architecture has none;
  arrays shortened, emptied or given odd elements; the architecture renamed; the alignment changed;
- tensor infos: a dimension zeroed, nudged or made huge, dimensions added, dropped or swapped; the type set
  to another (known, unsupported or unknown) id; the offset moved; a tensor renamed, dropped or duplicated;
  then, for half of them, the data section laid out again so that the file is well-formed and the change
  reaches the model loader and the forward pass; a consistent rescaling of every dimension (a smaller or
  larger model that must simply run), fewer layers, a smaller vocabulary;
- the header and raw bytes: magic, version and counts, bit flips and extreme integers in the header,
  truncation.

The case (`run_case`) then opens the file, reads every tensor view's last byte, loads the `Model` (tokenizer,
config, weights) and, when it loads, runs a short prefill and one decode step. The outcome is "ok" or the
class name of a `LlamapyzError`; anything else escapes, for the caller to report as a failure of its seed. A
seed always makes the same case, so `python -m tests.gguf_fuzz_pool SEED` reproduces one.
"""

from __future__ import annotations

import copy
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamapyz import Model
from llamapyz.errors import LlamapyzError, require_finite
from llamapyz.gguf.quants import FORMATS
from llamapyz.gguf.reader import load_gguf
from tests.synth import (
    ARRAY,
    BOOL,
    F32,
    F64,
    INT_TYPES,
    STRING,
    Entry,
    Info,
    Layout,
    relayout,
    write_model,
)

PROMPT = "the cat sat 🦙 <|im_end|> 12"

# --- metadata mutations ------------------------------------------------------------------------------------

# every key config.ModelConfig.from_metadata reads, after "{arch}."
HYPER_PARAMETERS = (
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "rope.dimension_count", "rope.freq_base",
    "rope.scaling.type", "rope.scaling.factor", "expert_count", "expert_used_count", "expert_feed_forward_length",
    "attention.sliding_window", "context_length", "attention.layer_norm_rms_epsilon", "rope.freq_base_swa",
    "rope.scaling.attn_factor", "rope.scaling.original_context_length", "attn_logit_softcapping",
    "final_logit_softcapping", "expert_weights_scale", "attention.sliding_window_pattern",
)
TOKENIZER_KEYS = tuple(f"tokenizer.ggml.{k}" for k in (
    "model", "pre", "tokens", "token_type", "scores", "merges", "bos_token_id", "eos_token_id",
    "unknown_token_id", "padding_token_id", "eot_token_id", "add_bos_token", "add_eos_token", "add_space_prefix"))
INTS = (0, 1, -1, 2, 3, 5, 7, 8, 16, 31, 32, 33, 48, 63, 64, 96, 127, 128, 255, 256, 257, 263, 264, 511, 512,
        4096, 65535, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
        -2**31, -2**63)
FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 1e-38, 1e-6, 1e-5, 64.0, 10000.0, 1e6, 1e30, 3.4e38,
          float("inf"), float("-inf"), float("nan"), 2.0**31, 1.5, 4.0)
DOUBLES = (1e308, 5e-324, -1e308, 2.0**63, 2.0**64, 1e-320)
STRINGS = ("", "0", "4", "64", "nan", "inf", "-1", "llama", "gemma3", "qwen3moe", "mamba", "gpt2", "none",
           "linear", "yarn", "longrope", "default", "x" * 300, "é🦙", "\udcff", "<|im_end|>", "Ġ t", "a b c")
ARCH_NAMES = ("llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma2", "gemma3", "mamba", "", "LLAMA", "llama ")


def pick(rng: np.random.Generator, items: Any) -> Any:
    return items[int(rng.integers(len(items)))]


def random_int(rng: np.random.Generator) -> tuple[int, int]:
    """A typed integer: a value of INTS in the range of a random integer type."""
    vtype = pick(rng, tuple(INT_TYPES))
    return vtype, clip(vtype, pick(rng, INTS))


def random_value(rng: np.random.Generator) -> tuple[int, Any]:
    """A typed value of any kind: (vtype, value) ready for `encode_value`."""
    kind = int(rng.integers(10))
    if kind <= 2:
        return random_int(rng)
    if kind == 3:
        return F32, pick(rng, FLOATS)
    if kind == 4:
        return F64, pick(rng, FLOATS + DOUBLES)
    if kind == 5:
        return BOOL, bool(rng.integers(2))
    if kind == 6:
        return STRING, pick(rng, STRINGS)
    return ARRAY, random_array(rng, int(rng.integers(4)))


def random_array(rng: np.random.Generator, kind: int) -> tuple[int, list]:
    """(element type, items): integers (kind 0), floats or bools (1), strings (2), arrays of those (3)."""
    n = pick(rng, (0, 1, 2, 3, 8, 264))
    if kind == 0:
        elem = pick(rng, tuple(INT_TYPES))
        return elem, [clip(elem, pick(rng, INTS)) for _ in range(n)]
    if kind == 1:
        elem = pick(rng, (F32, F64, BOOL))
        return elem, [pick(rng, FLOATS) if elem != BOOL else bool(rng.integers(2)) for _ in range(n)]
    if kind == 2 or n > 3:
        return STRING, [pick(rng, STRINGS) for _ in range(n)]
    return ARRAY, [random_array(rng, int(rng.integers(3))) for _ in range(n)]


def clip(vtype: int, value: int) -> int:
    """`value` brought into the range of integer type `vtype`."""
    low, high = INT_TYPES[vtype]
    return min(max(value, low), high)


def nudged(rng: np.random.Generator, entry: Entry) -> tuple[int, Any]:
    """A value near the entry's own: +-1, x2, /2, 0, negated, NaN; kept in its type when it fits."""
    value = entry.value
    if entry.vtype in INT_TYPES:
        new = pick(rng, (value + 1, value - 1, value * 2, value // 2, 0, value * 3 // 2, value + 32, -value))
        low, high = INT_TYPES[entry.vtype]
        return (entry.vtype, new) if low <= new <= high else (11 if new < 0 else 10, new)
    if entry.vtype in (F32, F64):
        new = pick(rng, (value * 10, value / 10, -value, 0.0, float("nan"), value * 1e30, value + 1))
        return entry.vtype, new if entry.vtype == F64 or abs(new) < 3.4e38 or not math.isfinite(new) else math.inf
    return random_value(rng)


def retyped(rng: np.random.Generator, entry: Entry) -> tuple[int, Any]:
    """The same value in another type: an integer as a float, a string, a bool or a one-element array."""
    value = entry.value
    if entry.vtype in INT_TYPES or entry.vtype in (F32, F64, BOOL):
        kind = int(rng.integers(5))
        if kind == 0:  # float32 when it fits
            return pick(rng, (F32, F64)) if abs(value) <= 3.4e38 or not math.isfinite(value) else F64, float(value)
        if kind == 1:
            return STRING, str(value)
        if kind == 2:
            return BOOL, bool(value)
        if kind == 3:
            return ARRAY, (entry.vtype, [value])
        vtype = pick(rng, tuple(INT_TYPES))
        return vtype, clip(vtype, int(value) if math.isfinite(value) else 0)
    return random_value(rng)


def set_value(rng: np.random.Generator, layout: Layout, key: str) -> str:
    """Set `key` (added when absent) to a random, nudged or retyped value."""
    entry = layout.entry(key)
    if entry is None:
        entry = Entry(key, 4, 0)
        layout.entries.insert(int(rng.integers(len(layout.entries) + 1)), entry)
        how = random_value(rng) if rng.random() < 0.5 else random_int(rng)
    else:
        kind = int(rng.integers(4))
        how = random_value(rng) if kind == 0 or entry.vtype == ARRAY else \
            retyped(rng, entry) if kind == 3 else nudged(rng, entry)
    entry.vtype, entry.value = how
    return f"{key} = {short(how)}"


def set_entry(layout: Layout, key: str, vtype: int, value: Any) -> None:
    entry = layout.entry(key)
    if entry is None:
        layout.entries.append(entry := Entry(key, vtype, value))
    entry.vtype, entry.value = vtype, value


def short(value: Any) -> str:
    return repr(value)[:80]


def mutate_hyper_parameter(rng: np.random.Generator, layout: Layout) -> str:
    return set_value(rng, layout, f"{layout.arch}.{pick(rng, HYPER_PARAMETERS)}")


def mutate_tokenizer_value(rng: np.random.Generator, layout: Layout) -> str:
    return set_value(rng, layout, pick(rng, TOKENIZER_KEYS))


def mutate_any_value(rng: np.random.Generator, layout: Layout) -> str:
    if not layout.entries:
        return mutate_hyper_parameter(rng, layout)
    return set_value(rng, layout, pick(rng, layout.entries).key)


def drop_key(rng: np.random.Generator, layout: Layout) -> str:
    if not layout.entries:
        return "no key to drop"
    entry = layout.entries.pop(int(rng.integers(len(layout.entries))))
    return f"drop {entry.key}"


def mutate_array(rng: np.random.Generator, layout: Layout) -> str:
    """Shorten, lengthen, empty or poke an array (the token list, types, scores, merges)."""
    arrays = [e for e in layout.entries if e.vtype == ARRAY]
    if not arrays:
        return "no array to change"
    entry = pick(rng, arrays)
    elem, items = entry.value
    items = list(items)
    kind = int(rng.integers(6))
    if kind == 0 or not items:
        items = items[:int(rng.integers(len(items) + 1))]
    elif kind == 1:
        del items[int(rng.integers(len(items)))]
    elif kind == 2:
        items.append(items[int(rng.integers(len(items)))])
    elif kind == 3:  # one element replaced by an odd one of its type
        at = int(rng.integers(len(items)))
        items[at] = pick(rng, STRINGS) if elem == STRING else pick(rng, FLOATS) if elem in (F32, F64) else \
            clip(elem, pick(rng, INTS)) if elem in INT_TYPES else items[at]
    elif kind == 4:  # another element type
        entry.value = random_array(rng, int(rng.integers(4))) if rng.random() < 0.5 else (
            (F32, [float(len(str(x))) for x in items]) if elem == STRING else (STRING, [str(x) for x in items]))
        return f"{entry.key}: element type changed"
    else:
        items = []
    entry.value = (elem, items)
    how = ("cut", "one dropped", "one repeated", "one poked", "", "emptied")[kind if items or kind == 5 else 0]
    return f"{entry.key}: array of {len(items)} ({how})"


def rename_arch(rng: np.random.Generator, layout: Layout) -> str:
    """Another architecture, its keys renamed along (a llama's tensors under gemma3's name) or not."""
    old, new = layout.arch, pick(rng, ARCH_NAMES)
    entry = layout.entry("general.architecture")
    if entry is None:
        layout.entries.append(entry := Entry("general.architecture", STRING, ""))
    entry.vtype, entry.value = STRING, new
    if rng.random() < 0.7:
        for e in layout.entries:
            if e.key.startswith(old + "."):
                e.key = new + e.key[len(old):]
    return f"architecture {old} -> {new!r}"


def set_alignment(rng: np.random.Generator, layout: Layout) -> str:
    value = pick(rng, (0, 1, 3, 16, 32, 64, 4096, 2**31, 2**32 - 1))
    set_entry(layout, "general.alignment", 4, value)
    if value in (1, 16, 64) and rng.random() < 0.5:  # the writer follows it: a well-formed file
        layout.alignment = value
        relayout(layout, rng)
    return f"general.alignment = {value} (writer pads to {layout.alignment})"


# --- tensor info mutations ---------------------------------------------------------------------------------

DIMS = (0, 1, 2, 3, 31, 32, 33, 64, 255, 256, 264, 2**31, 2**32 + 1, 2**40, 2**63, 2**64 - 1)
# known, undecodable and unknown ids; 16, 20 and 39 (IQ2_XXS, IQ4_NL, MXFP4) were undecodable ones until they
# decoded, and their places now hold the undecodable Q8_1 (9) and Q8_K (15): the same number of choices, so a
# seed picks the same place it did (tests/test_gguf_fuzz.py pins seeds), and refusals stay common
TYPE_CHOICES = (0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 14, 15, 9, 15, 24, 27, 28, 30, 31, 36, 9, 40, 1000, 2**32 - 1)
# every known type, the undecodable ones (only Q8_1 and Q8_K since the IQ formats decode) four times over
ANY_TYPE = (*FORMATS, *(type_id for type_id, fmt in FORMATS.items() if not fmt.supported for _ in range(4)))


def mutate_shape(rng: np.random.Generator, info: Info) -> str:
    ne = info.ne = info.ne or [1]
    kind = int(rng.integers(6))
    at = int(rng.integers(len(ne)))
    if kind == 0:
        ne[at] = pick(rng, DIMS)
    elif kind == 1:
        ne[at] = max(0, ne[at] + pick(rng, (-1, 1, -32, 32, ne[at], -ne[at] // 2)))
    elif kind == 2 and len(ne) > 1:
        ne.reverse()
    elif kind == 3:
        ne.insert(int(rng.integers(len(ne) + 1)), pick(rng, (1, 1, 2, 4)))
    elif kind == 4 and len(ne) > 1:
        ne[0:2] = [ne[0] * ne[1]]
    else:
        info.ne = ne[:0] if rng.random() < 0.2 else ne + [1] * 4  # 0 or 5+ dimensions
    info.ne = [d % 2**64 for d in info.ne]
    return f"tensor {info.name} ne = {info.ne}"


def mutate_tensor(rng: np.random.Generator, layout: Layout) -> str:
    """Change one tensor info (shape, type, offset, name; drop or duplicate it), then often lay the data
    out again so that only the change itself is wrong."""
    infos = layout.infos
    if not infos:
        return "no tensor to change"
    at = int(rng.integers(len(infos)))
    info = infos[at]
    kind = int(rng.integers(9))
    if kind <= 2:
        note = mutate_shape(rng, info)
    elif kind <= 4:
        info.type_id = pick(rng, TYPE_CHOICES) if rng.random() < 0.5 else pick(rng, ANY_TYPE)
        note = f"tensor {info.name} type = {info.type_id}"
    elif kind == 5:
        info.offset = pick(rng, (0, info.offset + layout.alignment, max(0, info.offset - layout.alignment),
                                 info.offset + 1, sum(map(len, layout.data)), 2**63, 2**64 - 1,
                                 infos[at - 1].offset))
        return f"tensor {info.name} offset = {info.offset}"
    elif kind == 6:
        info.name = pick(rng, (infos[at - 1].name, "blk.99.attn_q.weight", "", "blk.0.ffn_gate_exps.weight",
                               "output.weight", "rope_freqs.weight", "blk.0.attn_q.bias", "x" * 70,
                               "blk.-1.attn_q.weight", "\udcff"))
        note = f"tensor {infos[at - 1].name if info.name == infos[at - 1].name else '?'} renamed {info.name!r}"
    elif kind == 7:
        del infos[at]
        note = f"tensor {info.name} dropped"
    else:
        infos.insert(at, copy.copy(info))
        note = f"tensor {info.name} duplicated"
    if rng.random() < 0.5:
        relayout(layout, rng)
        note += " (re-laid out)"
    return note


def scale_model(rng: np.random.Generator, layout: Layout) -> str:
    """Every width (embedding, FFN, heads' size, rope dimensions) times the same ratio, consistently: a
    smaller or larger model that must load and run (or be refused by its format's block size)."""
    ratio = pick(rng, (1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 3 / 2))
    widths = {1024, 512, 256, 128, 64, 48, 24}
    arch = layout.arch
    for suffix in ("embedding_length", "feed_forward_length", "attention.key_length", "attention.value_length",
                   "rope.dimension_count", "expert_feed_forward_length"):
        entry = layout.entry(f"{arch}.{suffix}")
        if entry is not None and entry.vtype in INT_TYPES:
            entry.value = clip(entry.vtype, int(entry.value * ratio))
    for info in layout.infos:
        info.ne = [int(d * ratio) if d in widths else d for d in info.ne]
    relayout(layout, rng)
    return f"widths x {ratio}"


def drop_layers(rng: np.random.Generator, layout: Layout) -> str:
    """block_count lowered (the extra layers' tensors dropped, or left over) or raised."""
    n = int(rng.integers(0, 4))
    set_entry(layout, f"{layout.arch}.block_count", 4, n)
    if rng.random() < 0.8:
        layout.infos = [i for i in layout.infos if not i.name.startswith("blk.") or int(i.name.split(".")[1]) < n]
        relayout(layout, rng)
    return f"block_count = {n}"


def shrink_vocab(rng: np.random.Generator, layout: Layout) -> str:
    """Fewer tokens: the token list (with its types) and, consistently or not, the embedding rows."""
    tokens = layout.entry("tokenizer.ggml.tokens")
    if tokens is None or tokens.vtype != ARRAY or tokens.value[0] != STRING:
        return "vocab: no token list to shrink"
    elem, items = tokens.value
    n_old = len(items)
    n = pick(rng, (1, 2, 3, 200, 258, n_old - 1, n_old + 1))
    tokens.value = (elem, (list(items) + ["<extra>"] * n)[:n])
    types = layout.entry("tokenizer.ggml.token_type")
    if types is not None and types.vtype == ARRAY and types.value[0] in INT_TYPES and rng.random() < 0.9:
        types.value = (types.value[0], (list(types.value[1]) + [1] * n)[:n])
    if rng.random() < 0.7:
        for info in layout.infos:
            if info.name in ("token_embd.weight", "output.weight"):
                info.ne = [n if d == n_old else d for d in info.ne]
        relayout(layout, rng)
    return f"vocab {n_old} -> {n} tokens"


# --- header and byte mutations (on the encoded file) -------------------------------------------------------

EXTREMES = [0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**63, 2**64 - 1]


def mutate_bytes(data: bytearray, rng: np.random.Generator, hot_end: int) -> tuple[bytearray, int]:
    """Flip bits or write extreme integers, mostly in the first `hot_end` bytes; pick a length to read."""
    kind = rng.integers(4)
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(hot_end if rng.random() < 0.9 else len(data)))
        if kind == 0:
            data[at] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            data[at] = int(rng.integers(256))
        else:
            value = EXTREMES[int(rng.integers(len(EXTREMES)))]
            packed = struct.pack("<Q", value) if rng.random() < 0.5 else struct.pack("<I", value & 0xFFFFFFFF)
            data[at:at + len(packed)] = packed
    length = len(data) if kind != 3 else int(rng.integers(1, len(data)))
    return data, length


def mutate_header(data: bytearray, rng: np.random.Generator) -> str:
    """The magic, the version, or one of the two counts."""
    kind = int(rng.integers(4))
    if kind == 0:
        data[0:4] = pick(rng, (b"GGUF"[::-1], b"GGML", b"\0\0\0\0", b"GGUG"))
        return f"magic {bytes(data[0:4])!r}"
    if kind == 1:
        version = pick(rng, (0, 1, 2, 4, 2**31, 2**32 - 1))
        data[4:8] = struct.pack("<I", version)
        return f"version {version}"
    at = 8 if kind == 2 else 16
    count = struct.unpack_from("<Q", data, at)[0]
    new = pick(rng, (0, count - 1, count + 1, count * 2, 2**32, 2**63, 2**64 - 1))
    data[at:at + 8] = struct.pack("<Q", new % 2**64)
    return f"{'tensor' if kind == 2 else 'metadata'} count {count} -> {new}"


# --- one case ----------------------------------------------------------------------------------------------

# (arch, weight type, write_model options): every architecture, float and quantized weights
BASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("llama", "Q8_0", {}),
    ("llama", "F16", {"tied": False, "rope_freqs": True}),
    ("llama", "F32", {"experts": True, "n_layer": 1}),
    ("qwen2", "Q4_0", {}),
    ("qwen3", "BF16", {"n_layer": 1}),
    ("qwen3moe", "Q8_0", {}),
    ("phi3", "F16", {}),
    ("gemma2", "Q4_K", {}),
    ("gemma3", "F32", {"n_layer": 2}),
)
LAYOUT_MUTATIONS = (  # (weight, mutation)
    (8, mutate_hyper_parameter), (2, mutate_tokenizer_value), (2, mutate_any_value), (1, drop_key),
    (2, mutate_array), (1, rename_arch), (1, set_alignment), (6, mutate_tensor), (1, scale_model),
    (1, drop_layers), (1, shrink_vocab),
)


def write_bases(directory: Path) -> list[Path]:
    """The clean base models, written into `directory` (tests/synth.py, seeded: the same bytes every run)."""
    paths = []
    for i, (arch, weight_type, options) in enumerate(BASES):
        paths.append(directory / f"base-{i}-{arch}-{weight_type}.gguf")
        write_model(paths[-1], arch, weight_type, seed=i, **options)
    return paths


@dataclass
class Case:
    parts: list[bytes]  # the file's bytes
    length: int  # how many of them the reader sees (a truncation reads fewer)
    n_ctx: int | None  # the context asked for (None: the model's own, up to 4096)
    notes: list[str]  # what was done to the base


def make_case(seed: int, bases: list[Layout]) -> Case:
    rng = np.random.default_rng(seed)
    layout = bases[seed % len(bases)].copy()
    notes = [f"base {seed % len(bases)} {BASES[seed % len(bases)][:2]}"]
    weights = np.array([w for w, _ in LAYOUT_MUTATIONS], dtype=float)
    n_mutations = pick(rng, (0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3))
    for _ in range(n_mutations):
        mutation = LAYOUT_MUTATIONS[int(rng.choice(len(weights), p=weights / weights.sum()))][1]
        notes.append(mutation(rng, layout))
    parts = layout.encode()
    length = sum(map(len, parts))
    if n_mutations == 0 or rng.random() < 0.05:
        head = bytearray(parts[0])
        if rng.random() < 0.4:
            notes.append(mutate_header(head, rng))
            parts[0] = bytes(head)
        else:
            data, length = mutate_bytes(bytearray(b"".join(parts)), rng, len(head))
            parts = [bytes(data)]
            notes.append(f"bytes changed, {length} of {len(data)} read")
    return Case(parts, length, pick(rng, (None, 8)), notes)


def exercise(path: Path, length: int, n_ctx: int | None) -> str:
    """Open, load and run a file; "ok" or the class name of the `LlamapyzError` it ended in."""
    try:
        with load_gguf((path, 0, length)) as g:
            for t in g.tensors.values():
                assert t.raw.nbytes == t.n_bytes, t.name
                int(t.raw[-1, -1])  # the last byte of every view is readable
            run_model(Model(g, n_ctx=n_ctx, n_threads=1))
        return "ok"
    except LlamapyzError as exc:
        return type(exc).__name__


def run_model(model: Model) -> None:
    """A few tokens of prefill, one decode step, the sampled token's text; the logits checked as the server's
    warm-up checks them (NaN or inf: `NonFiniteError`, counted apart from "ok")."""
    ids = model.tokenize(PROMPT)[:max(1, min(4, model.n_ctx - 1))] or [0]
    logits = model.prefill(ids)
    assert logits.shape == (model.n_vocab,)
    require_finite(logits)
    token = int(np.argmax(logits))
    if len(ids) < model.n_ctx:
        require_finite(model.decode(token))
    model.detokenize([token])


def describe(seed: int, bases: list[Layout]) -> list[str]:
    """What case `seed` does, or why it cannot be made (a bug of this test's own)."""
    try:
        return make_case(seed, bases).notes
    except Exception as exc:  # noqa: BLE001
        return [f"(making the case failed: {exc!r})"]


def run_case(seed: int, bases: list[Layout], directory: Path) -> str:
    case = make_case(seed, bases)
    path = directory / f"case-{seed}.gguf"
    with open(path, "wb") as f:
        f.writelines(case.parts)
    try:
        return exercise(path, case.length, case.n_ctx)
    finally:
        path.unlink()
