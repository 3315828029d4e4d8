"""Tokenizer speed: encode ~100 kB of mixed text with each real model's tokenizer.

    python bench/bench_tokenizer.py [--kb 100] [--model smollm2 --model gemma3-270m]

Prints build time, encode throughput (first call, and again with warm word caches) and decode time.
When llama-cpp-python is importable, the same text is tokenized by llama.cpp for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llamapyz.bundler.registry import REGISTRY, fetch_model
from llamapyz.tokenizer import Tokenizer

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "smollm2-q4_1.json"


def mixed_text(n_bytes: int) -> str:
    """English prose, code, numbers, CJK, emoji and markup, repeated with variation up to n_bytes."""
    samples = [case["text"] for case in json.loads(GOLDEN.read_text())["tokenize"]] if GOLDEN.exists() else []
    samples += [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "Prices rose 3.7% in 2024, from $1,299.99 to $1,348.05 per unit.",
        "東京は日本の首都です。人口は約1400万人。 Seoul은 한국의 수도입니다.",
        "<p class=\"note\">Emoji test: 🦙🔥👍🏽 and math ∑ x² ≤ ∞</p>",
    ]
    parts: list[str] = []
    size, i = 0, 0
    while size < n_bytes:
        piece = f"{samples[i % len(samples)]} [{i}]\n"
        parts.append(piece)
        size += len(piece.encode())
        i += 1
    return "".join(parts)


def bench(name: str, text: str) -> None:
    path = fetch_model(name)
    t0 = time.perf_counter()
    tok = Tokenizer.from_gguf(path)
    t1 = time.perf_counter()
    ids = tok.encode(text)
    t2 = time.perf_counter()
    tok.encode(text)
    t3 = time.perf_counter()
    tok.decode(ids)
    t4 = time.perf_counter()
    decoded = tok.decode(tok.encode(text, add_special=False, parse_special=False))
    kb = len(text.encode()) / 1000
    print(f"{name:12s} build {t1 - t0:6.3f} s | encode {kb:.0f} kB -> {len(ids)} tokens: first {t2 - t1:6.3f} s "
          f"({kb / (t2 - t1):7.0f} kB/s), warm {t3 - t2:6.3f} s | decode {t4 - t3:6.3f} s | "
          f"round trip {'ok' if decoded == text else 'DIFFERS'}")
    try:
        import llama_cpp  # type: ignore[import-not-found]
    except ImportError:
        return
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    t5 = time.perf_counter()
    ref = llm.tokenize(text.encode(), add_bos=True, special=True)
    t6 = time.perf_counter()
    print(f"{'':12s} llama.cpp encode {t6 - t5:6.3f} s, ratio ours/llama.cpp {(t2 - t1) / (t6 - t5):.1f}x, "
          f"same ids: {ref == ids}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=100, help="size of the text in kB")
    parser.add_argument("--model", action="append", choices=sorted(REGISTRY), help="registry models to bench")
    args = parser.parse_args()
    text = mixed_text(args.kb * 1000)
    for name in args.model or ["smollm2", "gemma3-270m"]:
        bench(name, text)


if __name__ == "__main__":
    main()
