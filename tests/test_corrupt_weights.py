"""A model whose weights hold NaN or inf (a corrupt file the GGUF reader cannot tell from a good one): refused at
load where that can be seen cheaply, else a clear error for the request that meets it; never an IndexError
from the sampler, a 500 from NaN in JSON, or a traceback from `llamapyz run` (issue 27).

Where the NaN is, and what finds it:
- a norm (any F32/F16/BF16 vector, decoded at load): loading, naming the tensor;
- a row of the output layer (a quantized matrix every forward pass reads whole): the server's warm-up, whose
  logits are checked; `llamapyz run` at its first token;
- one token's embedding row (read only when that token is): the request whose prompt holds that token, when
  the NaN reaches its logits (a quantized matrix's kernel, multiplying int8 activations, makes zeros of a NaN
  hidden state: garbage, not an error; an F32 model's float kernels keep the NaN).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from llamapyz import Model
from llamapyz.cli.main import main
from llamapyz.errors import GGUFError, NonFiniteError
from llamapyz.gguf.reader import load_gguf
from llamapyz.tokenizer import Tokenizer
from tests.live_server import ServerThread, free_port
from tests.synth import write_model

N_CTX = 64
POISONED = "Q"  # a token the server's warm-up ("Hello, world.") does not use


def poison(path: Path, tensor: str, row: int = 0, value: float = np.nan) -> None:
    """Write `value` over the first float of `tensor`'s row `row`: the element of an F32 tensor, the f16 scale
    of the row's first block of a Q8_0 one."""
    with load_gguf(path) as g:
        t = g.tensor(tensor)
        at = g.data_offset + t.offset + row * t.raw.shape[1]
        data = {"F32": np.float32(value), "Q8_0": np.float16(value)}[t.type_name].tobytes()
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def token_of(path: Path, text: str) -> int:
    (token,) = Tokenizer.from_gguf(path).encode(text, add_special=False)
    return token


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny llamas with NaN in a norm, inf in a norm, NaN in a row of the output layer, NaN in one token's
    embedding row."""
    root = tmp_path_factory.mktemp("corrupt")
    paths = {name: root / f"{name}.gguf" for name in ("norm", "norm_inf", "output", "embedding")}
    for name, path in paths.items():  # untied where token_embd must be read a row at a time; F32 where the NaN
        # must reach the logits (the int8 activations of a quantized matrix's kernel turn NaN into zeros)
        write_model(path, "llama", "F32" if name == "embedding" else "Q8_0", tied=name not in ("output", "embedding"))
    poison(paths["norm"], "blk.1.ffn_norm.weight", row=0)
    poison(paths["norm_inf"], "output_norm.weight", value=np.inf)
    poison(paths["output"], "output.weight", row=7)
    poison(paths["embedding"], "token_embd.weight", row=token_of(paths["embedding"], POISONED))
    return paths


def test_a_non_finite_norm_is_refused_at_load_naming_the_tensor(models):
    for name, tensor in (("norm", "blk.1.ffn_norm.weight"), ("norm_inf", "output_norm.weight")):
        with pytest.raises(GGUFError) as caught:
            Model.load(models[name], n_ctx=N_CTX, n_threads=1)
        assert f"tensor '{tensor}' holds NaN or infinite values" in str(caught.value)
        assert "corrupt" in caught.value.hint


def test_a_non_finite_output_row_is_refused_by_the_servers_warm_up(models):
    from llamapyz.server import ServeOptions, create_server, load_engine

    options = ServeOptions(model=models["output"], port=free_port(), open_browser=False, n_ctx=N_CTX, n_slots=1)
    state, _ = create_server(options, say=lambda text: None)
    load_engine(options, state, say=lambda text: None)
    served = state.pool.default
    assert served.engine is None
    assert served.load_error == ("the model computed NaN or infinite logits for a test prompt: its weights hold NaN "
                                 "or infinite values")
    assert "corrupt" in served.load_hint


def test_serve_ends_with_one_error_line_for_a_model_with_nan_weights(models):
    import subprocess
    import sys

    for name in ("norm", "output"):
        result = subprocess.run([sys.executable, "-m", "llamapyz", "serve", "-m", str(models[name]), "-c", "64",
                                 "--nobrowser", "--port", str(free_port())], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1, result.stderr
        error, hint = result.stderr.strip().splitlines()[-2:]
        assert error.startswith("error: the model could not be loaded: ") and "NaN or infinite" in error, error
        assert hint.startswith("hint: ") and "corrupt" in hint and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def nan_row_server(models):
    with ServerThread(models["embedding"], n_ctx=N_CTX, n_slots=2) as live:
        yield live


def post(server: ServerThread, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, content=json.dumps(body), timeout=30,
                      headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("temperature", [0, 0.8])
@pytest.mark.parametrize("stream", [False, True])
def test_a_request_that_meets_a_nan_row_ends_with_a_clear_error(nan_row_server, temperature, stream):
    body = {"prompt": f"a {POISONED} b", "max_tokens": 4, "temperature": temperature, "stream": stream}
    response = post(nan_row_server, "/v1/completions", body)
    if stream:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        error = events[-1]["error"]
    else:
        assert response.status_code == 500
        error = response.json()["error"]
    assert error["code"] == "non_finite_output" and error["type"] == "server_error"
    assert error["message"].startswith("the model computed NaN or infinite logits: its weights hold NaN or infinite "
                                       "values (the model file is corrupt")
    # the server is unharmed: a prompt without that token is answered
    fine = post(nan_row_server, "/v1/completions", {"prompt": "a b", "max_tokens": 4, "temperature": temperature})
    assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] == 4


def test_an_embedding_that_meets_a_nan_row_is_a_clear_error_not_nan_in_json(nan_row_server):
    response = post(nan_row_server, "/v1/embeddings", {"input": ["a b", f"a {POISONED}"]})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "non_finite_output" and "embedding" in error["message"]
    fine = post(nan_row_server, "/v1/embeddings", {"input": "a b"})
    assert fine.status_code == 200 and np.isfinite(fine.json()["data"][0]["embedding"]).all()


@pytest.mark.parametrize(("model", "prompt", "words"), [
    ("norm", "a b", "tensor 'blk.1.ffn_norm.weight' holds NaN or infinite values"),
    ("output", "a b", "the model computed NaN or infinite logits"),
    ("embedding", f"a {POISONED}", "the model computed NaN or infinite logits"),
])
@pytest.mark.parametrize("temperature", ["0", "0.8"])
def test_llamapyz_run_says_so_in_one_line_and_a_hint(models, model, prompt, words, temperature):
    result = CliRunner().invoke(main, ["run", "-m", str(models[model]), "-p", prompt, "-n", "4", "-t", "1",
                                       "-c", str(N_CTX), "--temp", temperature])
    assert result.exit_code == 1
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: ") and words in error, result.stderr
    assert hint.startswith("hint: ") and "corrupt" in hint
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if model != "norm":  # the prompt was echoed: its line ends before the error's
        assert result.stdout == f"{prompt}\n"


def test_the_sampler_never_fails_on_nan_with_an_index_error():
    from llamapyz.decode.sampling import SamplingParams, sample

    logits = np.array([1.0, np.nan, 0.5], np.float32)
    with pytest.raises(NonFiniteError):
        sample(logits, SamplingParams(temperature=0.8), np.random.default_rng(0))
