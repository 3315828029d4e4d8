"""Every CUDA kernel compiles to PTX for sm_80 and sm_90 (tests/gpu_ptx.py, in a process of its own, without
the simulator): what the simulator cannot check, since it runs kernels as Python. Needs NVIDIA's compiler
libraries (nvidia-nvvm, nvidia-cuda-nvrtc: the test extra), not a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_kernel_compiles_for_real_gpus():
    done = subprocess.run([sys.executable, str(REPO / "tests" / "gpu_ptx.py")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [line.split(":")[0] for line in done.stdout.splitlines()]
    assert "sm_90 product" in compiled and "sm_80 attention" in compiled, done.stdout
