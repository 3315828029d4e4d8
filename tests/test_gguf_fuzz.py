"""Corrupt GGUF files must end in a llamapyz error or a correct load: never another exception, a signal or a hang.

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

The case then opens the file, reads every tensor view's last byte, loads the `Model` (tokenizer, config,
weights) and, when it loads, runs a short prefill and one decode step. The outcome is "ok" or the class name
of a `LlamapyzError`; anything else (another exception, a signal, a case over its time limit) is a failure
naming the seed. Cases run in a few worker processes (`python -m tests.test_gguf_fuzz FIRST STOP [STEP]`,
which also reproduces a seed) under a per-case watchdog (`faulthandler.dump_traceback_later`); the parent
restarts a worker that died or hung after the seed that killed it. LLAMAPYZ_FUZZ_BOUNDSCHECK=1 runs the
kernels with numba's bounds checks, so that an out-of-bounds read on a file that passed validation fails too.

The default run: `CI_CASES` seeds; the slow one: `SLOW_CASES` other seeds.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import Model
from runtime.errors import LlamapyzError, UnsupportedModelError
from runtime.gguf import load_gguf
from runtime.quants import FORMATS
from runtime.tokenizer import Tokenizer
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
    read_layout,
    relayout,
    write_model,
)

REPO = Path(__file__).resolve().parents[1]
CI_CASES = 2400
SLOW_CASES = 12_000
CASE_TIMEOUT_S = 60.0  # per case, in the worker (a kernel the warm-up did not need may compile inside one)
STARTUP_TIMEOUT_S = 300.0  # a worker's imports, base models and warm-up (first kernel compilation)
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
TYPE_CHOICES = (0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 14, 15, 16, 20, 24, 27, 28, 30, 31, 36, 39, 40, 1000, 2**32 - 1)


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
        info.type_id = pick(rng, TYPE_CHOICES) if rng.random() < 0.5 else pick(rng, tuple(FORMATS))
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
    """A few tokens of prefill, one decode step, the sampled token's text."""
    ids = model.tokenize(PROMPT)[:max(1, min(4, model.n_ctx - 1))] or [0]
    logits = model.prefill(ids)
    assert logits.shape == (model.n_vocab,)
    token = int(np.argmax(logits))
    if len(ids) < model.n_ctx:
        model.decode(token)
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


# --- the worker process ------------------------------------------------------------------------------------

# "crash:SEED,hang:SEED,wedge:SEED,raise:SEED": a dry run (no files, every other seed "dry") that proves the harness
# catches each of these
SABOTAGE_ENV = "LLAMAPYZ_FUZZ_SABOTAGE"


def sabotage(seed: int) -> str:
    for item in filter(None, os.environ.get(SABOTAGE_ENV, "").split(",")):
        kind, at = item.split(":")
        if int(at) == seed:
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if kind in ("hang", "wedge"):  # wedged: past the worker's own watchdog, for the parent's
                if kind == "wedge":
                    faulthandler.cancel_dump_traceback_later()
                time.sleep(3600)
            if kind == "raise":
                raise IndexError("sabotage")
    return "dry"


def prepare(directory: Path) -> list[Layout]:
    """The base layouts, after a warm-up: each clean base loads and runs (its kernels compiled or loaded
    now, outside any case's time limit)."""
    paths = write_bases(directory)
    for path in paths:
        outcome = exercise(path, path.stat().st_size, 8)
        assert outcome == "ok", f"{path.name}: {outcome}"
    return [read_layout(path) for path in paths]


def worker(first: int, stop: int, step: int, timeout_s: float) -> None:
    """Run seeds first, first + step, ... < stop, one line per case on stdout:
    "start SEED", then "done SEED OUTCOME" or "bug SEED JSON" (the traceback and the mutations)."""
    faulthandler.enable()
    faulthandler.dump_traceback_later(STARTUP_TIMEOUT_S, exit=True)
    directory = Path(tempfile.mkdtemp(prefix="gguf-fuzz-"))
    dry = SABOTAGE_ENV in os.environ
    try:
        bases = [] if dry else prepare(directory)
        faulthandler.cancel_dump_traceback_later()
        print("ready", flush=True)
        for seed in range(first, stop, step):
            print(f"start {seed}", flush=True)
            faulthandler.dump_traceback_later(timeout_s, exit=True)
            try:
                outcome = sabotage(seed) if dry else run_case(seed, bases, directory)
                print(f"done {seed} {outcome}", flush=True)
            except Exception:  # noqa: BLE001 - the very thing the fuzzer looks for
                notes = [] if dry else describe(seed, bases)
                report = "\n".join(["mutations: " + "; ".join(notes), traceback.format_exc()])
                print(f"bug {seed} {json.dumps(report)}", flush=True)
            faulthandler.cancel_dump_traceback_later()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the parent: a pool of workers -------------------------------------------------------------------------


