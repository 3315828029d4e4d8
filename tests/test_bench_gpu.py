"""bench/bench_gpu.py end to end under numba's CUDA simulator (CI has no GPU): every configuration runs, the
logit check passes, and the JSON carries what the table prints. Its speeds mean nothing there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synth import write_model

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_gpu.py"


def run_bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench_gpu") / "llama-small.gguf"
    write_model(path, "llama", "Q8_0", small=True, n_layer=2)
    return path


@pytest.mark.slow  # ~40 s: each simulated call takes seconds
def test_simulator_run_checks_logits_and_reports_every_configuration(small_model):
    done = run_bench(str(small_model), "--simulator", "--quick", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and summary["simulator"] and not summary["failed"] and not summary["checks_failed"]
    assert summary["thresholds"] == {"max_rel_diff": 0.06, "min_top1_agreement": 0.9}
    configs = summary["configurations"]
    assert [(c["ngl"], c["layers"], c["head"]) for c in configs] == [(0, 0, False), (1, 1, False), (-1, 2, True)]
    for config in configs[1:]:
        assert config["check"]["ok"] and config["summary"].startswith(f"offloaded {config['layers']}/2 layers")
        assert config["decode_ratio"] > 0
    assert all(c["decode_tps"] > 0 and c["prefill_tps"] > 0 and c["ttft_ms"] > 0 for c in configs)
    assert summary["target"]["measured"] == configs[-1]["decode_ratio"]


def test_no_gpu_is_one_line_and_exit_status_2(small_model):
    done = run_bench(str(small_model), NUMBA_DISABLE_CUDA="1")
    assert done.returncode == 2
    assert done.stderr.strip() == ("no usable GPU: no NVIDIA GPU or driver found (--simulator runs numba's CUDA "
                                   "simulator instead)")
