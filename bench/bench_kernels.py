"""Kernel speed, llm.c style: each format's matrix-vector kernel on the shapes a model multiplies, next to
the machine's memory bandwidth, and one decode step split into kernels and everything else.

    python bench/bench_kernels.py                                  # smollm2, one thread per physical core
    python bench/bench_kernels.py smollm2 -t 2 --formats Q4_1,Q8_0   # registry name or a GGUF path
    python bench/bench_kernels.py --no-model --json                # kernels only, one JSON object on stdout
    python bench/bench_kernels.py --cpu-tier x86-64-ssse3          # the kernels of another CPU tier

Measured:
- machine: CPU model, threads, kernel tier, L3 size, and read bandwidth: the best of 5 sums over a 512 MiB
  array (uint64 adds in a numba prange loop, which LLVM vectorizes, so memory is the limit), with the
  benchmark's threads and with one.
- kernels: per format (default: every format with an integer row kernel, `kernels.KERNELS`) and shape
  (n_rows x n_cols), a matrix of random blocks (random bytes, f16 scale fields
  set to finite values) through `QuantMatrix.matvec`, on x already quantized to int8 (the engine does that
  once per group of projections: it counts as glue below). Decode, 1 and 4 tokens (the server's batched
  decode): µs per call, weight GB/s (the matrix's bytes / time: above the machine's bandwidth when the
  matrix fits in cache) and GMAC/s. Prefill, 64 and 512 tokens: GMAC/s and tokens/s. Each figure is the
  median of 5 repeats (3 for calls over 0.25 s) after a warm-up call (which compiles or loads the kernel),
  a repeat being back-to-back calls for at least 20 ms. K-quants skip shapes whose rows are not whole
  256-blocks (SmolLM2's 576 columns).
- decode on a real model, after a 20-token and a 512-token prompt: ms/token (median of --steps steps), and
  each projection of one step (attn_q/k/v/output, ffn_gate/up/down of every layer, then output; experts
  not counted) timed alone on a 1-token input but called in the step's order, so each matrix meets the
  cache as it does in a real step. The engine launches q+k+v and gate+up as one kernel each (`MatrixGroup`),
  saving a launch per extra matrix, so the sum here is a little above its kernel time. Then kernels vs
  everything else (norms, rope, attention, quantizing x, Python), per kind of matrix, and cProfile's top
  functions by own time over the steps after the long prompt (numba kernels appear under their own names).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llamapyz  # noqa: E402,F401 - first: sets the thread-pool environment before numpy loads

# isort: split
import numpy as np  # noqa: E402

from bench import real_shapes  # noqa: E402
from llamapyz.bundler.registry import resolve_model  # noqa: E402
from llamapyz.gguf.quants import FORMATS_BY_NAME  # noqa: E402
from llamapyz.gguf.reader import Tensor  # noqa: E402

SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096))  # (n_rows, n_cols)
DECODE_TOKENS, PREFILL_TOKENS = (1, 4), (64, 512)
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
BANDWIDTH_BYTES = 512 * 2**20
SHORT_PROMPT, LONG_PROMPT = 20, 512
say: Callable[..., None] = functools.partial(print, flush=True)  # to stderr with --json


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def per_call_s(fn: Callable[[], Any], min_repeat_s: float = 0.02) -> float:
    """Median seconds per call of fn(): a warm-up call, then repeats of back-to-back calls."""
    fn()
    once = timed(fn)
    calls = max(1, int(min_repeat_s / max(once, 1e-7)))
    samples = [timed(lambda: [fn() for _ in range(calls)]) / calls for _ in range(5 if once < 0.25 else 3)]
    return statistics.median(samples)


# --- the machine -------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_size() -> str:
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                return (index / "size").read_text().strip()
        except OSError:
            pass
    return "?"


@functools.cache
def _sum_words() -> Callable:
    """A numba sum of uint64 words over all threads (compiled on first use, once the CPU target is set)."""
    from numba import njit, prange

    @njit(parallel=True)
    def sum_words(a):
        total = np.uint64(0)
        for i in prange(a.size):
            total += a[i]
        return total

    return sum_words


def read_bandwidth_gbs(threads: int) -> float:
    """Bytes summed per second over a 512 MiB array (resident before timing), best of 5."""
    from llamapyz.machine.threads import set_threads

    sum_words, words = _sum_words(), np.ones(BANDWIDTH_BYTES // 8, np.uint64)
    set_threads(threads)
    sum_words(words[:4096])  # compile
    return words.nbytes / min(timed(lambda: sum_words(words)) for _ in range(5)) / 1e9


# --- kernels on random matrices ----------------------------------------------------------------------------


def random_matrix(fmt_name: str, n_rows: int, n_cols: int, rng: np.random.Generator):
    """A QuantMatrix of random blocks; f16 scales (fields, or IQ1_M's nibbles) set to 0.01, as random bits may be
    NaN/inf, and E8M0 scales (MXFP4's `e`) to 2^-8, as random ones may overflow or be subnormal (slow on some
    CPUs)."""
    from llamapyz.kernels.linear import QuantMatrix

    fmt = FORMATS_BY_NAME[fmt_name]
    raw = rng.integers(0, 256, (n_rows, n_cols // fmt.block_size * fmt.type_size), dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)  # (n_rows, blocks_per_row)
    for field in fmt.block_dtype.names:
        if fmt.block_dtype[field].base == np.float16:
            blocks[field] = np.float16(0.01)
        elif field == "e":
            blocks[field] = 120
    if fmt_name == "IQ1_M":
        from tests.synth import set_iq1_m_scale

        set_iq1_m_scale(blocks.reshape(-1), np.full(blocks.size, 0.01, np.float16))
    return QuantMatrix(Tensor(f"{fmt_name}.{n_rows}x{n_cols}", (n_cols, n_rows), fmt, 0, raw.nbytes, raw))


def bench_shape(fmt_name: str, n_rows: int, n_cols: int, rng: np.random.Generator) -> dict:
    from llamapyz.kernels.linear import QuantizedRows

    m = random_matrix(fmt_name, n_rows, n_cols, rng)
    result: dict[str, Any] = dict(format=fmt_name, n_rows=n_rows, n_cols=n_cols, weight_bytes=m.raw.nbytes,
                                  integer_kernel=m.integer_kernel, tokens={})
    for n in DECODE_TOKENS + PREFILL_TOKENS:
        x = QuantizedRows(rng.standard_normal((n, n_cols), dtype=np.float32))
        s = per_call_s(functools.partial(m.matvec, x, np.empty((n, n_rows), np.float32)))
        result["tokens"][n] = dict(us=s * 1e6, weight_gbs=m.raw.nbytes / s / 1e9,
                                   gmacs=n * n_rows * n_cols / s / 1e9, tokens_per_s=n / s)
    return result


def bench_kernels(formats: list[str], bandwidth_gbs: float, rng: np.random.Generator) -> list[dict]:
    say(f"\nkernels: QuantMatrix.matvec on random matrices, x pre-quantized; weight GB/s vs the machine's "
        f"{bandwidth_gbs:.1f} GB/s")
    say(f"{'format':7s}{'n_rows x n_cols':>16s}{'MiB':>7s} |"
        + "".join(f"{f'decode {n}: µs':>14s}{'GB/s':>7s}{'GMAC/s':>7s} |" for n in DECODE_TOKENS)
        + "".join(f"{f'prefill {n}: GMAC/s':>20s}{'tok/s':>8s} |" for n in PREFILL_TOKENS))
    results = []
    for fmt_name in formats:
        block = FORMATS_BY_NAME[fmt_name].block_size
        for n_rows, n_cols in SHAPES:
            shape = f"{n_rows} x {n_cols}"
            if n_cols % block:
                say(f"{fmt_name:7s}{shape:>16s}   skipped: {n_cols} columns are not whole {block}-blocks")
                continue
            r = bench_shape(fmt_name, n_rows, n_cols, rng)
            t = r["tokens"]
            kernel = "" if r["integer_kernel"] else "  (no integer kernel: float matmul)"
            say(f"{fmt_name:7s}{shape:>16s}{r['weight_bytes'] / 2**20:7.2f} |"
                + "".join(f"{t[n]['us']:14.1f}{t[n]['weight_gbs']:7.1f}{t[n]['gmacs']:7.2f} |" for n in DECODE_TOKENS)
                + "".join(f"{t[n]['gmacs']:20.2f}{t[n]['tokens_per_s']:8.0f} |" for n in PREFILL_TOKENS) + kernel)
            results.append(r)
    return results


# --- a decode step on a real model -------------------------------------------------------------------------


def projections(model) -> list[tuple[str, Any]]:
    """(kind, QuantMatrix) of every matrix one decode step multiplies, in the order it does (experts not)."""
    found = [(kind, getattr(layer, kind, None)) for layer in model.weights.layers for kind in KINDS]
    return [(kind, m) for kind, m in [*found, ("output", model.weights.output)] if m is not None]


def sweep_s(matrices: list[tuple[str, Any]], rng: np.random.Generator, repeats: int = 20) -> np.ndarray:
    """Seconds of each matrix's 1-token matvec, called in step order: the median over `repeats` sweeps."""
    from llamapyz.kernels.linear import QuantizedRows

    inputs = [(QuantizedRows(rng.standard_normal((1, m.n_cols), dtype=np.float32)),
               np.empty((1, m.n_rows), np.float32)) for _, m in matrices]
    samples = np.empty((repeats + 1, len(matrices)))
    for r in range(repeats + 1):  # sweep 0 warms up (compiles, quantizes x)
        for i, ((_, m), (x, out)) in enumerate(zip(matrices, inputs, strict=True)):
            samples[r, i] = timed(lambda m=m, x=x, out=out: m.matvec(x, out))
    return np.median(samples[1:], axis=0)


def decode_steps_s(model, token: int, steps: int) -> list[float]:
    """Seconds of each of `steps` greedy decode steps from the model's context."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        logits = model.decode(token)
        times.append(time.perf_counter() - t)
        token = int(np.argmax(logits))
    return times


def bench_model(path: Path, threads: int, steps: int, rng: np.random.Generator) -> dict:
    from llamapyz import Model

    model = Model.load(path, n_ctx=2048, n_threads=threads)
    prompt = model.tokenize(Path(__file__).read_text() * 20)[:LONG_PROMPT]
    model.prefill(prompt[:8])
    model.decode(5)  # compile (or load the cached kernels) before timing
    matrices = projections(model)
    kernel_s = sweep_s(matrices, rng)
    kernels_ms = float(kernel_s.sum()) * 1e3
    say(f"\ndecode step: {path.name}, {model.config.n_layer} layers, threads {threads}, "
        f"{len(matrices)} matrices of {sum(m.raw.nbytes for _, m in matrices) / 2**20:.1f} MiB per step")
    result: dict[str, Any] = dict(model=path.name, kernels_ms=kernels_ms, steps={})
    for n_prompt in (SHORT_PROMPT, LONG_PROMPT):
        token = int(np.argmax(model.prefill(prompt[:n_prompt])))
        step_ms = statistics.median(decode_steps_s(model, token, steps)) * 1e3
        other_ms = step_ms - kernels_ms
        result["steps"][n_prompt] = dict(step_ms=step_ms, tokens_per_s=1e3 / step_ms, other_ms=other_ms)
        say(f"after {n_prompt:3d} tokens: {step_ms:6.2f} ms/token ({1e3 / step_ms:5.1f} tok/s): "
            f"kernels {kernels_ms:.2f} ms ({kernels_ms / step_ms:.1%}), "
            f"everything else {other_ms:.2f} ms ({other_ms / step_ms:.1%})")
        if other_ms < 0:
            say("  (the kernels alone take longer than the whole step: other processes are using the cores)")
    step_ms = result["steps"][SHORT_PROMPT]["step_ms"]
    say(f"\n{'matrix':12s}{'n_rows x n_cols':>16s}{'format':>8s}{'count':>6s}{'µs each':>9s}{'ms/step':>9s}"
        f"{f'% of {step_ms:.1f} ms':>14s}{'GB/s':>7s}")
    kinds = result["kinds"] = {}
    for kind in dict.fromkeys(k for k, _ in matrices):
        picked = [(m, s) for (k, m), s in zip(matrices, kernel_s, strict=True) if k == kind]
        total_s, first = sum(s for _, s in picked), picked[0][0]
        gbs = sum(m.raw.nbytes for m, _ in picked) / total_s / 1e9
        kinds[kind] = dict(n_rows=first.n_rows, n_cols=first.n_cols, format=first.format.name, count=len(picked),
                           ms=total_s * 1e3, weight_gbs=gbs)
        say(f"{kind:12s}{f'{first.n_rows} x {first.n_cols}':>16s}{first.format.name:>8s}{len(picked):6d}"
            f"{total_s / len(picked) * 1e6:9.1f}{total_s * 1e3:9.2f}{total_s * 1e3 / step_ms:14.1%}{gbs:7.1f}")
    result["profile"] = profile_top(model, prompt, steps)
    return result


def profile_top(model, prompt: list[int], steps: int, top: int = 10) -> list[dict]:
    """cProfile's functions by own time over `steps` decode steps after the long prompt."""
    token = int(np.argmax(model.prefill(prompt[:LONG_PROMPT])))
    profiler = cProfile.Profile()
    profiler.runcall(decode_steps_s, model, token, steps)
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, prim calls, own s, cumulative s, ...)}
    rows = sorted(stats.items(), key=lambda item: -item[1][2])[:top]
    say(f"\ncProfile, {steps} steps after {LONG_PROMPT} tokens, by own time (profiled: slower than above)")
    out = []
    for (file, line, name), (calls, _, own_s, _, _) in rows:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        out.append(dict(function=name, where=where, calls=calls, own_ms_per_step=own_s * 1e3 / steps))
        say(f"{own_s * 1e3 / steps:8.3f} ms/step {calls // steps:6d} calls/step  {name} ({where})")
    return out


