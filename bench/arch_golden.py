"""llama.cpp's outputs on the derived architecture test models, as test data: tests/data/arch/FAMILY-QUANT.json.

    .venv/bin/python bench/arch_golden.py                            # every family x quant
    .venv/bin/python bench/arch_golden.py --family phi3 --quant F16  # a subset (both options repeatable)

Each model is built by tests/dress.py (cached by `derived_path`) and run by llama.cpp in a child process of
the llama-cpp-python venv (bench/bench_engine.py installs it on demand). For every prompt: the greedy
continuation (up to 32 tokens, the end-of-generation token included), the gap between llama.cpp's best and
second-best logit at each step, its 20 best logits at the first step, and the steps where the same sequence
run teacher-forced (one batched pass) has another argmax (a sanity check: expected only at small margins).

The same prompts for every family: three short ones, one chat turn rendered with the file's own template, and
a long English text that passes phi3's original context (512), gemma2's sliding window (64) and the window
phi3's loader ignores (256); phi3 also gets a short prompt at n_ctx 512, where llama.cpp picks the short rope
factors. Progress on stderr, one summary line per file: size, seconds to derive, share of steps with margin
>= 0.5, greedy text of the first prompt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_engine import ensure_llama_cpp  # noqa: E402
from llamapyz.bundler.registry import sha256_file  # noqa: E402
from llamapyz.gguf.reader import load_gguf  # noqa: E402
from tests.dress import FAMILIES, QUANTS, derived_path  # noqa: E402

OUT_DIR = ROOT / "tests" / "data" / "arch"
N_PREDICT, N_CTX, THREADS = 32, 2048, 2
CONFIDENT = 0.5  # a top-1 margin above which implementations' float differences should not flip the argmax
SHORT_PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village,"]
CHAT_MESSAGE = "What is the tallest mountain in the world?"
FIXED_DATE = datetime.date(2026, 1, 5)

LONG_PROMPT = """\
Rivers are the oldest roads of the land. Long before anyone built a bridge or paved a street, water had \
already found the shortest way down from the hills to the sea, cutting valleys through rock and laying down \
soft plains of silt where the current slowed. A river begins as rain. Clouds drift in from the ocean, rise \
over the mountains, cool, and release their water as drizzle, as heavy summer storms, or as snow that waits \
on the high slopes until spring. Some of that water soaks into the ground and moves slowly through gravel \
and cracks in the stone; some of it runs straight off the surface into small streams. The streams join, \
the channels grow wider, and within a few miles a trickle that a child could step across becomes a river \
that carries boats.

The weather of a region shapes its rivers more than anything else. In places where rain falls evenly \
through the year, rivers run steadily, rising a little in the wet months and falling a little in the dry \
ones. Farmers along such rivers can plan their planting with confidence, and towns can draw water for \
their mills and kitchens without much worry. In places with a strong monsoon, the picture is very \
different. For most of the year the riverbed may be a wide strip of sand with a thin stream wandering \
across it, and then, within a few days of the first heavy rains, the water rises over its banks and \
spreads across the fields. The floods are dangerous, but they also bring fresh soil, and many of the most \
fertile farmlands in the world were built, layer by layer, by floods of this kind.

Snow adds another rhythm. A river fed by mountain snow often runs highest not during the rainy season but \
in late spring and early summer, when warm winds and long days melt the snowpack. Engineers who manage \
dams on such rivers watch the snow depth in the mountains as closely as they watch the sky, because the \
water stored on the slopes in March will arrive at the reservoir in June. A warm winter with little snow \
can mean a dry summer even if the summer itself is not especially hot, and a sudden heat wave on a deep \
snowpack can send a flood downstream on a clear, sunny day.

Rivers also change the weather around them, though more gently. A wide river or a large lake keeps the air \
above it cooler in summer and warmer in winter than the land nearby, because water heats and cools slowly. \
On calm autumn mornings, fog often forms over the water and fills the valley, lying so thick that the far \
bank disappears, and then it lifts and burns away as the sun climbs. People who live along big rivers learn \
to read these small signs: the color of the water after a storm upstream, the smell of wet earth before \
rain, the way the wind turns and the current seems to slow when the weather is about to change.

Over long spans of time, rivers move. A river crossing a flat plain swings from side to side, eating into \
the outer bank of each bend and leaving sand on the inner bank, so that the loops slowly grow and drift \
downstream. Sometimes, during a great flood, the river cuts straight across the neck of a loop and \
abandons it, leaving behind a curved lake. Old maps of river towns often show the water in a different \
place from where it runs today, and some harbors that were busy a few centuries ago now stand in the \
middle of fields, far from any boat. Watching a river for a single afternoon, it is easy to think of it as \
a fixed line on the land, but it is really a slow and patient motion, shaped by every storm and every dry \
season that has passed over its valley.

