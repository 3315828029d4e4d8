"""Engine speed, llamapyz against llama.cpp: both engines measured in the same run, alternating, median of 3.

    python bench/bench_engine.py smollm2 -t 2                  # registry name or a GGUF path
    python bench/bench_engine.py smollm2 -t 2 --vs-llama-cpp   # + llama-cpp-python on the same file
    python bench/bench_engine.py smollm2 --vs-llama-cpp --json # one JSON object of medians, for notes
    python bench/bench_engine.py smollm2 --requantize Q8_0     # the same model re-encoded as Q8_0 first
    python bench/bench_engine.py smollm2 --cpu-tier all        # once per CPU tier this machine runs
    python bench/bench_engine.py smollm2 --vs-llama-cpp --quick --no-compile-time   # smoke test, ~1 minute
    python bench/bench_engine.py llama-3.2-1b-Q4_K_M --vs-llama-cpp   # a real shape (bench/real_shapes.py)

Each engine runs in its own child process, `--repeats` rounds (default 3) alternating llamapyz / llama.cpp,
so both see the same machine state; the report gives the median of each metric per engine and the ratio of
the medians (llamapyz / llama.cpp: above 1 is better for tok/s, worse for seconds, ms and MiB).

Measured per round, after a warm-up (kernels compiled or loaded from numba's cache):
- load: `Model.load` / `Llama(...)` seconds;
- time to first token of a ~20-token chat prompt (`chat_tokens` of one user message; the report gives the
  exact count): `prefill` from a fresh context, which returns the logits the first sampled token needs /
  llama.cpp's `reset(); eval(tokens)`;
- prefill of a 512-token prompt; decode of 128 tokens after a 20-token prompt and after the 512-token one
  (`--quick`: 64-token prompt, 16 decode tokens, 1 round);
- peak RSS of each child (ru_maxrss); ours next to its budget: file + KV cache + 150 MiB;
- once, unless --no-compile-time: the compile time of a first run with an empty numba cache.
llama-cpp-python is installed on demand into a venv under the cache dir (never a project dependency), built
without AMX (gcc 12's AMX path crashes on this CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import real_shapes  # noqa: E402
from llamapyz.bundler.registry import cache_dir, resolve_model  # noqa: E402

SHORT_PROMPT, CHAT_TOKENS, BUDGET_EXTRA_MIB = 20, 20, 150
LLAMA_VENV = cache_dir().parent / "llama-cpp-python-venv"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CHAT_TEXT = ("Explain in a few plain sentences why the sky looks blue at noon and red at sunset, and what "
             "the air has to do with it.")

# Our engine. argv[1]: JSON of root, path, threads, n_ctx, n_prompt, n_decode, text (a file of real text).
OURS_SCRIPT = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["root"])
from llamapyz import Model
from llamapyz.machine.cpu import active
from llamapyz.model.model import settle
def timed(fn, *fn_args):
    t = time.perf_counter(); fn(*fn_args); return time.perf_counter() - t
t = time.perf_counter()
model = Model.load(args["path"], n_ctx=args["n_ctx"], n_threads=args["threads"])
load = time.perf_counter() - t
settle()  # as the server and `run` do after loading
text = open(args["text"]).read() * 20
prompt = model.tokenize(text)[:args["n_prompt"]]
decode = model.tokenize(text, add_special=False)[1000:1000 + args["n_decode"]]
words = args["chat_text"].split()
chats = [model.chat_tokens([{"role": "user", "content": " ".join(words[:n])}]) for n in range(1, len(words) + 1)]
chat = min(chats, key=lambda c: (abs(len(c) - args["n_chat"]), len(c)))
# compile (or load cached kernels) before timing, in a context of its own: numpy asks for huge pages for the KV
# cache, so a context's first token makes every layer's first 2 MiB resident, and RSS would count the model's
# default context (never used here) on top of the measured one
warm = model.new_context(); model.prefill(prompt[:8], warm); model.decode(5, warm); del warm
ttft = timed(model.prefill, chat, model.new_context())
ctx = model.new_context()
prefill = timed(model.prefill, prompt, ctx)
decode_long = sum(timed(model.decode, tok, ctx) for tok in decode)
ctx = model.new_context(); model.prefill(prompt[:args["n_short"]], ctx)
decode_short = sum(timed(model.decode, tok, ctx) for tok in decode)
print(json.dumps(dict(load_s=load, ttft_ms=ttft * 1e3, prefill_tps=len(prompt) / prefill,
                      decode_short_tps=len(decode) / decode_short, decode_long_tps=len(decode) / decode_long,
                      peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      prompt=prompt, decode=decode, chat=chat, tier=active().name,
                      file_mib=model.file_bytes / 2**20, kv_mib=model.cache.n_bytes / 2**20,
                      derived_mib=model.derived_bytes / 2**20)))
"""

