"""Corrupt GGUF files must end in a llamapyz error or a correct load: never another exception, a signal or a hang.

The cases (tests/gguf_mutations.py: a tiny random model given one to three seeded mutations, then loaded and
run) go through a pool of worker processes (tests/gguf_fuzz_pool.py); a failure names its seed, which
`python -m tests.gguf_fuzz_pool SEED` reproduces. The default run: `CI_CASES` seeds; the slow one: `SLOW_CASES`
other seeds. Beside them: the harness's own test (sabotaged workers), the bugs the fuzz found (one test each)
and a header fuzz of the real model's file, in this process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from llamapyz import Model
from llamapyz.errors import LlamapyzError, UnsupportedModelError
from llamapyz.gguf.reader import load_gguf
from llamapyz.tokenizer import Tokenizer
from tests.gguf_fuzz_pool import SABOTAGE_ENV, FuzzReport, run_fuzz
from tests.gguf_mutations import exercise, make_case, mutate_bytes, set_entry, write_bases
from tests.synth import ARRAY, F64, Layout, read_layout, relayout

CI_CASES = 2400
SLOW_CASES = 12_000

ERROR_NAMES = ("GGUFError", "UnsupportedModelError", "TokenizerError", "UnsupportedQuantError")
# a model that loads but computes NaN or inf (its data section holds them: what the server's warm-up refuses)
NON_FINITE = "NonFiniteError"


def check_report(report: FuzzReport, n_cases: int) -> None:
    print(f"{report.n_cases} cases in {report.wall_s:.1f} s: {dict(report.outcomes.most_common())}")
    failures = "\n\n".join(f"seed {seed}: {text}" for seed, text in sorted(report.failures.items())[:5])
    assert not report.failures, (f"{len(report.failures)} fuzz cases failed (reproduce one with "
                                 f"`python -m tests.gguf_fuzz_pool SEED`):\n{failures}")
    assert report.n_cases == n_cases
    assert set(report.outcomes) <= {"ok", NON_FINITE, *ERROR_NAMES}, report.outcomes
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


@pytest.mark.parametrize(("seed", "outcome"), [(1001392, "GGUFError"), (1004092, "ok")])
def test_nan_activations_give_nan_not_an_exception(base_layouts, tmp_path, seed, outcome):
    # seed 1001392: gemma2 (Q4_K) read with general.alignment 1, its tensors shifted by the writer's padding:
    # NaN weights, loaded (nothing to refuse); the forward pass's kernels (fastmath "nnan", numba's error
    # model "python") raised ZeroDivisionError until ops.py and layer.py took error_model "numpy". Since issue
    # 27 a NaN in a norm is refused at load (GGUFError naming it), and NaN logits are a NonFiniteError (what
    # the server's warm-up says) rather than "ok"; the kernels' NaN path is also run by test_corrupt_weights.py
    case = make_case(seed, base_layouts)
    path = tmp_path / "case.gguf"
    with open(path, "wb") as f:
        f.writelines(case.parts)
    assert exercise(path, case.length, case.n_ctx) == outcome


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

