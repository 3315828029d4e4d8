"""GPU offload (-ngl) on a real model: its logits against the CPU path's, and its speed at -ngl 0, half and all.

    python bench/bench_gpu.py gemma3-270m -t 2            # registry name or a GGUF path (meant: < 3 minutes)
    python bench/bench_gpu.py gemma3-270m --quick          # 64-token prompt, 16 decode tokens
    python bench/bench_gpu.py smollm2 --json --rounds 3    # one JSON object, medians of 3 rounds
    PYTHONPATH=. python bench/bench_gpu.py tiny.gguf --simulator   # no GPU: numba's CUDA simulator, smoke only

Each configuration (-ngl 0; n_layer // 2; -1: every layer and the output layer) runs in its own child
process, one after the other, so its GPU memory and peak RSS are its own; a child that fails or outlasts
--child-timeout-s (default 600) is reported with the tail of its stderr and the others still run. Within a
child:
- load s: `load_model(path, n_gpu_layers=N)`, the weights' upload included;
- compile s: the first warm-up calls (a prefill of 8 tokens, one decode, the logits of 8 tokens) minus the
  same calls repeated: the kernels compiled, or loaded from numba's caches. The GPU kernels are compiled on
  a machine's first use and cached (llamapyz/gpu/gpu_cache.py: llamapyz/gpu/__pycache__, or $NUMBA_CACHE_DIR), so
  on a fresh machine the first GPU configuration compiles and the next loads; the report says how many
  kernels each compiled and loaded. --cold-gpu-cache gives each its own empty GPU cache: every compile s is
  then how long the first compile takes. For -ngl 0 this is the CPU kernels (compiled, and much longer, when
  numba's cache is cold: then the first configuration's load and compile are a cold start's);
- then `--rounds` rounds (default 1: the device machine's time is short), the median reported, of:
  time to first token (TTFT): `prefill` of a 20-token prompt from a fresh context, which returns the logits
  the first token needs; prefill tok/s: one `prefill` of --prompt-tokens tokens on a fresh context (batches
  of 512); decode tok/s: --decode-tokens greedy (argmax) `decode` steps after that prompt;
- GPU MiB: the device's free memory before `Model.load` minus after warm-up (weights, KV cache, scratch
  arrays, kernels' code; numba's CUDA context itself is made before); the offload's own count of its
  weights and per-context KV cache beside it (JSON);
- RSS MiB: the child's peak resident memory (ru_maxrss), the CUDA context's host memory included;
- the logits of the prompt's first 64 tokens (`Model.logits`: a fresh context, every row).

Logit check, in this process: each GPU configuration's logits against -ngl 0's. The GPU runs float32
activations, the CPU path quantizes them to int8 as llama.cpp does, so the two differ by the CPU path's own
quantization noise, whose bound is tests/test_model.py's TOLERANCE against the float reference: the check
fails if max |GPU - CPU| exceeds 0.06 of the CPU logits' range (max - min), or if the top-1 token of fewer
than 90% of the rows agrees.

Target, reported and not enforced: with every layer offloaded, decode at least 5x -ngl 0's with -t 2.
Exit status: 0 all ran and every check passed; 1 a check failed or a configuration did not run; 2 no usable
GPU (the reason printed; never a traceback).

--simulator: a smoke test for machines without a GPU. The children run under numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), where each CUDA thread is a Python thread: use a tiny synthetic model
(`tests.synth.write_model(path, "llama", "Q8_0", small=True, n_layer=2)`); the token counts shrink to a few,
the children run side by side, and compile time is not measured (a simulated call takes seconds; nothing
compiles). Its speeds and memory mean nothing; the logit check and the table's plumbing do (~1 minute).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_engine import cpu_model  # noqa: E402
from llamapyz.bundler.registry import resolve_model  # noqa: E402
from llamapyz.errors import LlamapyzError  # noqa: E402  (imports nothing heavy: no numba in this process)

MiB = 2**20
MAX_RELATIVE_DIFF = 0.06  # of the CPU logits' range: tests/test_model.py's TOLERANCE, the CPU's int8 noise
MIN_TOP1_AGREEMENT = 0.9
TARGET_DECODE_RATIO = 5.0  # all offloaded / -ngl 0, at -t 2


class Sizes(NamedTuple):
    """Tokens of each measurement, and timed rounds."""

    prompt: int  # prefilled, then decoded after
    decode: int
    ttft: int  # the time-to-first-token prompt
    check: int  # the logit check's prompt
    warmup: int  # the warm-up's prompt
    rounds: int


SIZES = {"full": Sizes(512, 128, 20, 64, 8, 1), "quick": Sizes(64, 16, 20, 64, 8, 1),
         "simulator": Sizes(6, 2, 3, 4, 2, 1)}  # each simulated call takes seconds


# --- in the child processes -----------------------------------------------------------------------------


def child_info(args: dict) -> dict:
    """The GPU `llamapyz.gpu.probe` finds (or why none) and the model's layer count."""
    from llamapyz.gguf.reader import load_gguf
    from llamapyz.gpu import Device, probe
    from llamapyz.model.hparams import ModelConfig

    device = probe(args["main_gpu"])
    config = ModelConfig.from_metadata(load_gguf(args["path"]).metadata)
    if not isinstance(device, Device):
        return dict(gpu=None, reason=device, n_layer=config.n_layer, arch=config.arch)
    return dict(gpu=device.name, memory_mib=device.memory_mib, n_layer=config.n_layer, arch=config.arch)


