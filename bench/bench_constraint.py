"""What constrained decoding costs per token: llguidance's mask + applying it + advancing the matcher, for
1 and 4 streams (the engine samples the streams of one decode step one after another), against the same
sampling step without a constraint; and one whole constrained generation vs a free one on the real model.

    python bench/bench_constraint.py [--model smollm2|gemma3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import cpu_model  # noqa: E402
from llamapyz.bundler.registry import resolve_model  # noqa: E402
from llamapyz.decode.constraint import Grammar, llg_tokenizer  # noqa: E402
from llamapyz.decode.generation import Generation  # noqa: E402
from llamapyz.decode.sampling import SamplingParams  # noqa: E402
from llamapyz.machine import cpu  # noqa: E402
from llamapyz.model.model import Model  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["admin", "dev", "ops"]}},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"]}},
    "required": ["name", "age", "tags", "address"], "additionalProperties": False}
OUTPUT = json.dumps({"name": "Ada Lovelace", "age": 36, "tags": ["admin", "dev"],
                     "address": {"city": "London", "zip": "W1"}})


def sampling_ms(model: Model, n_streams: int, constrained: bool, rounds: int) -> float:
    """Median ms per token of n_streams Generation.step calls that follow OUTPUT's tokens (logits steered
    to the wanted token, so every stream walks the same valid path)."""
    tokenizer = model.tokenizer
    wanted = tokenizer.encode(OUTPUT, add_special=False, parse_special=False)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(model.n_vocab).astype(np.float32)
    times = []
    for _ in range(rounds):
        grammar = Grammar.json_schema(SCHEMA)
        streams = [Generation(tokenizer, [1], len(wanted) + 1, SamplingParams(temperature=0.0), 10**6,
                              constraint=grammar.constraint(tokenizer) if constrained else None)
                   for _ in range(n_streams)]
        started = time.perf_counter()
        for token in wanted:
            logits = base.copy()
            logits[token] = 100.0
            for generation in streams:
                assert generation.step(logits).token == token
        times.append((time.perf_counter() - started) / len(wanted) * 1e3)
    return statistics.median(times)


def generation_s(model: Model, constrained: bool) -> tuple[float, int]:
    tokens = model.chat_tokens([{"role": "user", "content": "A person as JSON with name, age, tags and address."}])
    grammar = Grammar.json_schema(SCHEMA)
    generation = Generation(model.tokenizer, tokens, 60, SamplingParams(temperature=0.0), model.n_ctx,
                            constraint=grammar.constraint(model.tokenizer) if constrained else None)
    logits = model.prefill(tokens)
    started, n = time.perf_counter(), 0
    while True:
        step = generation.step(logits)
        n += 1
        if step.finish_reason:
            return time.perf_counter() - started, n
        logits = model.decode(step.token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    path = resolve_model({"smollm2": "smollm2", "gemma3": "gemma3-270m"}[args.model])
    model = Model.load(path, n_ctx=1024)
    started = time.perf_counter()
    llg_tokenizer(model.tokenizer)
    print(f"cpu: {cpu_model()} ({cpu.active().name} tier); model: {path.name}, n_vocab {model.n_vocab}")
    print(f"llguidance tokenizer built once per model in {time.perf_counter() - started:.2f} s")
    for n_streams in (1, 4):
        free = sampling_ms(model, n_streams, False, args.rounds)
        constrained = sampling_ms(model, n_streams, True, args.rounds)
        print(f"{n_streams} stream(s): sampling step {free:.3f} ms free, {constrained:.3f} ms constrained per token "
              f"(all streams): +{constrained - free:.3f} ms, +{(constrained - free) / n_streams:.3f} ms per stream")
    for constrained in (False, True):
        seconds, n = generation_s(model, constrained)
        print(f"{'constrained' if constrained else 'free'} generation: {n} tokens, {n / seconds:.1f} tokens/s")


if __name__ == "__main__":
    main()