When you stand on a bridge and look down at the moving water, you are looking at the weather of the whole \
basin, gathered together and carried past you on its way to the sea."""

LLAMA_SCRIPT = r"""
import json, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama
job = json.load(sys.stdin)
models, out = {}, []
for case in job["cases"]:
    n_ctx = case["n_ctx"]
    if n_ctx not in models:
        models.clear()
        models[n_ctx] = Llama(job["path"], n_ctx=n_ctx, n_batch=512, n_threads=job["threads"],
                              n_threads_batch=job["threads"], logits_all=True, verbose=False)
    llm = models[n_ctx]
    vocab = llm._model.vocab
    prompt = llm.tokenize(case["prompt"].encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt)
    tokens, margins, top20 = [], [], None
    while len(tokens) < job["n_predict"]:
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")
        if top20 is None:
            top20 = [[int(i), float(logits[i])] for i in order[:20]]
        tokens.append(int(order[0]))
        margins.append(round(float(logits[order[0]] - logits[order[1]]), 4))
        if llama_cpp.llama_vocab_is_eog(vocab, tokens[-1]) or len(tokens) == job["n_predict"]:
            break
        llm.eval([tokens[-1]])
    llm.reset()
    llm.eval(prompt + tokens)  # teacher-forced: the whole sequence in batches, as a prefill would
    forced = np.argmax(llm.scores[len(prompt) - 1:len(prompt) - 1 + len(tokens)], axis=1)
    out.append(dict(prompt_tokens=prompt, tokens=tokens, top1_margin=margins, top20_logits_first_step=top20,
                    text=llm.detokenize(tokens).decode("utf-8", errors="replace"),
                    teacher_forced_differs_at=[int(i) for i in np.flatnonzero(forced != np.array(tokens))]))
print(json.dumps(dict(llama_cpp_python=llama_cpp.__version__, cases=out)))
"""


def chat_prompt(path: Path) -> str:
    """The chat turn rendered with the file's own template (jinja2, as transformers renders it)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    with load_gguf(path) as model:
        meta = model.metadata
        tokens = meta["tokenizer.ggml.tokens"]
        bos, eos = tokens[meta["tokenizer.ggml.bos_token_id"]], tokens[meta["tokenizer.ggml.eos_token_id"]]
        adds_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
        source = meta["tokenizer.chat_template"]

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = FIXED_DATE.strftime  # Ministral 3's and gpt-oss's: one date, the same prompt
    text = env.from_string(source).render(messages=[{"role": "user", "content": CHAT_MESSAGE}],
                                          add_generation_prompt=True, bos_token=bos, eos_token=eos)
    if adds_bos and text.startswith(bos):
        text = text[len(bos):]  # the tokenizer adds the BOS itself: one, not two
    return text


def cases_for(family: str, path: Path) -> list[dict]:
    cases = [dict(prompt=p, n_ctx=N_CTX) for p in [*SHORT_PROMPTS, chat_prompt(path), LONG_PROMPT]]
    if family == "phi3":  # n_ctx <= original_context_length: llama.cpp uses the short rope factors
        cases.append(dict(prompt=SHORT_PROMPTS[0], n_ctx=512))
    return cases


def run_llama_cpp(path: Path, cases: list[dict]) -> dict:
    job = dict(path=str(path), threads=THREADS, n_predict=N_PREDICT, cases=cases)
    result = subprocess.run([ensure_llama_cpp(), "-c", LLAMA_SCRIPT], input=json.dumps(job), check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def golden(family: str, quant: str) -> tuple[dict, float]:
    """The JSON record for one derived file, and the seconds it took to derive (0 when cached)."""
    started = time.perf_counter()
    path = derived_path(family, quant)
    derive_s = time.perf_counter() - started
    cases = cases_for(family, path)
    ran = run_llama_cpp(path, cases)
    records = [dict(prompt=case["prompt"], n_ctx=case["n_ctx"], **res)
               for case, res in zip(cases, ran["cases"], strict=True)]
    return dict(family=family, quant=quant, arch=FAMILIES[family].arch, sha256=sha256_file(path),
                file_bytes=path.stat().st_size, reference="llama.cpp via llama-cpp-python",
                llama_cpp_python=ran["llama_cpp_python"],
                teacher_forced_same_as_greedy=not any(r["teacher_forced_differs_at"] for r in records),
                teacher_forced_same_where_confident=all(r["top1_margin"][i] < CONFIDENT for r in records
                                                        for i in r["teacher_forced_differs_at"]),
                cases=records), derive_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=list(FAMILIES), help="default: all")
    parser.add_argument("--quant", action="append", choices=QUANTS, help="default: all")
    args = parser.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for family in args.family or FAMILIES:
        for quant in args.quant or QUANTS:
            print(f"{family} {quant}: deriving and running llama.cpp...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            record, derive_s = golden(family, quant)
            out = OUT_DIR / f"{family}-{quant}.json"
            out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            margins = [m for case in record["cases"] for m in case["top1_margin"]]
            confident = sum(m >= CONFIDENT for m in margins) / len(margins)
            differ = sum(len(case["teacher_forced_differs_at"]) for case in record["cases"])
            print(f"{family} {quant}: {record['file_bytes'] / 2**20:.1f} MiB, derived in {derive_s:.1f} s, "
                  f"margin >= {CONFIDENT} at {confident:.0%} of {len(margins)} steps, teacher-forced argmax differs "
                  f"at {differ} steps ({'all' if record['teacher_forced_same_where_confident'] else 'NOT all'} "
                  f"below the margin), "
                  f"{time.perf_counter() - started:.0f} s in all; {record['cases'][0]['text']!r}",
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
