"""Several models behind one server: what switching costs and what each loaded model holds.

    python bench/bench_models.py [smollm2 gemma3-270m] [-t 2] [--runs 3]
    python bench/bench_models.py --archive both.pyz [-t 2]

Starts `llamapyz serve` (or the archive) on the registry models given, first model loaded at start, and
prints, per model: the first request's time while the model is not loaded (its switch latency: load, warm-up,
prefill of a short prompt, 16 tokens) against the same request once loaded; the server's resident memory
(VmRSS) with one model loaded, then two. Then again with `--models-max 1`: the time of a request that makes
the other model unload and this one load, and RSS after each switch. Prints the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamapyz.bundler.registry import fetch_model  # noqa: E402
from tests.live_server import ServerProcess  # noqa: E402

REQUEST = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 16, "temperature": 0}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def timed_chat(server: ServerProcess, model: str) -> float:
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/chat/completions", json={**REQUEST, "model": model}, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started


def server_for(args: argparse.Namespace, config: Path, *extra: str) -> ServerProcess:
    common = ("-t", str(args.threads), "-np", "1", "-c", "2048", *extra)
    if args.archive:
        return ServerProcess(None, *common, launcher=[sys.executable, str(args.archive)])
    return ServerProcess(None, "--config", str(config), *common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["smollm2", "gemma3-270m"])
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="switches timed with --models-max 1")
    parser.add_argument("--archive", type=Path, default=None, help="serve this archive's models instead")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {args.threads} threads")

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "models.json"
        config.write_text(json.dumps({"models": [{"model": str(fetch_model(name)), "model_alias": name}
                                                 for name in args.models]}))
        names = args.models
        with server_for(args, config) as server:
            names = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
            print(f"start-up to /health (first model loaded): {server.ready_s:.1f} s; RSS {server.rss_mib():.0f} MiB")
            rss = [server.rss_mib()]
            for name in names:
                cold = timed_chat(server, name)
                warm = statistics.median(timed_chat(server, name) for _ in range(3))
                rss.append(server.rss_mib())
                print(f"{name}: first request {cold:.2f} s, loaded {warm:.2f} s (median of 3); "
                      f"RSS now {rss[-1]:.0f} MiB")
            print(f"RSS: one model loaded {rss[1]:.0f} MiB, two {rss[2]:.0f} MiB" if len(rss) > 2 else "")

        with server_for(args, config, "--models-max", "1") as server:
            switches: dict[str, list[float]] = {name: [] for name in names}
            after: dict[str, list[float]] = {name: [] for name in names}
            timed_chat(server, names[0])
            for _ in range(args.runs):
                for name in [*names[1:], names[0]]:
                    switches[name].append(timed_chat(server, name))
                    after[name].append(server.rss_mib())
            for name in names:
                print(f"--models-max 1, switching to {name}: {statistics.median(switches[name]):.2f} s "
                      f"(median of {args.runs}; the other unloaded); "
                      f"RSS after {statistics.median(after[name]):.0f} MiB")


if __name__ == "__main__":
    main()
