"""Every architecture against llama.cpp, on models derived from the real models' weights (tests/dress.py).

llama.cpp's outputs for each (family, quant) are committed in tests/data/arch/ (made by
bench/arch_golden.py with llama-cpp-python built from source). Teacher-forced over each case's prompt +
llama.cpp's greedy tokens in one pass, our argmax must equal llama.cpp's token at >= 99% of the positions
where llama.cpp's top-1 margin is >= 0.5 (the golden README's gate, ../shared/golden/README.md; measured:
100% on every file), and the first-step logits of the listed top-20 ids must be near llama.cpp's:
- F16 files take our float path (no int8 activations on either side): within 0.25 (measured <= 0.08 on
  every prompt and family). This is the tight check of each architecture's arithmetic.
- Q8_0 and Q4_K_M files quantize activations to int8 blocks on both sides, the same way (kernels/matvec.py),
  but a value that sits on a rounding boundary rounds apart after any upstream difference, and moves a
  logit: within 1.0 on short prompts (measured up to 0.86 on 2 of 40 short cases, the others <= 0.66; the
  golden README's 0.75 was measured for a float reference) and 1.25 on the long prompt (README's figure;
  it runs past gemma2's sliding window, phi3's original context and its ignored window).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bundler.models import sha256_file
from runtime import Model
from runtime.cli import main
from tests.dress import FAMILIES, QUANTS, derived_path

DATA = Path(__file__).resolve().parent / "data" / "arch"
SURE_MARGIN = 0.5
LONG_PROMPT = 512
pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def golden(family: str, quant: str) -> dict:
    return json.loads((DATA / f"{family}-{quant}.json").read_text())


@pytest.fixture(scope="module")
def derived():
    def get(family: str, quant: str) -> Path:
        path = derived_path(family, quant)
        expected = golden(family, quant)["sha256"]
        assert sha256_file(path) == expected, (
            f"{path.name} is not the file llama.cpp's outputs were made on: tests/dress.py or tests/quantize.py "
            "changed; regenerate with `python bench/arch_golden.py`")
        return path
    return get


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_agrees_with_llama_cpp(derived, family, quant):
    path, cases = derived(family, quant), golden(family, quant)["cases"]
    models: dict[int, Model] = {}
    agree = sure = 0
    for case in cases:
        n_ctx = case["n_ctx"]
        if n_ctx not in models:
            models[n_ctx] = Model.load(path, n_ctx=n_ctx, n_threads=2)
        prompt, expected = case["prompt_tokens"], case["tokens"]
        logits = models[n_ctx].logits(prompt + expected)
        predicted = logits[len(prompt) - 1:len(prompt) - 1 + len(expected)].argmax(axis=-1)
        mask = np.array(case["top1_margin"]) >= SURE_MARGIN
        agree += int((predicted == np.array(expected))[mask].sum())
        sure += int(mask.sum())
        first = logits[len(prompt) - 1]
        gap = max(abs(first[token] - logit) for token, logit in case["top20_logits_first_step"])
        bound = 0.25 if quant == "F16" else 1.25 if len(prompt) > LONG_PROMPT else 1.0
        assert gap <= bound, (case["prompt"][:40], n_ctx, gap)
    assert sure >= 40  # enough sure positions for the rate to mean something
    assert agree / sure >= 0.99, (agree, sure)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chat_reply_has_no_template_markup(derived, family):
    path = derived(family, "Q8_0")
    model = Model.load(path, n_ctx=512)
    markup = {"<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|end|>", "<|start_header_id|>",
              "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>"}
    assert model.chat_template.origin == "model" and model.chat_template.end_of_turn
    run = CliRunner().invoke(main, ["run", "-m", str(path), "--chat", "-p", "What is the tallest mountain in the "
                                    "world?", "-n", "48", "--temp", "0", "-c", "512"])
    assert run.exit_code == 0, run.output
    reply = run.stdout
    assert reply.strip(), run.output
    assert not [m for m in markup if m in reply], reply