# set to 1: the kernels check every index (an out-of-bounds read is an IndexError, so a failure); they are
# compiled again for it, which takes minutes the first time
BOUNDSCHECK_ENV = "LLAMAPYZ_FUZZ_BOUNDSCHECK"


@dataclass
class FuzzReport:
    outcomes: Counter = field(default_factory=Counter)
    failures: dict[int, str] = field(default_factory=dict)  # seed -> what went wrong
    restarts: int = 0
    wall_s: float = 0.0

    @property
    def n_cases(self) -> int:
        return sum(self.outcomes.values())


class _Worker:
    """One worker process over the seeds first, first + step, ... < stop, restarted past a seed that kills it."""

    def __init__(self, first: int, stop: int, step: int, timeout_s: float, lines: queue.Queue) -> None:
        self.stop, self.step, self.timeout_s, self.lines = stop, step, timeout_s, lines
        self.proc: subprocess.Popen | None = None
        self.start(first)

    def start(self, first: int) -> None:
        self.current: int | None = None  # the seed started and not yet done
        self.next_seed = first
        self.ready = False
        self.last_seen = time.monotonic()
        self.stderr = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "1"}
        if os.environ.get(BOUNDSCHECK_ENV):  # kernels compiled apart, in a cache of their own
            env |= {"NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(Path(tempfile.gettempdir()) / "llamapyz-bc")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_gguf_fuzz", str(first), str(self.stop), str(self.step),
             str(self.timeout_s)], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.put((self, proc, line))
        self.lines.put((self, proc, None))

    @property
    def finished(self) -> bool:
        return self.proc is None

    def stuck(self, now: float) -> bool:
        limit = self.timeout_s + max(5.0, self.timeout_s) if self.ready else STARTUP_TIMEOUT_S + 30
        return not self.finished and now - self.last_seen > limit

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]


def run_fuzz(seeds: range, n_workers: int = 2, timeout_s: float = CASE_TIMEOUT_S) -> FuzzReport:
    """Run every seed in worker processes; a crash, hang or non-llamapyz exception is a failure of its seed."""
    started = time.perf_counter()
    report = FuzzReport()
    lines: queue.Queue = queue.Queue()
    step = seeds.step * n_workers
    workers = [_Worker(seeds.start + k * seeds.step, seeds.stop, step, timeout_s, lines)
               for k in range(min(n_workers, len(seeds)))]
    try:
        while not all(w.finished for w in workers):
            try:
                w, proc, line = lines.get(timeout=1.0)
            except queue.Empty:
                for w in workers:
                    if w.stuck(time.monotonic()):
                        w.proc.kill()  # its reader thread then reports the end of its output
                continue
            if proc is not w.proc:
                continue  # a line from an incarnation already replaced
            w.last_seen = time.monotonic()
            if line is None:
                _worker_ended(w, report)
            else:
                _worker_line(w, line, report)
    finally:  # an interrupted run leaves no worker behind
        for w in workers:
            if not w.finished:
                w.proc.kill()
                w.proc.wait()
    report.wall_s = time.perf_counter() - started
    return report


def _worker_line(w: _Worker, line: str, report: FuzzReport) -> None:
    kind, _, rest = line.rstrip("\n").partition(" ")
    if kind == "ready":
        w.ready = True
    elif kind == "start":
        w.current = int(rest)
    elif kind == "done":
        seed, outcome = rest.split(" ", 1)
        report.outcomes[outcome] += 1
        w.current, w.next_seed = None, int(seed) + w.step
    elif kind == "bug":
        seed, text = rest.split(" ", 1)
        report.outcomes["bug"] += 1
        report.failures[int(seed)] = json.loads(text)
        w.current, w.next_seed = None, int(seed) + w.step


