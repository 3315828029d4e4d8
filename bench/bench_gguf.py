"""GGUF open time and memory: how long opening each real model takes, and what it costs in RSS.

    python bench/bench_gguf.py [--model smollm2 --model gemma3-270m] [--repeat 5]

Opening maps the file and parses the header (metadata, token lists, tensor infos); tensor data is not
touched, so resident memory should grow by about the size of the parsed metadata, not the weights.
"""

from __future__ import annotations

import argparse
import resource
import time

from llamapyz.bundler.registry import REGISTRY, fetch_model
from llamapyz.gguf.reader import load_gguf
from llamapyz.tokenizer import Tokenizer


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def bench(name: str, repeat: int) -> None:
    path = fetch_model(name)
    size_mib = path.stat().st_size / 2**20
    before = rss_mib()
    open_s, tok_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gguf = load_gguf(path)
        t1 = time.perf_counter()
        Tokenizer.from_gguf(gguf)
        t2 = time.perf_counter()
        open_s.append(t1 - t0)
        tok_s.append(t2 - t1)
    after = rss_mib()
    print(f"{name:12s} {size_mib:6.1f} MiB file, {len(gguf.tensors)} tensors | open best {min(open_s) * 1e3:6.1f} ms "
          f"(first {open_s[0] * 1e3:6.1f}) | tokenizer best {min(tok_s) * 1e3:6.1f} ms (first {tok_s[0] * 1e3:6.1f}) "
          f"| RSS +{after - before:5.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(REGISTRY))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name in args.model or ["smollm2", "gemma3-270m"]:
        bench(name, args.repeat)


if __name__ == "__main__":
    main()
