"""Precompiled kernels for the archive: numba's caches for each CPU target, built in the archive's own runtime.

A user's first run would otherwise spend ~10 s compiling. Here, for every target this machine can run
(`llamapyz.machine.cpu.runnable`: each tier with and without its extras), a child process imports the staged
`llamapyz/` on the archive's own site-packages, forced to that target, loads each model and runs the
server's warm-up, which compiles every kernel the models need with the argument types serving uses.
numba writes the results beside the staged sources (`llamapyz/kernels/__pycache__/`), keyed by target and
stamped by the kernels' source hash (`llamapyz/kernels/kernel_cache.py`); they ship in site-packages/ and load on
the user's machine as if compiled there. Targets this machine cannot run (other tiers, other
architectures) compile on the user's first run and are cached in the extracted runtime.

The children run one after another: numba's cache index for a function is one file shared by all targets,
rewritten whole on each save, so concurrent writers would lose entries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from llamapyz.errors import LlamapyzError
from llamapyz.machine import cpu

WARM_UP = """
import sys
from llamapyz import Model
from llamapyz.server import warm_up
for path in sys.argv[1:]:
    warm_up(Model.load(path, n_ctx=256, n_threads=1), say=print)
"""  # argv[1:]: GGUFs; prints what the server would say about compiling (tests/test_tiers.py reads it)


def choose_targets(spec: str) -> list[cpu.Target]:
    """`all` (every target this CPU runs), `none`, or a comma-separated list of target names."""
    here = cpu.detect()
    if spec == "all":
        return cpu.runnable(here)
    if spec == "none":
        return []
    return [cpu.choose(here, name.strip()) for name in spec.split(",") if name.strip()]


def stage_runtime(repo: Path, staging: Path) -> None:
    """A clean copy of `llamapyz/` (no bytecode, no developer caches, not this builder: an archive runs, it
    does not build) under `staging`, with the tokenizer's Unicode classes computed once here instead of on
    every start (`pretokenize.CLASSES_FILE`)."""
    from llamapyz.tokenizer.pretokenize import CLASSES_FILE, save_category_classes

    target = staging / "llamapyz"
    shutil.copytree(repo / "llamapyz", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "bundler",
                                                                           CLASSES_FILE.name))
    save_category_classes(target / "tokenizer" / CLASSES_FILE.name)


def precompile(staging: Path, site: Path, models: list[Path], targets: list[cpu.Target],
               say: Callable[[str], None]) -> None:
    """Compile the kernels `models` need for each target into `staging/llamapyz/kernels/__pycache__/`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NUMBA_", "LLAMAPYZ_", "PYTHON"))}
    env.update(PYTHONPATH=os.pathsep.join([str(staging), str(site)]), PYTHONDONTWRITEBYTECODE="1")  # -S: no site
    for n, target in enumerate(targets, 1):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-S", "-c", WARM_UP, *map(str, models)], capture_output=True, text=True,
                              env={**env, cpu.ENV_TIER: target.name}, cwd=staging)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LlamapyzError(f"compiling the kernels for {target.name} failed: {last}")
        say(f"  kernels for {target.name} ({n}/{len(targets)}) in {time.perf_counter() - started:.1f} s")