def _worker_ended(w: _Worker, report: FuzzReport) -> None:
    rc = w.proc.wait()
    w.proc.stdout.close()
    stderr = w.stderr_tail()
    w.stderr.close()
    if w.current is None and w.next_seed >= w.stop and rc == 0:
        w.proc = None
        return
    if w.current is None:  # died before its first case, or between cases: nothing to blame, a harness bug
        raise RuntimeError(f"fuzz worker exited with {rc} outside a case:\n{stderr}")
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else \
        "timed out" if "Timeout (" in stderr else f"exited with {rc}"
    report.outcomes["crash"] += 1
    report.failures[w.current] = f"the worker {how}:\n{stderr}"
    if w.current + w.step >= w.stop:  # the fatal seed was its last one
        w.proc = None
        return
    report.restarts += 1
    w.start(w.current + w.step)


ERROR_NAMES = ("GGUFError", "UnsupportedModelError", "TokenizerError", "UnsupportedQuantError")


def check_report(report: FuzzReport, n_cases: int) -> None:
    print(f"{report.n_cases} cases in {report.wall_s:.1f} s: {dict(report.outcomes.most_common())}")
    failures = "\n\n".join(f"seed {seed}: {text}" for seed, text in sorted(report.failures.items())[:5])
    assert not report.failures, (f"{len(report.failures)} fuzz cases failed (reproduce one with "
                                 f"`python -m tests.test_gguf_fuzz SEED`):\n{failures}")
    assert report.n_cases == n_cases
    assert set(report.outcomes) <= {"ok", *ERROR_NAMES}, report.outcomes
    assert report.outcomes["ok"] > n_cases // 10  # many cases reach the forward pass …
    for error in ERROR_NAMES:
        assert report.outcomes[error] > n_cases // 200, error  # … and every kind of refusal is met


def n_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def test_fuzz():
    check_report(run_fuzz(range(CI_CASES), n_workers()), CI_CASES)


@pytest.mark.slow
def test_fuzz_many():
    check_report(run_fuzz(range(1_000_000, 1_000_000 + SLOW_CASES), n_workers()), SLOW_CASES)


def test_harness_reports_crashes_hangs_and_exceptions(monkeypatch):
    monkeypatch.setenv(SABOTAGE_ENV, "crash:3,hang:6,raise:8,wedge:9,crash:11")
    report = run_fuzz(range(12), n_workers=2, timeout_s=2.0)
    assert sorted(report.failures) == [3, 6, 8, 9, 11]
    assert "SIGSEGV" in report.failures[3] and "timed out" in report.failures[6]
    assert "IndexError: sabotage" in report.failures[8] and "SIGKILL" in report.failures[9]
    assert report.n_cases == 12 and report.restarts == 3  # every other seed still ran (11 was the last)
    assert report.outcomes["dry"] == 7


# --- what the fuzzer found, one case each: (base, key, new value as (type, value), error, message) -----------

REGRESSIONS = [  # the seed that found it in a comment
    (8, "general.architecture", (ARRAY, (8, [])), "UnsupportedModelError", "architecture"),  # 476: TypeError
    (4, "general.architecture", (ARRAY, (7, [False])), "UnsupportedModelError", "architecture"),  # 2128
    (4, "tokenizer.ggml.model", (ARRAY, (11, [32, 257])), "TokenizerError", "tokenizer.ggml.model"),  # 1498
    (6, "tokenizer.ggml.add_bos_token", (ARRAY, (1, [127, 3])), "TokenizerError", "add_bos_token"),  # 474
    (7, "tokenizer.ggml.add_bos_token", (ARRAY, (12, [])), "TokenizerError", "add_bos_token"),  # 1348
    (0, "tokenizer.ggml.add_eos_token", (ARRAY, (0, [])), "TokenizerError", "add_eos_token"),  # 2358
    (5, "tokenizer.ggml.add_space_prefix", (ARRAY, (6, [1.5])), "TokenizerError", "add_space_prefix"),  # 527
    (0, "tokenizer.ggml.merges", (ARRAY, (ARRAY, [(0, [1])])), "TokenizerError", "merges"),  # 2475: AttributeError
    (7, "gemma2.attention.sliding_window_pattern", (ARRAY, (ARRAY, [(2, [1, 0]), (12, [0.5])])),
     "UnsupportedModelError", "sliding_window_pattern"),  # 898 (nested arrays): ValueError
    (7, "gemma2.block_count", (4, 2**31 - 1), "UnsupportedModelError", "block_count"),  # 1003716: a hang
    # float64 values the float32 kernels would see as inf or 0 (loaded, then NaN logits: no exception to see)
    (7, "gemma2.final_logit_softcapping", (F64, 1e300), "UnsupportedModelError", "final_logit_softcapping"),
    (0, "llama.attention.layer_norm_rms_epsilon", (F64, 1e-320), "UnsupportedModelError", "rms_epsilon"),
]


