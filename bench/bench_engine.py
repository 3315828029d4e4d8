"""Engine speed: prefill and decode tokens/s, load and first-run compile time, peak RSS.

    python bench/bench_engine.py smollm2 -t 2                  # registry name or a GGUF path
    python bench/bench_engine.py smollm2 -t 2 --vs-llama-cpp   # + llama-cpp-python on the same file
    python bench/bench_engine.py smollm2 --requantize Q8_0     # the same model re-encoded as Q8_0 first
    python bench/bench_engine.py smollm2 --cpu-tier all         # once per CPU tier this machine runs

Measured: prefill of a 512-token prompt; decode of 128 tokens after a 20-token prompt and after the
512-token prompt; `Model.load` time; the compile time of a first run with an empty numba cache (a child
process); peak RSS of this process. llama-cpp-python is installed on demand into a venv under the cache
dir (never a project dependency), built without AMX (gcc 12's AMX path crashes on this CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime  # noqa: E402,F401 - first: sets the thread-pool environment before numpy loads
from bundler.models import cache_dir, resolve_model  # noqa: E402

PROMPT_TOKENS, SHORT_PROMPT, DECODE_TOKENS = 512, 20, 128
LLAMA_VENV = cache_dir().parent / "llama-cpp-python-venv"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt, decode = json.loads(sys.argv[4]), json.loads(sys.argv[5])
t = time.perf_counter()
llm = Llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
load = time.perf_counter() - t
def timed(tokens):
    t = time.perf_counter(); llm.eval(tokens); return time.perf_counter() - t
llm.eval(prompt[:8]); llm.reset()
prefill = timed(prompt)
decode_long = sum(timed([tok]) for tok in decode)
llm.reset(); timed(prompt[:20])
decode_short = sum(timed([tok]) for tok in decode)
print(json.dumps(dict(load_s=load, prefill_tps=len(prompt) / prefill, decode_short_tps=len(decode) / decode_short,
                      decode_long_tps=len(decode) / decode_long)))
"""

