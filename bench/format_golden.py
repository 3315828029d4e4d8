"""llama.cpp's logits on tiny random llamas of the newer formats, as test data: tests/data/formats/llama-FMT.json.

    .venv/bin/python bench/format_golden.py                          # IQ4_NL, IQ4_XS, MXFP4: written
    .venv/bin/python bench/format_golden.py --formats Q4_0,Q4_K -n   # others, only compared (calibration)

Each model is tests/synth.py's `write_model(path, "llama", FMT, tied=False)`: random blocks of the format in
every matrix (2 layers, n_embd 256, its byte-level vocabulary of 264 tokens). llama.cpp (llama-cpp-python in
the venv that bench/bench_engine.py installs) runs PROMPT's tokens in one batch and returns every position's
logits; written are the file's sha256, the tokens, the logits' spread (max - min) and, per position,
llama.cpp's TOP best ids with their logits. Printed per format: our largest gap to llama.cpp over all the
logits, relative to the spread, and in how many positions the argmax is the same (tests/test_format_golden.py
holds us to these files).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bench_engine import ensure_llama_cpp, run_child  # noqa: E402
from llamapyz import Model  # noqa: E402
from llamapyz.bundler.registry import sha256_file  # noqa: E402
from tests.synth import write_model  # noqa: E402

OUT_DIR = ROOT / "tests" / "data" / "formats"
FORMATS = ("IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0", "IQ3_S", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S",
           "IQ1_M")
PROMPT = "the cat in the hat, there and here; the end of it all"
TOP = 10

# llama-cpp-python: argv[1] is JSON of path and tokens; prints every position's logits as a JSON list.
LLAMA_SCRIPT = r"""
import json, sys
from llama_cpp import Llama
args = json.loads(sys.argv[1])
llm = Llama(args["path"], n_ctx=64, n_threads=2, n_batch=64, logits_all=True, verbose=False)
llm.eval(args["tokens"])
print(json.dumps([[float(v) for v in row] for row in llm.scores[:len(args["tokens"])]]))
"""


def golden(name: str, folder: Path) -> tuple[dict, np.ndarray]:
    """(the file's record, our logits) for format `name`'s tiny llama."""
    path = folder / f"llama-{name}.gguf"
    write_model(path, "llama", name, tied=False)
    model = Model.load(path, n_ctx=64, n_threads=2)
    tokens = model.tokenize(PROMPT)
    theirs = np.array(run_child(ensure_llama_cpp(), LLAMA_SCRIPT, dict(path=str(path), tokens=tokens)), np.float32)
    top = np.argsort(-theirs, axis=1, kind="stable")[:, :TOP]
    record = {"format": name, "sha256": sha256_file(path), "prompt": PROMPT, "tokens": tokens,
              "spread": float(theirs.max() - theirs.min()),
              "top": [[[int(i), float(row[i])] for i in ids] for row, ids in zip(theirs, top, strict=True)]}
    ours = model.logits(tokens)
    gap = float(np.abs(ours - theirs).max()) / record["spread"]
    agree = int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
    print(f"{name}: gap {gap:.4f} of the spread {record['spread']:.2f}, argmax {agree}/{len(tokens)}", file=sys.stderr)
    return record, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated format names")
    parser.add_argument("-n", "--dry-run", action="store_true", help="compare only, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name in args.formats.split(","):
            record, _ = golden(name, Path(folder))
            if not args.dry_run:
                OUT_DIR.mkdir(parents=True, exist_ok=True)
                (OUT_DIR / f"llama-{name}.json").write_text(json.dumps(record, indent=None) + "\n")


if __name__ == "__main__":
    main()