@pytest.fixture(scope="module")
def base_layouts(tmp_path_factory: pytest.TempPathFactory) -> list[Layout]:
    return [read_layout(path) for path in write_bases(tmp_path_factory.mktemp("bases"))]


def load_error(layout: Layout, path: Path) -> LlamapyzError | None:
    with open(path, "wb") as f:
        f.writelines(layout.encode())
    try:
        with load_gguf(path) as g:
            Model(g, n_ctx=8, n_threads=1)
    except LlamapyzError as exc:
        return exc
    return None


@pytest.mark.parametrize(("base", "key", "value", "error", "match"), REGRESSIONS)
def test_odd_metadata_is_a_named_error(base_layouts, tmp_path, base, key, value, error, match):
    layout = base_layouts[base].copy()
    set_entry(layout, key, *value)
    exc = load_error(layout, tmp_path / "case.gguf")
    assert type(exc).__name__ == error and match in str(exc)


def test_embedding_rows_must_match_the_vocabulary(base_layouts, tmp_path):
    # seed 2688: 132 embedding rows for 264 tokens loaded, then a token id past the rows was a ValueError
    layout = base_layouts[0].copy()
    embd = next(i for i in layout.infos if i.name == "token_embd.weight")
    embd.ne[1] //= 2
    relayout(layout, np.random.default_rng(0))
    exc = load_error(layout, tmp_path / "case.gguf")
    assert isinstance(exc, UnsupportedModelError) and "token_embd.weight" in str(exc) and "264" in str(exc)


@pytest.mark.parametrize("seed", [1001392, 1004092])
def test_nan_activations_give_nan_not_an_exception(base_layouts, tmp_path, seed):
    # seed 1001392: gemma2 (Q4_K) read with general.alignment 1, its tensors shifted by the writer's padding:
    # NaN weights, loaded (nothing to refuse); the forward pass's kernels (fastmath "nnan", numba's error
    # model "python") raised ZeroDivisionError until ops.py and layer.py took error_model "numpy"
    case = make_case(seed, base_layouts)
    path = tmp_path / "case.gguf"
    with open(path, "wb") as f:
        f.writelines(case.parts)
    assert exercise(path, case.length, case.n_ctx) == "ok"


# --- the real model's header, in this process (slow) -------------------------------------------------------


def check(source: tuple[Path, int, int], build_tokenizer: bool) -> str:
    """Open a possibly corrupt file and use everything in it; return "ok" or the error's class name."""
    try:
        with load_gguf(source) as g:
            for t in g.tensors.values():
                assert t.raw.nbytes == t.n_bytes
                int(t.raw[-1, -1])  # the last byte of every view is readable
                if t.format.supported and t.n_bytes <= 1 << 16:
                    t.dequantize()
            if build_tokenizer:
                tok = Tokenizer.from_gguf(g)
                tok.decode(tok.encode("Hello <|im_start|> world 123 🦙"))
        return "ok"
    except LlamapyzError as exc:
        return type(exc).__name__


@pytest.mark.real_model
@pytest.mark.slow
def test_real_file_header_fuzz(smollm2_path, tmp_path):
    copy_path = tmp_path / "smollm2.gguf"
    shutil.copyfile(smollm2_path, copy_path)
    with load_gguf(copy_path) as g:
        header_end = g.data_offset
    size = copy_path.stat().st_size
    rng = np.random.default_rng(135)
    outcomes: dict[str, int] = {}
    with open(copy_path, "r+b") as f:
        original = bytearray(f.read(header_end))
        for i in range(150):
            data, length = mutate_bytes(bytearray(original), rng, header_end)
            f.seek(0)
            f.write(data[:header_end])
            f.flush()
            full_length = size if length == len(data) else length
            outcome = check((copy_path, 0, full_length), build_tokenizer=i % 3 == 0)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        f.seek(0)
        f.write(original)
    print(outcomes)
    assert sum(outcomes.values()) == 150
    assert outcomes.get("GGUFError", 0) > 20


if __name__ == "__main__":
    if len(sys.argv) == 2:  # reproduce one seed here, with its traceback
        seed = int(sys.argv[1])
        with tempfile.TemporaryDirectory() as d:
            bases = [read_layout(path) for path in write_bases(Path(d))]
            print("mutations:", "; ".join(make_case(seed, bases).notes), flush=True)
            print("outcome:", run_case(seed, bases, Path(d)))
    else:
        worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
               float(sys.argv[4]) if len(sys.argv) > 4 else CASE_TIMEOUT_S)
