"""Sampling and generation: samplers on hand-made logits, the generator's contracts on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from llamapyz import Model
from llamapyz.decode.generation import StopMatcher, generate
from llamapyz.decode.sampling import SamplingParams, apply_penalties, candidates, sample
from tests.synth import write_model

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03], np.float32))


def test_filters_keep_what_they_should():
    ids, probs = candidates(LOGITS, SamplingParams(top_k=3))
    assert ids.tolist() == [0, 1, 2] and probs.sum() == pytest.approx(1.0)
    assert candidates(LOGITS, SamplingParams(top_p=0.7))[0].tolist() == [0, 1]
    assert candidates(LOGITS, SamplingParams(top_p=0.75))[0].tolist() == [0, 1]
    assert candidates(LOGITS, SamplingParams(top_p=0.76))[0].tolist() == [0, 1, 2]
    assert candidates(LOGITS, SamplingParams(min_p=0.2))[0].tolist() == [0, 1, 2]


def test_sampling_follows_the_distribution_and_the_seed():
    params = SamplingParams(temperature=1.0, seed=3)
    draws = [sample(LOGITS, params, np.random.default_rng(i)) for i in range(4000)]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, np.exp(LOGITS) / np.exp(LOGITS).sum(), atol=0.03)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [sample(LOGITS, params, rng_a) for _ in range(50)] == [sample(LOGITS, params, rng_b) for _ in range(50)]
    assert sample(LOGITS, SamplingParams(temperature=0.0), np.random.default_rng()) == 0
    cold = [sample(LOGITS, SamplingParams(temperature=0.05), np.random.default_rng(i)) for i in range(200)]
    assert set(cold) == {0}


def test_penalties():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    apply_penalties(logits, [0, 1, 0], SamplingParams(repeat_penalty=2.0))
    np.testing.assert_allclose(logits, [1.0, -4.0, 1.0, 0.5])
    logits = np.zeros(3, np.float32)
    apply_penalties(logits, [2, 2, 1], SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    np.testing.assert_allclose(logits, [0.0, -0.75, -1.0])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_stop_matcher_never_releases_a_stop_string():
    matcher = StopMatcher(["</s>", "STOP"])
    out = [matcher.feed(piece) for piece in ["Hello <", "/", "world", " ST", "O", "P and more"]]
    released = "".join(text for text, _ in out)
    assert released == "Hello </world "
    assert [stopped for _, stopped in out] == [False] * 5 + [True]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Model:
    path = tmp_path_factory.mktemp("gen") / "tiny.gguf"
    write_model(path, "llama", "Q8_0")
    return Model.load(path, n_ctx=128)


def test_generate_yields_tokens_and_text(model):
    prompt = model.tokenize("the cat")
    steps = list(generate(model, prompt, max_tokens=12))
    assert 1 <= len(steps) <= 12
    text = "".join(s.text for s in steps)
    if steps[-1].finish_reason == "length":
        assert len(steps) == 12
        assert text == model.detokenize([s.token for s in steps])
    assert [s.token for s in generate(model, prompt, max_tokens=12)] == [s.token for s in steps]  # greedy


def test_seed_reproduces_and_logprobs_are_reported(model):
    prompt = model.tokenize("the hat")
    run = lambda seed: [s.token for s in generate(model, prompt, 16, temperature=1.5, seed=seed)]  # noqa: E731
    assert run(5) == run(5)
    assert run(5) != run(6) or run(5) != run(7)
    step = next(iter(generate(model, prompt, 1, logprobs=3)))
    assert step.logprob <= 0 and len(step.top_logprobs) == 3
    assert step.top_logprobs[0][0] == step.token  # greedy picks the most likely
    assert step.top_logprobs[0][1] >= step.top_logprobs[1][1] >= step.top_logprobs[2][1]


def test_stop_strings_and_eog(model):
    prompt = model.tokenize("the")
    free = list(generate(model, prompt, 24, temperature=1.0, seed=11))
    text = "".join(s.text for s in free)
    stop = text[5:8]
    if len(stop) == 3:
        stopped = list(generate(model, prompt, 24, temperature=1.0, seed=11, stop=[stop]))
        assert "".join(s.text for s in stopped) == text[:text.find(stop)]
        assert stopped[-1].finish_reason == "stop"
    bias = {model.tokenizer.eos_id: 100.0}
    steps = list(generate(model, prompt, 24, logit_bias=bias))
    assert len(steps) == 1 and steps[0].token == model.tokenizer.eos_id and steps[0].finish_reason == "stop"
    assert steps[0].text == ""


def test_chat_template(model):
    tokens = model.chat_tokens([{"role": "user", "content": "hi"}])
    assert model.detokenize(tokens) == "<user>hi|<assistant>"


def test_a_block_said_again_word_for_word_stops_the_text() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    other = call.replace("Paris", "Rome")
    matcher = StopMatcher(["</s>"], block=("<tool_call>", "</tool_call>"))
    text = f"{call}\n{other}\n{call}\n{other}"
    released, stopped = "", False
    for i in range(0, len(text), 3):  # as tokens come
        piece, stopped = matcher.feed(text[i:i + 3])
        released += piece
        if stopped:
            break
    assert stopped and released == f"{call}\n{other}\n" and matcher.matched == call
    plain = StopMatcher(["</s>"])  # without a block, repeats are text like any other
    assert plain.feed(text) == (text, False)
