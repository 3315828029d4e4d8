"""Start-up of a `.pyz` the way a colleague meets it: a Python without site-packages, an empty environment
(`env -i`), first with an empty user cache (extraction, bytecode, kernel compilation), then again.

    python bench/bench_startup.py smollm2.pyz [-t 2] [--runs 3] [--python PYTHON]

Prints the archive's size against its model's, time to `--version`, time from start to `/health` for the
first run and later runs, and the server's resident memory once ready and after one chat reply. With
`--python`, the archive runs under that interpreter (e.g. Debian's 3.13 from tests/portable_python.py, for a
multi-target archive) instead of a bare venv of this one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamapyz.archive.launcher import open_bundle  # noqa: E402
from tests.live_server import ServerProcess, bare_python, in_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="later runs to time (after the first)")
    parser.add_argument("--python", default=None, help="the interpreter to run the archive with")
    args = parser.parse_args()
    archive = args.archive.resolve()
    bundle = open_bundle(archive)
    size_mib, model_mib = archive.stat().st_size / 2**20, sum(m[0].size for m in bundle.stored().values()) / 2**20
    print(f"archive {archive.name}: {size_mib:.1f} MiB = weights {model_mib:.1f} MiB + "
          f"{size_mib - model_mib:.1f} MiB runtime and dependencies")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        launcher = in_env(bare_python(root), *([args.python] if args.python else []), str(archive))

        started = time.perf_counter()
        subprocess.run([*launcher, "--version"], check=True, capture_output=True)
        print(f"--version: {time.perf_counter() - started:.2f} s")

        later: list[float] = []
        for run in range(1 + args.runs):
            with ServerProcess(None, "-t", str(args.threads), launcher=launcher) as server:
                rss_ready = server.rss_mib()
                httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
                    "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32, "temperature": 0})
                rss_chat, peak = server.rss_mib(), server.rss_mib("VmHWM")
            label = "first run (empty cache)" if run == 0 else f"run {run + 1}"
            if run == 0:
                cache_mib = sum(p.stat().st_size for p in (root / "home").rglob("*") if p.is_file()) / 2**20
            else:
                later.append(server.ready_s)
            print(f"{label}: /health after {server.ready_s:.2f} s; RSS {rss_ready:.0f} MiB ready, "
                  f"{rss_chat:.0f} MiB after a reply (peak {peak:.0f} MiB)")
        print(f"user cache after the first run: {cache_mib:.0f} MiB (extracted Python side and compiled kernels)")
        if args.runs:
            print(f"later runs: median {statistics.median(later):.2f} s to /health")


if __name__ == "__main__":
    main()