def gpu_free_bytes(main_gpu: int) -> int | None:
    """The device's free memory now (None: unknown, as under the simulator)."""
    from numba import cuda

    with cuda.gpus[main_gpu]:
        free = cuda.current_context().get_memory_info()[0]
    return int(free) if math.isfinite(free) else None


def gpu_kernel_counts() -> dict | None:
    """How many GPU kernel specializations this process compiled and loaded from numba-cuda's cache (None:
    no GPU kernels ran, or the simulator's, which have no such counts)."""
    kernels = sys.modules.get("llamapyz.gpu.kernels")
    stats = [getattr(v, "stats", None) for v in vars(kernels).values()] if kernels else []
    stats = [s for s in stats if hasattr(s, "cache_misses")]
    if not stats:
        return None
    return dict(compiled=sum(sum(s.cache_misses.values()) for s in stats),
                loaded=sum(sum(s.cache_hits.values()) for s in stats))


def child_measure(args: dict) -> dict:
    """One configuration: load, warm up, `rounds` timed rounds, the check logits saved to args["logits"]."""
    import numpy as np

    from llamapyz.loader import load_model

    if args["simulator"]:
        sys.setswitchinterval(1e-4)  # the simulator's scheduler polls its threads: switch often
    ngl, main_gpu = args["ngl"], args["main_gpu"]
    if ngl and args["cold_gpu_cache"]:  # before the kernels are defined: their cache locator asks then
        from llamapyz.gpu import gpu_cache as cache

        cache.cache_folder = lambda: Path(args["cold_gpu_cache"], f"ngl{ngl}")
    free_before = gpu_free_bytes(main_gpu) if ngl else None  # makes the CUDA context before loading

    def timed(fn, *fn_args) -> float:
        t = time.perf_counter()
        fn(*fn_args)
        return time.perf_counter() - t

    t = time.perf_counter()
    model = load_model(args["path"], n_ctx=args["n_ctx"], n_threads=args["threads"], n_gpu_layers=ngl,
                       main_gpu=main_gpu)
    load_s = time.perf_counter() - t
    sizes = Sizes(**args["sizes"])
    text = Path(__file__).read_text()  # about 7,000 tokens
    while len(prompt := model.tokenize(text)) < sizes.prompt:
        text += text
    prompt = prompt[:sizes.prompt]
    short, check, warm = prompt[:sizes.ttft], prompt[:sizes.check], prompt[:sizes.warmup]

    def warm_up() -> None:
        model.prefill(warm, model.new_context())
        model.decode(prompt[len(warm)])
        model.logits(warm)

    first_call_s = timed(warm_up)
    warm_call_s = None if args["simulator"] else timed(warm_up)  # simulated calls: seconds, and no compiling
    free_after = gpu_free_bytes(main_gpu) if ngl else None
    ttft, prefill, decode = [], [], []
    for _ in range(sizes.rounds):
        ttft.append(timed(model.prefill, short, model.new_context()))
        ctx = model.new_context()
        t = time.perf_counter()
        logits = model.prefill(prompt, ctx)
        prefill.append(time.perf_counter() - t)
        steps = 0.0
        for _ in range(sizes.decode):
            token = int(np.argmax(logits))
            t = time.perf_counter()
            logits = model.decode(token, ctx)
            steps += time.perf_counter() - t
        decode.append(steps)
    np.save(args["logits"], model.logits(check))
    gpu = model.gpu
    used = None if free_before is None or free_after is None else (free_before - free_after) / MiB
    compile_s = None if warm_call_s is None else max(0.0, first_call_s - warm_call_s)
    return dict(load_s=load_s, first_call_s=first_call_s, warm_call_s=warm_call_s, compile_s=compile_s,
                gpu_kernels=gpu_kernel_counts(),
                ttft_ms=statistics.median(ttft) * 1e3, prefill_tps=len(prompt) / statistics.median(prefill),
                decode_tps=sizes.decode / statistics.median(decode),
                gpu_used_mib=used, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                layers=gpu.layers, head=gpu.head, n_layer=gpu.n_layer, summary=gpu.summary,
                warning=gpu.warning, weights_mib=gpu.weight_bytes / MiB, kv_mib=gpu.kv_bytes / MiB,
                prompt_tokens=len(prompt), ttft_tokens=len(short), check_tokens=len(check))