def main() -> None:
    global say
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="smollm2", help="registry name, GGUF path or a real shape "
                        "and mix of bench/real_shapes.py (default smollm2)")
    parser.add_argument("-t", "--threads", type=int, help="threads (default: one per physical core)")
    parser.add_argument("--formats", help="comma-separated (default: every format with an integer row kernel)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed per context length")
    parser.add_argument("--no-kernels", action="store_true", help="skip the random-matrix kernel table")
    parser.add_argument("--no-model", action="store_true", help="skip the decode-step breakdown")
    parser.add_argument("--cpu-tier", metavar="TIER", help="kernels of this CPU tier (default: the best one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (the tables go to stderr)")
    args = parser.parse_args()
    if args.json:
        say = functools.partial(print, file=sys.stderr, flush=True)
    if args.cpu_tier:
        os.environ["LLAMAPYZ_CPU_TIER"] = args.cpu_tier
    from llamapyz.kernels import KERNELS, TARGET
    from llamapyz.machine.threads import physical_cores

    threads = args.threads or physical_cores()
    integer = [name for name, kernels in KERNELS.items() if kernels.row]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else integer
    unknown = [f for f in formats if f not in FORMATS_BY_NAME]
    if unknown:
        parser.error(f"unknown formats {unknown}; try names like {','.join(integer)}")
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]  # other busy processes make every figure below noisy: say so
    bw_1, bw = read_bandwidth_gbs(1), read_bandwidth_gbs(threads)  # leaves `threads` in effect
    report: dict[str, Any] = dict(machine=dict(cpu=cpu_model(), threads=threads, cpus=os.cpu_count(),
                                               cpu_tier=TARGET.name, l3=l3_size(), read_gbs=bw, read_gbs_1_thread=bw_1,
                                               load_average=load))
    say(f"machine: {cpu_model()}, threads {threads} of {os.cpu_count()} CPUs, CPU tier {TARGET.name}, L3 {l3_size()}, "
        f"load average {load:.2f}; "
        f"read bandwidth {bw:.1f} GB/s with {threads} threads, {bw_1:.1f} GB/s with 1 "
        f"[numba uint64 sum over {BANDWIDTH_BYTES >> 20} MiB, best of 5]")
    if not args.no_kernels:
        report["kernels"] = bench_kernels(formats, bw, rng)
    if not args.no_model:
        shape = real_shapes.parse(args.model)  # a real shape and mix, made when missing
        path = real_shapes.write(*shape) if shape else Path(resolve_model(args.model))
        report["decode"] = bench_model(path, threads, args.steps, rng)
    if args.json:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