# llama-cpp-python on the same tokens. argv[1]: JSON of path, threads, n_ctx, prompt, decode, chat, n_short.
LLAMA_SCRIPT = r"""
import json, resource, sys, time
from llama_cpp import Llama
args = json.loads(sys.argv[1])
prompt, decode, chat = args["prompt"], args["decode"], args["chat"]
t = time.perf_counter()
llm = Llama(args["path"], n_ctx=args["n_ctx"], n_threads=args["threads"], n_threads_batch=args["threads"],
            n_batch=512, verbose=False)
load = time.perf_counter() - t
def timed(tokens):
    t = time.perf_counter(); llm.eval(tokens); return time.perf_counter() - t
llm.eval(prompt[:8]); llm.reset()
ttft = timed(chat)
llm.reset(); prefill = timed(prompt)
decode_long = sum(timed([tok]) for tok in decode)
llm.reset(); timed(prompt[:args["n_short"]])
decode_short = sum(timed([tok]) for tok in decode)
print(json.dumps(dict(load_s=load, ttft_ms=ttft * 1e3, prefill_tps=len(prompt) / prefill,
                      decode_short_tps=len(decode) / decode_short, decode_long_tps=len(decode) / decode_long,
                      peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

COMPILE_SCRIPT = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
t = time.perf_counter()
from llamapyz import Model
m = Model.load(sys.argv[1], n_ctx=256)
m.prefill(list(range(100, 140))); m.decode(5)
print(time.perf_counter() - t)
"""

METRICS = ["load_s", "ttft_ms", "prefill_tps", "decode_short_tps", "decode_long_tps", "peak_rss_mib"]