CHILD_MODES = {"info": child_info, "measure": child_measure}


# --- in this process ------------------------------------------------------------------------------------


def run_child(mode: str, args: dict, simulator: bool, timeout_s: float) -> dict:
    """`mode` in a child process: its JSON answer, or {"error": why, with the tail of its stderr}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # a real GPU unless --simulator, whatever the caller's shell says
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, json.dumps(args)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        return {"error": f"timed out after {timeout_s:.0f} s (raise --child-timeout-s)\n"
                         + (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}\n{done.stderr[-2000:]}"}
    return json.loads(lines[-1])


def compare(cpu_logits, gpu_logits) -> dict:
    """max |gpu - cpu| over the CPU logits' range, and the share of rows whose top-1 token agrees."""
    import numpy as np

    spread = float(np.ptp(cpu_logits))
    diff = float(np.abs(gpu_logits - cpu_logits).max()) / spread
    top1 = float(np.mean(np.argmax(gpu_logits, axis=1) == np.argmax(cpu_logits, axis=1)))
    return dict(max_rel_diff=diff, top1_agreement=top1,
                ok=diff <= MAX_RELATIVE_DIFF and top1 >= MIN_TOP1_AGREEMENT)


def configurations(n_layer: int) -> list[tuple[str, int]]:
    """(name, -ngl): none, half, all and the output layer; half left out when it is none."""
    configs = [("ngl 0 (CPU)", 0)]
    if n_layer // 2:
        configs.append((f"ngl {n_layer // 2} (half)", n_layer // 2))
    return configs + [("ngl -1 (all)", -1)]


def measure_all(path: Path, info: dict, args: argparse.Namespace, sizes: Sizes, tmp: Path) -> list[dict]:
    """Every configuration, one child each: one after the other on a GPU (each alone on the machine, and
    one CUDA context at a time); side by side under the simulator, whose timings mean nothing."""

    def measure(config: tuple[str, int]) -> dict:
        name, ngl = config
        logits = tmp / f"logits-{ngl}.npy"
        child = dict(path=str(path), ngl=ngl, main_gpu=args.main_gpu, threads=args.threads, n_ctx=args.ctx_size,
                     sizes=sizes._asdict(), simulator=args.simulator, logits=str(logits),
                     cold_gpu_cache=str(tmp / "gpu-kernels") if args.cold_gpu_cache else None)
        started = time.perf_counter()
        result = dict(name=name, ngl=ngl, **run_child("measure", child, args.simulator, args.child_timeout_s))
        result["child_s"] = time.perf_counter() - started
        print(f"{name}: {result['child_s']:.0f} s" + (" FAILED" if "error" in result else ""), file=sys.stderr,
              flush=True)
        if "error" not in result:
            result["logits_file"] = logits
        return result

    configs = configurations(info["n_layer"])
    with ThreadPoolExecutor(len(configs) if args.simulator else 1) as pool:
        return list(pool.map(measure, configs))


def check_logits(results: list[dict]) -> None:
    """Each GPU configuration's logits against -ngl 0's (result["check"]); decode ratios too."""
    import numpy as np

    cpu = results[0]
    if "error" in cpu:
        return
    cpu_logits = np.load(cpu["logits_file"])
    for result in results[1:]:
        if "error" in result:
            continue
        result["check"] = compare(cpu_logits, np.load(result["logits_file"]))
        result["decode_ratio"] = result["decode_tps"] / cpu["decode_tps"]
    cpu["decode_ratio"] = 1.0


def summarize(path: Path, info: dict, args: argparse.Namespace, sizes: Sizes, results: list[dict]) -> dict:
    ran = [r for r in results if "error" not in r]
    failed = [r["name"] for r in results if "error" in r]
    checks_failed = [r["name"] for r in ran if "check" in r and not r["check"]["ok"]]
    everything = results[-1]
    ratio = everything.get("decode_ratio")
    for r in results:
        r.pop("logits_file", None)
    return dict(cpu=cpu_model(), gpu=info["gpu"], gpu_memory_mib=info.get("memory_mib"), model=path.name,
                arch=info["arch"], n_layer=info["n_layer"], threads=args.threads, n_ctx=args.ctx_size,
                simulator=args.simulator, cold_gpu_cache=args.cold_gpu_cache, rounds=sizes.rounds,
                decode_tokens=sizes.decode,
                prompt_tokens=ran[0]["prompt_tokens"] if ran else sizes.prompt,
                ttft_tokens=ran[0]["ttft_tokens"] if ran else sizes.ttft,
                check_tokens=ran[0]["check_tokens"] if ran else sizes.check,
                thresholds=dict(max_rel_diff=MAX_RELATIVE_DIFF, min_top1_agreement=MIN_TOP1_AGREEMENT),
                target=dict(decode_ratio=TARGET_DECODE_RATIO, threads=2, measured=ratio,
                            met=None if ratio is None or args.threads != 2 or args.simulator
                            else ratio >= TARGET_DECODE_RATIO),
                configurations=results, failed=failed, checks_failed=checks_failed,
                ok=not failed and not checks_failed)


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


COLUMNS = [  # (heading, format of a number, a configuration's value: a number, a string, or None for "-")
    ("layers", "", lambda r: f"{r['layers']}/{r['n_layer']}" + ("+out" if r["head"] else "")),
    ("load s", ".2f", lambda r: r["load_s"]),
    ("compile s", ".2f", lambda r: r["compile_s"]),
    ("TTFT ms", ".1f", lambda r: r["ttft_ms"]),
    ("prefill tok/s", ".1f", lambda r: r["prefill_tps"]),
    ("decode tok/s", ".1f", lambda r: r["decode_tps"]),
    ("vs ngl 0", "", lambda r: _ratio(r.get("decode_ratio"))),
    ("GPU MiB", ".1f", lambda r: r["gpu_used_mib"]),
    ("RSS MiB", ".1f", lambda r: r["rss_mib"]),
    ("logit diff", ".4f", lambda r: r.get("check", {}).get("max_rel_diff")),
    ("top-1", ".2f", lambda r: r.get("check", {}).get("top1_agreement")),
]


def table_row(result: dict) -> str:
    cells = []
    for heading, fmt, value_of in COLUMNS:
        value = value_of(result)
        text = "-" if value is None else value if isinstance(value, str) else f"{value:{fmt}}"
        cells.append(f"{text:>{max(len(heading), 8)}s}")
    return f"{result['name']:18s} " + " ".join(cells)


def report(summary: dict) -> None:
    s = summary
    print(f"CPU {s['cpu']}  threads (-t) {s['threads']}")
    print(f"GPU {s['gpu']}" + (f" ({s['gpu_memory_mib']} MiB)" if s["gpu_memory_mib"] else "")
          + ("  [numba's CUDA simulator: speeds and memory mean nothing]" if s["simulator"] else ""))
    print(f"model {s['model']} ({s['arch']}, {s['n_layer']} layers)  n_ctx {s['n_ctx']}  median of {s['rounds']} "
          f"round(s); TTFT: {s['ttft_tokens']}-token prompt; prefill {s['prompt_tokens']} tokens; decode "
          f"{s['decode_tokens']} tokens after it")
    print(f"{'configuration':18s} " + " ".join(f"{heading:>{max(len(heading), 8)}s}" for heading, _, _ in COLUMNS))
    for r in s["configurations"]:
        print(f"{r['name']:18s} FAILED ({r['error'].splitlines()[0]}): {r['error'].splitlines()[-1]}" if "error" in r
              else table_row(r))
    for r in s["configurations"]:
        lines = [r.get("summary"), r.get("warning") and f"warning: {r['warning']}"]
        if r.get("gpu_kernels"):
            lines.append("GPU kernels: {compiled} compiled, {loaded} loaded from numba-cuda's cache"
                         .format(**r["gpu_kernels"]) + (" (an empty cache of its own)" if s["cold_gpu_cache"] else ""))
        for line in filter(None, lines):
            print(f"  {r['name']}: {line}")
        if "error" in r:
            print(f"  {r['name']} failed after {r['child_s']:.0f} s; its stderr ends:")
            print("    " + "\n    ".join(r["error"].splitlines()[-15:]))
    t = s["thresholds"]
    checked = [r["name"] for r in s["configurations"] if "check" in r]
    print(f"logit check (each GPU configuration against ngl 0, the {s['check_tokens']}-token prompt's every row): "
          f"max |diff| <= {t['max_rel_diff']} of the CPU logits' range (the CPU path's int8 noise bound), top-1 "
          f"agreement >= {t['min_top1_agreement']}: "
          + ("FAILED by " + ", ".join(s["checks_failed"]) if s["checks_failed"] else
             "passed by " + ", ".join(checked) if checked else "not run"))
    target = s["target"]
    why = " (the simulator's)" if s["simulator"] else "" if s["threads"] == 2 else " (needs -t 2)"
    verdict = {None: "not judged" + why, True: "met", False: "not met"}
    print(f"target: all offloaded decode >= {target['decode_ratio']:.0f}x ngl 0's at -t {target['threads']}: "
          + (f"{target['measured']:.2f}x, " if target["measured"] is not None else "")
          + verdict[target["met"]])
    if s["failed"]:
        print("did not run: " + ", ".join(s["failed"]))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # a child process: one mode, its answer as JSON
        print(json.dumps(CHILD_MODES[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name (smollm2, gemma3-270m) or GGUF path")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=0, help="default: the prompt and decode tokens")
    parser.add_argument("--rounds", type=int, help="timed rounds per configuration (default 1); the median is "
                                                   "reported")
    parser.add_argument("--prompt-tokens", type=int, help="prefill length (default 512; --quick 64)")
    parser.add_argument("--decode-tokens", type=int, help="decode steps (default 128; --quick 16)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64-token prompt, 16 decode tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--main-gpu", type=int, default=0)
    parser.add_argument("--simulator", action="store_true", help="numba's CUDA simulator (no GPU): a smoke test "
                                                                 "on a tiny synthetic model, a few tokens")
    parser.add_argument("--cold-gpu-cache", action="store_true", help="each GPU configuration compiles its "
                                                                      "kernels afresh (an empty cache of its own)")
    parser.add_argument("--child-timeout-s", type=float, default=600.0, help="per configuration (default 600)")
    args = parser.parse_args()
    sizes = SIZES["simulator" if args.simulator else "quick" if args.quick else "full"]
    n_prompt = args.prompt_tokens or sizes.prompt
    if n_prompt <= sizes.warmup:
        sys.exit(f"error: --prompt-tokens must be more than {sizes.warmup} (the warm-up's prompt and a token)")
    sizes = sizes._replace(prompt=n_prompt, decode=args.decode_tokens or sizes.decode, ttft=min(sizes.ttft, n_prompt),
                           check=min(sizes.check, n_prompt), rounds=args.rounds or sizes.rounds)
    needed = sizes.prompt + sizes.decode
    args.ctx_size = args.ctx_size or needed
    if args.ctx_size < needed:
        sys.exit(f"error: -c {args.ctx_size} holds fewer than the {sizes.prompt} prompt and {sizes.decode} decode "
                 f"tokens; try -c {needed}")
    try:
        path = Path(resolve_model(args.model))
    except LlamapyzError as exc:
        sys.exit(f"error: {exc}")
    info = run_child("info", dict(path=str(path), main_gpu=args.main_gpu), args.simulator, args.child_timeout_s)
    if "error" in info:
        sys.exit(f"error: could not read the model or probe the GPU: {info['error']}")
    if info["gpu"] is None:
        print(f"no usable GPU: {info['reason']} (--simulator runs numba's CUDA simulator instead)", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        results = measure_all(path, info, args, sizes, Path(tmp))
        check_logits(results)
    summary = summarize(path, info, args, sizes, results)
    if args.json:
        print(json.dumps(summary))
    else:
        report(summary)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
