"""The abuse probe's figures (issue 27), against `llamapyz serve` started here as a child process: what a
hostile or careless client costs the others.

    python bench/bench_abuse.py smollm2 -t 2                 # registry name or a GGUF path
    python bench/bench_abuse.py smollm2 --other gemma3-270m  # + the switch to a second model (--models-max 1)

- grammars: each of the probe's crash inputs (they killed the process before) -> status and seconds;
- slowloris: N sockets that send nothing or half a head -> how long until the server closes them, and
  /health's latency meanwhile;
- embeddings: a chat's first token alone, and behind 4 requests of 2,048 one-token inputs;
- big texts: a 15 MiB completion prompt -> status and seconds;
- with --other: a request for the second model while 6 clients keep the first busy -> seconds to its answer.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import cpu_model  # noqa: E402
from llamapyz.bundler.registry import resolve_model  # noqa: E402
from tests.live_server import ServerProcess  # noqa: E402
from tests.test_grammar_limits import gbnf_chain, lark_chain, nested_ref_chain, ref_chain  # noqa: E402

CHAT = "/v1/chat/completions"


def chat(content: str = "hi", **fields: object) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0, **fields}


GRAMMARS = {
    "$ref chain 1,000 deep": chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": ref_chain(1000)}}),
    "nested $ref chain 1,000": chat(json_schema=nested_ref_chain(1000)),
    "Lark chain of 4,000 rules": chat(grammar=lark_chain(4000)),
    "GBNF chain of 10,000 rules": chat(grammar=gbnf_chain(10_000)),
    'pattern "^a{100000}$"': chat(json_schema={"type": "string", "pattern": "^a{100000}$"}),
    "10,000 required properties": chat(json_schema={
        "type": "object", "required": [f"p{i}" for i in range(10_000)],
        "properties": {f"p{i}": {"type": "integer"} for i in range(10_000)}}),
}


def timed_post(url: str, path: str, body: dict, timeout: float = 600) -> tuple[int, float, dict]:
    started = time.perf_counter()
    response = httpx.post(url + path, json=body, timeout=timeout)
    return response.status_code, time.perf_counter() - started, response.json()


def first_token_s(url: str, body: dict) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", url + CHAT, json={**body, "stream": True}, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


def grammars(url: str) -> None:
    print("grammars (each crashed the server before):")
    for what, body in GRAMMARS.items():
        status, seconds, answer = timed_post(url, CHAT, body)
        message = (answer.get("error") or {}).get("message", "")
        print(f"  {what:<30} {status}  {seconds * 1e3:7.0f} ms  {message[:90]}")


def slowloris(url: str, port: int, n_sockets: int) -> None:
    sockets = []
    for i in range(n_sockets):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        if i % 2:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")  # half a head
        sockets.append(sock)
    opened = time.perf_counter()
    closed: list[float] = []

    def wait_closed(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        closed.append(time.perf_counter() - opened)

    threads = [threading.Thread(target=wait_closed, args=(s,), daemon=True) for s in sockets]
    for thread in threads:
        thread.start()
    health = []
    while len(closed) < n_sockets and time.perf_counter() - opened < 120:
        started = time.perf_counter()
        try:
            status = httpx.get(url + "/health", timeout=10).status_code
        except httpx.HTTPError:
            status = 0
        health.append((status, time.perf_counter() - started))
        time.sleep(0.5)
    for sock in sockets:
        sock.close()
    answered = [s for status, s in health if status == 200]
    print(f"slowloris: {n_sockets} stalled sockets closed by the server after {min(closed, default=0):.2f}-"
          f"{max(closed, default=0):.2f} s ({len(closed)} closed); /health meanwhile: {len(answered)}/{len(health)} "
          f"answered 200, {max(answered, default=0) * 1e3:.0f} ms at worst")


def embeddings(url: str) -> None:
    question = chat("Tell me about the sea.", max_tokens=4)
    alone = statistics.median(first_token_s(url, question) for _ in range(3))
    big = {"input": ["x"] * 2048}
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(timed_post, url, "/v1/embeddings", big) for _ in range(4)]
        time.sleep(1.0)  # the four hold the slots
        behind = first_token_s(url, question)
        done = [future.result() for future in pending]
    print(f"embeddings: a chat's first token {alone * 1e3:.0f} ms alone, {behind * 1e3:.0f} ms behind 4 requests of "
          f"2,048 one-token inputs (which took {max(d[1] for d in done):.0f} s, statuses {[d[0] for d in done]})")


def big_texts(url: str) -> None:
    status, seconds, _ = timed_post(url, "/v1/completions", {"prompt": "hello world " * (15 * 2**20 // 12),
                                                               "max_tokens": 4})
    print(f"a 15 MiB completion prompt: {status} in {seconds * 1e3:.0f} ms")


def switch(path: Path, other: Path, threads: int) -> None:
    with ServerProcess(path, "-m", str(other), "--models-max", "1", "-np", "2", "-t", str(threads), "-c", "2048",
                       "-n", "32") as server:
        stop = threading.Event()

        def keep_busy() -> None:
            while not stop.is_set():
                httpx.post(server.url + CHAT, json=chat("Tell me a story.", max_tokens=32, model=path.stem),
                           timeout=600)

        with ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(keep_busy)
            time.sleep(3)
            status, seconds, _ = timed_post(server.url, CHAT, chat("hi", model=other.stem))
            stop.set()
    print(f"switch: {other.stem} answered {status} after {seconds:.2f} s while 6 clients kept {path.stem} busy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name (smollm2, gemma3-270m) or GGUF path")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--sockets", type=int, default=300, help="slowloris sockets")
    parser.add_argument("--header-timeout-s", type=float, default=10)
    parser.add_argument("--other", help="a second model, for the switch figure")
    args = parser.parse_args()
    path = resolve_model(args.model)
    print(f"{cpu_model()}; {path.name}, {args.threads} threads")
    with ServerProcess(path, "-np", "4", "-t", str(args.threads), "-c", "2048",
                       "--header-timeout-s", str(args.header_timeout_s)) as server:
        grammars(server.url)
        big_texts(server.url)
        slowloris(server.url, server.port, args.sockets)
        embeddings(server.url)
        alive = server.process.poll() is None
    print(f"the server {'is still up' if alive else 'DIED'}; its log has {server.output.count('Traceback')} "
          f"tracebacks, its longest line {max(map(len, server.output.splitlines()), default=0)} characters")
    if args.other:
        switch(path, resolve_model(args.other), args.threads)


if __name__ == "__main__":
    main()