def run_child(python: str | Path, script: str, args: dict, env: dict | None = None) -> dict:
    """Run `script` with `args` as JSON in a child process; its last stdout line, parsed as JSON."""
    done = subprocess.run([python, "-c", script, json.dumps(args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"benchmark child failed ({python}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_llamapyz(path: Path, threads: int, n_ctx: int, n_prompt: int, n_decode: int) -> dict:
    return run_child(sys.executable, OURS_SCRIPT, dict(
        root=str(ROOT), path=str(path), threads=threads, n_ctx=n_ctx, n_prompt=n_prompt, n_decode=n_decode,
        n_short=SHORT_PROMPT, n_chat=CHAT_TOKENS, chat_text=CHAT_TEXT, text=str(Path(__file__).resolve())))


def measure_llama_cpp(path: Path, threads: int, n_ctx: int, ours: dict) -> dict:
    return run_child(ensure_llama_cpp(), LLAMA_SCRIPT, dict(
        path=str(path), threads=threads, n_ctx=n_ctx, prompt=ours["prompt"], decode=ours["decode"],
        chat=ours["chat"], n_short=SHORT_PROMPT))


def first_run_compile_s(path: Path) -> float:
    """Seconds for load + first prefill/decode with an empty numba cache, minus the same with a warm one."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [float(subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(path), str(ROOT)], env=env,
                                     check=True, capture_output=True, text=True).stdout) for _ in range(2)]
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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in METRICS}


def report(summary: dict) -> None:
    ours, theirs = summary["llamapyz"], summary.get("llama_cpp")
    print(f"CPU {summary['cpu']}  threads (-t) {summary['threads']}  llamapyz CPU tier {summary['cpu_tier']}")
    print(f"model {summary['model']}  n_ctx {summary['n_ctx']}  median of {summary['repeats']} round(s)"
          + (", alternating llamapyz / llama.cpp" if theirs else ""))
    budget = summary["budget_mib"]
    over = ours["peak_rss_mib"] - budget
    print(f"file {summary['file_mib']:.1f} MiB + KV cache {summary['kv_mib']:.1f} MiB + {BUDGET_EXTRA_MIB} MiB = "
          f"budget {budget:.1f} MiB; peak RSS {ours['peak_rss_mib']:.1f} MiB: "
          + (f"over by {over:.1f} MiB" if over > 0 else "within") + f"  (derived {summary['derived_mib']:.2f} MiB)")
    if summary.get("compile_s") is not None:
        print(f"first-run compile time (empty numba cache): {summary['compile_s']:.1f} s")
    rows = [("load (s)", "load_s", ".2f"), (f"first token, {summary['chat_tokens']}-token chat (ms)", "ttft_ms", ".1f"),
            (f"prefill {summary['prompt_tokens']} (tok/s)", "prefill_tps", ".1f"),
            (f"decode after {SHORT_PROMPT} (tok/s)", "decode_short_tps", ".1f"),
            (f"decode after {summary['prompt_tokens']} (tok/s)", "decode_long_tps", ".1f"),
            ("peak RSS (MiB)", "peak_rss_mib", ".1f")]
    print(f"{'':34s} {'llamapyz':>10s}" + (f" {'llama.cpp':>10s} {'ours/theirs':>11s}" if theirs else ""))
    for label, key, fmt in rows:
        line = f"{label:34s} {ours[key]:10{fmt}}"
        if theirs:
            line += f" {theirs[key]:10{fmt}} {summary['ratio'][key]:10.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="registry name (smollm2, gemma3-270m), GGUF path, or a real shape and mix "
                                      "of bench/real_shapes.py (llama-3.2-1b-Q4_K_M), made when missing")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per engine; the median is reported")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64-token prompt, 16 decode tokens, 1 round")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the medians instead")
    parser.add_argument("--requantize", metavar="TYPE", help="re-encode the matrices first, e.g. Q8_0")
    parser.add_argument("--vs-llama-cpp", action="store_true", help="also measure llama-cpp-python")
    parser.add_argument("--no-compile-time", action="store_true", help="skip the cold-cache compile measurement")
    parser.add_argument("--cpu-tier", metavar="TIER|all", help="kernels of this CPU tier (default: the best one); "
                                                              "all: one run per tier this machine runs")
    args = parser.parse_args()
    if args.cpu_tier == "all":
        from llamapyz.machine.cpu import detect, runnable

        for target in runnable(detect()):
            print(f"\n=== {target.name}", file=sys.stderr if args.json else sys.stdout, flush=True)
            argv = [a for a in sys.argv[1:] if a not in ("all", "--cpu-tier")]
            subprocess.run([sys.executable, __file__, *argv, "--cpu-tier", target.name], check=True)
        return
    if args.cpu_tier:
        os.environ["LLAMAPYZ_CPU_TIER"] = args.cpu_tier  # inherited by every child
    n_prompt, n_decode, repeats = (64, 16, 1) if args.quick else (512, 128, args.repeats)
    shape = real_shapes.parse(args.model)
    path = real_shapes.write(*shape) if shape else Path(resolve_model(args.model))
    if args.requantize:
        path = requantize(path, args.requantize)
    ours_runs: list[dict] = []
    theirs_runs: list[dict] = []
    for i in range(repeats):
        ours_runs.append(measure_llamapyz(path, args.threads, args.ctx_size, n_prompt, n_decode))
        print(f"round {i + 1}/{repeats}: llamapyz decode {ours_runs[-1]['decode_short_tps']:.1f} tok/s", end="",
              file=sys.stderr, flush=True)
        if args.vs_llama_cpp:
            theirs_runs.append(measure_llama_cpp(path, args.threads, args.ctx_size, ours_runs[0]))
            print(f", llama.cpp {theirs_runs[-1]['decode_short_tps']:.1f} tok/s", end="", file=sys.stderr)
        print(file=sys.stderr, flush=True)
    first = ours_runs[0]
    summary = dict(cpu=cpu_model(), threads=args.threads, cpu_tier=first["tier"], model=path.name,
                   n_ctx=args.ctx_size, repeats=repeats, prompt_tokens=len(first["prompt"]),
                   decode_tokens=len(first["decode"]), chat_tokens=len(first["chat"]),
                   file_mib=first["file_mib"], kv_mib=first["kv_mib"], derived_mib=first["derived_mib"],
                   budget_mib=first["file_mib"] + first["kv_mib"] + BUDGET_EXTRA_MIB,
                   compile_s=None if args.no_compile_time else first_run_compile_s(path),
                   llamapyz=medians(ours_runs))
    if theirs_runs:
        summary["llama_cpp"] = medians(theirs_runs)
        summary["ratio"] = {key: summary["llamapyz"][key] / summary["llama_cpp"][key] for key in METRICS}
    if args.json:
        print(json.dumps(summary))
    else:
        report(summary)


if __name__ == "__main__":
    main()