COMPILE_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
t = time.perf_counter()
from runtime import Model
m = Model.load(sys.argv[1], n_ctx=256)
m.prefill(list(range(100, 140))); m.decode(5)
print(time.perf_counter() - t)
"""


def workload(model) -> tuple[list[int], list[int]]:
    """A 512-token prompt of real text and 128 decode tokens (decode speed does not depend on which)."""
    text = Path(__file__).read_text() * 20
    tokens = model.tokenize(text)[:PROMPT_TOKENS]
    return tokens, model.tokenize(text, add_special=False)[1000:1000 + DECODE_TOKENS]


def measure_llamapyz(path: Path, threads: int, n_ctx: int) -> dict:
    from runtime import Model

    started = time.perf_counter()
    model = Model.load(path, n_ctx=n_ctx, n_threads=threads)
    load_s = time.perf_counter() - started
    prompt, decode = workload(model)
    model.prefill(prompt[:8]), model.decode(5)  # compile (or load cached kernels) before timing

    def timed(fn, *args) -> float:
        t = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t

    model.prefill([prompt[0]])
    prefill_s = timed(model.prefill, prompt)
    decode_long_s = sum(timed(model.decode, tok) for tok in decode)
    model.prefill([prompt[0]])
    model.prefill(prompt[:SHORT_PROMPT])
    decode_short_s = sum(timed(model.decode, tok) for tok in decode)
    return dict(load_s=load_s, prefill_tps=len(prompt) / prefill_s, decode_short_tps=len(decode) / decode_short_s,
                decode_long_tps=len(decode) / decode_long_s, prompt=prompt, decode=decode,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                file_mib=model.file_bytes / 2**20, kv_mib=model.cache.n_bytes / 2**20,
                derived_mib=model.derived_bytes / 2**20)


def first_run_compile_s(path: Path) -> float:
    """Seconds for load + first prefill/decode with an empty numba cache, minus the same with a warm one."""
    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [float(subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(path), root], env=env, check=True,
                                     capture_output=True, text=True).stdout) for _ in range(2)]
    return runs[0] - runs[1]


def ensure_llama_cpp() -> Path:
    python = LLAMA_VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return python
    print(f"installing llama-cpp-python into {LLAMA_VENV} (compiles llama.cpp: ~15 minutes on 2 cores)...",
          file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", LLAMA_VENV], check=True)
    env = dict(os.environ, CFLAGS=NO_AMX, CXXFLAGS=NO_AMX, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    subprocess.run([python, "-m", "pip", "install", "-q", "llama-cpp-python"], env=env, check=True)
    return python


def measure_llama_cpp(path: Path, threads: int, n_ctx: int, prompt: list[int], decode: list[int]) -> dict:
    python = ensure_llama_cpp()
    out = subprocess.run([python, "-c", LLAMA_SCRIPT, str(path), str(threads), str(n_ctx), json.dumps(prompt),
                          json.dumps(decode)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def requantize(source: Path, type_name: str) -> Path:
    """The model with every quantized matrix re-encoded as `type_name` (via the gguf package), cached."""
    import gguf
    import numpy as np

    target = cache_dir() / f"{source.stem}.requant-{type_name}.gguf"
    if target.exists():
        return target
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(target) + ".tmp", reader.get_field("general.architecture").contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    qtype = gguf.GGMLQuantizationType[type_name]
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or len(shape) < 2:
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        writer.add_tensor(tensor.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(str(target) + ".tmp", target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name (smollm2, gemma3-270m) or GGUF path")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=2048)
    parser.add_argument("--requantize", metavar="TYPE", help="re-encode the matrices first, e.g. Q8_0")
    parser.add_argument("--vs-llama-cpp", action="store_true", help="also measure llama-cpp-python")
    parser.add_argument("--no-compile-time", action="store_true", help="skip the cold-cache compile measurement")
    parser.add_argument("--cpu-tier", metavar="TIER|all", help="kernels of this CPU tier (default: the best one); "
                                                              "all: one run per tier this machine runs")
    args = parser.parse_args()
    if args.cpu_tier == "all":
        from runtime.cpu import detect, runnable

        for target in runnable(detect()):
            print(f"\n=== {target.name}", flush=True)
            argv = [a for a in sys.argv[1:] if a not in ("all", "--cpu-tier")]
            subprocess.run([sys.executable, __file__, *argv, "--cpu-tier", target.name], check=True)
        return
    if args.cpu_tier:
        os.environ["LLAMAPYZ_CPU_TIER"] = args.cpu_tier
    path = Path(resolve_model(args.model))
    if args.requantize:
        path = requantize(path, args.requantize)
    ours = measure_llamapyz(path, args.threads, args.ctx_size)
    from runtime.cpu import active

    print(f"model {path.name}  threads {args.threads}  n_ctx {args.ctx_size}  CPU tier {active().name}")
    print(f"file {ours['file_mib']:.1f} MiB  KV cache {ours['kv_mib']:.1f} MiB  derived {ours['derived_mib']:.2f} MiB  "
          f"peak RSS {ours['peak_rss_mib']:.1f} MiB  load {ours['load_s']:.2f} s")
    if not args.no_compile_time:
        print(f"first-run compile time (empty numba cache): {first_run_compile_s(path):.1f} s")
    rows = [("prefill 512 (tok/s)", "prefill_tps"), ("decode after 20 (tok/s)", "decode_short_tps"),
            ("decode after 512 (tok/s)", "decode_long_tps")]
    theirs = measure_llama_cpp(path, args.threads, args.ctx_size, ours["prompt"], ours["decode"]) \
        if args.vs_llama_cpp else None
    print(f"{'':26s} {'llamapyz':>10s}" + (f" {'llama.cpp':>10s} {'ratio':>7s}" if theirs else ""))
    for label, key in rows:
        line = f"{label:26s} {ours[key]:10.1f}"
        if theirs:
            line += f" {theirs[key]:10.1f} {ours[key] / theirs[key]:7.2f}x"
        print(line)


if __name__ == "__main__":
    main()
