"""Server throughput: aggregate decode tokens/s with 1, 2, 4 and 8 concurrent streaming clients, and the
time to first token, against `llamapyz serve` started here as a child process.

    python bench/bench_server.py smollm2 -t 2 -np 4        # registry name or a GGUF path
    python bench/bench_server.py smollm2 -t 2 -np 4 --mixed   # prompts arriving while others generate

Each client asks a different question at temperature 0 with max_tokens fixed and end-of-generation
ignored (logit_bias), so every round generates exactly clients x max_tokens tokens. With --mixed, 4 and then
8 clients each send MIXED_REQUESTS requests one after another, starting STAGGER_S apart, each with a long
prompt (a few hundred tokens): so prompts are being evaluated while other requests generate, the load an
engine turn that runs prefill and decode separately pays twice for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import cpu_model  # noqa: E402
from llamapyz.bundler.registry import resolve_model  # noqa: E402
from tests.live_server import ServerProcess  # noqa: E402

MIXED_REQUESTS = 3
STAGGER_S = 0.4
LONG_CONTEXT = ("The history of the lighthouse keeper's log begins with the winter storms, the supply boats that "
                "did not come, the lamp that had to be trimmed every four hours, and the letters he wrote home. ") * 6
QUESTIONS = ["Tell me about the sea.", "Describe a forest.", "Explain how rain forms.", "Write about a city.",
             "Tell me about mountains.", "Describe a desert.", "Explain how bees live.", "Write about the moon."]


def one_stream(url: str, question: str, max_tokens: int, eog: list[int]) -> tuple[float, float, int]:
    """(seconds to first token, seconds in all, tokens) for one streamed chat completion."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "logit_bias": {str(t): -100 for t in eog}}
    started = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("timings"):
                tokens = chunk["timings"]["predicted_n"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started, tokens


def mixed(url: str, clients: int, max_tokens: int, eog: list[int]) -> tuple[float, float]:
    """(aggregate generated tok/s, median seconds to first token) of `clients` clients, each sending
    MIXED_REQUESTS long-prompt requests in turn, starting STAGGER_S apart."""
    def client(i: int) -> list[tuple[float, float, int]]:
        time.sleep(i * STAGGER_S)
        return [one_stream(url, f"{LONG_CONTEXT} Question {i}.{r}: {QUESTIONS[(i + r) % len(QUESTIONS)]}",
                           max_tokens, eog) for r in range(MIXED_REQUESTS)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    elapsed = time.perf_counter() - started
    return sum(r[2] for r in results) / elapsed, statistics.median(r[0] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name (smollm2, gemma3-270m) or GGUF path")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-np", "--parallel", type=int, default=4)
    parser.add_argument("-n", "--max-tokens", type=int, default=64)
    parser.add_argument("--mixed", action="store_true", help="prompts arriving during generation (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="with --mixed: rounds, the median reported")
    args = parser.parse_args()
    path = resolve_model(args.model)
    with ServerProcess(path, "-np", str(args.parallel), "-t", str(args.threads), "-c", "2048") as server:
        eog = [int(t) for t in httpx.get(server.url + "/props").json().get("eog_ids", [])]
        one_stream(server.url, "warm up", 4, eog)
        print(f"{cpu_model()}; model {path.name}  threads {args.threads}  slots {args.parallel}  "
              f"max_tokens {args.max_tokens}")
        if args.mixed:
            for clients in (4, 8):
                runs = [mixed(server.url, clients, args.max_tokens, eog) for _ in range(args.rounds)]
                rates = ", ".join(f"{r[0]:.1f}" for r in runs)
                print(f"mixed load, {clients} clients: {statistics.median(r[0] for r in runs):.1f} tok/s aggregate "
                      f"(rounds: {rates}), first token {statistics.median(r[1] for r in runs):.2f} s median")
            return
        print(f"{'clients':>8} {'aggregate tok/s':>16} {'per stream tok/s':>17} {'first token (s, median)':>24}")
        baseline = None
        for clients in (1, 2, 4, 8):
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(lambda q: one_stream(server.url, q, args.max_tokens, eog),
                                        QUESTIONS[:clients]))
            elapsed = time.perf_counter() - started
            tokens = sum(r[2] for r in results)
            aggregate = tokens / elapsed
            baseline = baseline or aggregate
            per_stream = statistics.mean(r[2] / (r[1] - r[0]) for r in results if r[1] > r[0])
            first_token = statistics.median(r[0] for r in results)
            print(f"{clients:>8} {aggregate:>16.1f} {per_stream:>17.1f} {first_token:>24.2f}   "
                  f"({aggregate / baseline:.2f}x)")
        print(f"server RSS {server.rss_mib():.0f} MiB, peak {server.rss_mib('VmHWM'):.0f} MiB")


if __name__ == "__main__":
    main()
