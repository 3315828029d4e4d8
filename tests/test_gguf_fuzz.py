"""Corrupt GGUF files must raise a llamapyz error: never another exception, a hang or a bad view.

Seeded byte flips, overwrites with extreme integers, and truncations, of a small synthetic file
(2,000 cases) and of the real SmolLM2 file's header (its tokenizer built from what survives too).
"""

from __future__ import annotations

import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import LlamapyzError
from runtime.gguf import load_gguf
from runtime.tokenizer import Tokenizer
from tests.synth import SMALL_TENSORS, write_gguf

EXTREMES = [0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**63, 2**64 - 1]
CASE_TIME_LIMIT_S = 5.0


def mutate(data: bytearray, rng: np.random.Generator, hot_end: int) -> tuple[bytearray, int]:
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


def test_synthetic_file_fuzz(tmp_path):
    clean = tmp_path / "clean.gguf"
    write_gguf(clean, SMALL_TENSORS)
    original = clean.read_bytes()
    with load_gguf(clean) as g:
        header_end = g.data_offset
    rng = np.random.default_rng(20261121)
    outcomes: dict[str, int] = {}
    case = tmp_path / "case.gguf"
    for _ in range(2000):
        data, length = mutate(bytearray(original), rng, header_end)
        case.write_bytes(bytes(data))
        started = time.perf_counter()
        outcome = check((case, 0, length), build_tokenizer=False)
        assert time.perf_counter() - started < CASE_TIME_LIMIT_S
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(outcomes)
    assert outcomes.get("GGUFError", 0) > 500  # most mutations break the file …
    assert outcomes.get("ok", 0) > 50  # … and some (a flipped tensor value, a changed string) do not


@pytest.mark.real_model
@pytest.mark.slow
def test_real_file_header_fuzz(smollm2_path, tmp_path):
    copy = tmp_path / "smollm2.gguf"
    shutil.copyfile(smollm2_path, copy)
    with load_gguf(copy) as g:
        header_end = g.data_offset
    size = copy.stat().st_size
    rng = np.random.default_rng(135)
    outcomes: dict[str, int] = {}
    with open(copy, "r+b") as f:
        original = bytearray(f.read(header_end))
        for i in range(150):
            data, length = mutate(bytearray(original), rng, header_end)
            f.seek(0)
            f.write(data[:header_end])
            f.flush()
            full_length = size if length == len(data) else length
            outcome = check((copy, 0, full_length), build_tokenizer=i % 3 == 0)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        f.seek(0)
        f.write(original)
    print(outcomes)
    assert sum(outcomes.values()) == 150
    assert outcomes.get("GGUFError", 0) > 20
