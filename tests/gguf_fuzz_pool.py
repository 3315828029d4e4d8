"""The GGUF fuzz's worker processes and the parent's pool of them: a crash, a hang or an exception other than
a llamapyz error is a failure of the seed it happened on, and the other seeds still run.

A worker (`python -m tests.gguf_fuzz_pool FIRST STOP STEP [TIMEOUT_S]`) runs the cases of tests/gguf_mutations.py
for seeds FIRST, FIRST + STEP, ... < STOP under a per-case watchdog (`faulthandler.dump_traceback_later`), one
line per case on stdout; `python -m tests.gguf_fuzz_pool SEED` reproduces one seed in this process, with its
traceback. The parent (`run_fuzz`) runs a few workers and restarts one that died or hung after the seed that
killed it. Two environment hooks: LLAMAPYZ_FUZZ_BOUNDSCHECK=1 runs the kernels with numba's bounds checks, so
that an out-of-bounds read on a file that passed validation fails too; LLAMAPYZ_FUZZ_SABOTAGE makes a dry run
whose workers crash, hang or raise on chosen seeds, to prove the parent catches each.
"""

from __future__ import annotations

import faulthandler
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.gguf_mutations import describe, exercise, make_case, run_case, write_bases
from tests.synth import Layout, read_layout

REPO = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 60.0  # per case, in the worker (a kernel the warm-up did not need may compile inside one)
STARTUP_TIMEOUT_S = 300.0  # a worker's imports, base models and warm-up (first kernel compilation)

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
            [sys.executable, "-m", "tests.gguf_fuzz_pool", str(first), str(self.stop), str(self.step),
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
