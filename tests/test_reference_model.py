"""The numpy reference forward pass agrees with llama.cpp as ../shared/golden/README.md prescribes:
teacher-forced argmax equals the reference token wherever llama.cpp's top-1 margin is >= 0.5 (all such
positions on short prompts, >= 95% on long ones), and first-step logits are within 0.75 (short) / 1.25 (long).
"""

from __future__ import annotations

import numpy as np
import pytest

from llamapyz.model.reference import ReferenceModel
from tests.conftest import golden

SURE_MARGIN = 0.5
LONG_PROMPT = 512  # tokens: past the sliding window


@pytest.fixture(scope="module")
def reference(real_model) -> tuple[str, ReferenceModel]:
    name, path = real_model
    return name, ReferenceModel(path)


@pytest.mark.real_model
@pytest.mark.slow
def test_teacher_forced_agreement_with_llama_cpp(reference):
    name, model = reference
    for case in golden(name)["greedy"]:
        prompt, expected = case["prompt_tokens"], case["tokens"]
        logits = model.logits(prompt + expected)
        assert logits.shape == (len(prompt) + len(expected), len(model.output))
        predicted = logits[len(prompt) - 1:len(prompt) - 1 + len(expected)].argmax(axis=-1)
        sure = np.array(case["top1_margin"]) >= SURE_MARGIN
        agreement = (predicted == np.array(expected))[sure].mean()
        long = len(prompt) > LONG_PROMPT
        assert agreement >= (0.95 if long else 1.0), (case["prompt"][:40], agreement)
        first = logits[len(prompt) - 1]
        gap = max(abs(first[token] - logit) for token, logit in case["top20_logits_first_step"])
        assert gap <= (1.25 if long else 0.75), (case["prompt"][:40], gap)
