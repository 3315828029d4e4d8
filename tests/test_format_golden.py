"""The newer formats (IQ4_NL, IQ4_XS, MXFP4, the other IQs, TQ1_0, TQ2_0) against llama.cpp, end to end, on tiny
random llamas.

llama.cpp's logits for each format's tiny llama (tests/synth.py `write_model`, random blocks of the format in
every matrix) are committed in tests/data/formats/ (made by bench/format_golden.py with llama-cpp-python
0.3.36). Both sides quantize the activations as llama.cpp pairs them with the format (q8_0 for IQ4_NL and
MXFP4, q8_K for the others), so the logits differ by float order only (and the f16 KV cache's
rounding, and int8 roundings that flip after it): on each listed logit within 3% of the logits' spread
(measured: at most 1.9% for these formats, 0.55-0.9% for Q4_0, Q4_K and Q8_0), and the same argmax wherever
llama.cpp's top-1 margin is at least 2% of the spread (measured: every such position).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llamapyz import Model
from llamapyz.bundler.registry import sha256_file
from tests.synth import write_model

DATA = Path(__file__).resolve().parent / "data" / "formats"
FORMATS = sorted(path.stem.removeprefix("llama-") for path in DATA.glob("llama-*.json"))
GAP, SURE_MARGIN = 0.03, 0.02  # of the spread of llama.cpp's logits


@pytest.mark.parametrize("name", FORMATS)
def test_a_tiny_llama_agrees_with_llama_cpp(tmp_path, name):
    expected = json.loads((DATA / f"llama-{name}.json").read_text())
    path = tmp_path / f"llama-{name}.gguf"
    write_model(path, "llama", name, tied=False)
    assert sha256_file(path) == expected["sha256"], (
        "not the file llama.cpp's logits were made on: tests/synth.py changed; regenerate with "
        "`python bench/format_golden.py`")
    logits = Model.load(path, n_ctx=64, n_threads=2).logits(expected["tokens"])
    spread, sure = expected["spread"], 0
    for row, top in zip(logits, expected["top"], strict=True):
        ids, values = np.array([i for i, _ in top]), np.array([v for _, v in top], np.float32)
        assert np.abs(row[ids] - values).max() <= GAP * spread
        if values[0] - values[1] >= SURE_MARGIN * spread:
            sure += 1
            assert row.argmax() == ids[0]
    assert sure >= len(logits) // 2
