from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli import main
from runtime.errors import LlamapyzError
from tests.conftest import golden
from tests.synth import write_gguf, write_model


@pytest.fixture
def small_path(small_gguf) -> Path:
    return small_gguf[0]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_inspect_prints_metadata_and_tensor_table(small_path):
    result = run("inspect", str(small_path))
    assert result.exit_code == 0, result.output
    assert "GGUF v3" in result.output and "4 tensors" in result.output
    assert "test.strings" in result.output and "ARRAY[STRING]" in result.output
    assert any(line.split()[1:4] == ["q4_k", "Q4_K", "256x2"] for line in result.output.splitlines()
               if line.strip()[:1].isdigit())


def test_inspect_json_is_complete_and_machine_readable(small_path):
    result = run("inspect", "--json", str(small_path))
    report = json.loads(result.output)
    assert report["version"] == 3
    tensors = {t["name"]: t for t in report["tensors"]}
    assert tensors["q4_k"] == {"name": "q4_k", "type": "Q4_K", "shape": [256, 2], "n_elements": 512,
                               "n_bytes": 288, "offset": tensors["q4_k"]["offset"]}
    assert report["metadata"]["test.u64"] == {"type": "UINT64", "value": 2**63 + 5}
    assert report["metadata"]["test.nested"]["value"] == [[1, 2], [3], [4, 5, 6]]


def test_inspect_truncates_long_arrays_unless_asked(tmp_path):
    path = tmp_path / "long.gguf"
    write_gguf(path, {}, metadata={"long": ("array", list(range(100)))})
    short = json.loads(run("inspect", "--json", str(path)).output)["metadata"]["long"]
    assert short["length"] == 100 and short["truncated"] and len(short["value"]) < 100
    full = json.loads(run("inspect", "--json", "--full-arrays", str(path)).output)["metadata"]["long"]
    assert full["value"] == list(range(100)) and not full["truncated"]


def test_corrupt_file_gives_one_line_and_a_hint_not_a_traceback(small_path):
    small_path.write_bytes(small_path.read_bytes()[:200])
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "inspect", str(small_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and str(small_path) in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_option_errors_are_one_error_line_and_a_hint(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "runtime.cli", "inspect", str(tmp_path / "nope.gguf")],
                             capture_output=True, text=True)
    unknown = subprocess.run([sys.executable, "-m", "runtime.cli", "serve", "-m", "x.gguf", "--no-such-flag"],
                             capture_output=True, text=True)
    for result, what in ((missing, "does not exist"), (unknown, "No such option '--no-such-flag'")):
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("error: ") and what in lines[0] and lines[1].startswith("hint: ")
        assert "Usage:" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.real_model
def test_tokenize_prints_the_llama_cpp_ids(smollm2_path):
    for case in golden("smollm2")["tokenize"][6:12]:
        out = run("tokenize", "-m", str(smollm2_path), case["text"])
        assert json.loads(out.output) == case["add_special_parse_special"]
        out = run("tokenize", "-m", str(smollm2_path), "--no-bos", "--no-special", case["text"])
        assert json.loads(out.output) == case["no_special_no_parse"]


@pytest.mark.real_model
def test_tokenize_no_bos_drops_gemma_bos(gemma3_path):
    with_bos = json.loads(run("tokenize", "-m", str(gemma3_path), "Hello world").output)
    without = json.loads(run("tokenize", "-m", str(gemma3_path), "--no-bos", "Hello world").output)
    assert with_bos == [2, *without]


def test_console_script_and_help():
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "inspect" in result.stdout and "tokenize" in result.stdout
    version = run("--version")
    assert version.exit_code == 0 and "llamapyz, version" in version.output


def test_run_streams_text_and_reports_speed(tmp_path):
    from tests.synth import write_model

    path = tmp_path / "tiny.gguf"
    write_model(path)
    result = CliRunner().invoke(main, ["run", "-m", str(path), "-p", "the cat", "-n", "8", "--temp", "0", "-t", "1",
                                       "-c", "64"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the cat") and len(result.stdout) > len("the cat")
    assert "tok/s" in result.stderr and "1 threads" in result.stderr
    chat = CliRunner().invoke(main, ["run", "-m", str(path), "-p", "hi", "-n", "4", "--chat", "--seed", "1"])
    assert chat.exit_code == 0, chat.output


def test_run_with_an_unknown_architecture_fails_cleanly(tmp_path):
    path = tmp_path / "base.gguf"
    write_gguf(path, {"w": ("F32", (2, 8))}, metadata={}, arch="mamba")
    result = CliRunner().invoke(main, ["run", "-m", str(path), "-p", "x"])
    assert result.exit_code == 1
    assert "error: model architecture 'mamba' is not supported" in result.stderr
    assert "Traceback" not in result.output


def test_serve_refuses_clearly(tmp_path):
    import socket

    missing = run("serve", "-m", str(tmp_path / "nope.gguf"), "--nobrowser")
    assert missing.exit_code == 1 and "error:" in missing.output and "Traceback" not in missing.output
    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run("serve", "-m", str(model), "--port", str(port), "--nobrowser")
    assert taken.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.output and "--port" in taken.output


def test_serve_ends_with_the_error_when_the_model_cannot_load(tmp_path):
    """A loading failure used to leave /health saying "loading model" forever (the loader thread died);
    a context the machine cannot hold was a MemoryError there. Now: one error line, a hint, exit 1."""
    from tests.live_server import free_port

    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "serve", "-m", str(model), "-c", "999999999",
                             "--nobrowser", "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "error: the model could not be loaded: a context of 999999999 tokens needs" in result.stderr
    assert "hint: use a smaller context (-c N)" in result.stderr and "Traceback" not in result.stderr


def test_api_key_file_is_read_and_checked(tmp_path):
    from runtime.serve_cli import read_api_key

    key_file = tmp_path / "key"
    key_file.write_text("s3cret  with spaces\nsecond line\n")
    assert read_api_key(str(key_file), given=None) == "s3cret  with spaces"  # the line ending only
    (tmp_path / "empty").write_text("\n")
    for path, given, what in ((key_file, "other", "both --api-key and --api-key-file"),
                              (tmp_path / "empty", None, "is empty"), (tmp_path / "none", None, "cannot read")):
        with pytest.raises(LlamapyzError, match=what):
            read_api_key(str(path), given=given)


def test_build_subcommand_is_build_py():
    result = run("build", "--help")
    assert result.exit_code == 0
    assert "Usage: llamapyz build" in result.output and "--args" in result.output and "--model" in result.output


def test_inspect_shows_whether_the_architecture_is_supported(tmp_path):
    good, extra = tmp_path / "good.gguf", tmp_path / "extra.gguf"
    write_model(good, "qwen2")
    write_model(extra, "llama", extra=("blk.0.foo.weight",))
    assert "architecture: qwen2: supported" in run("inspect", str(good)).output
    result = run("inspect", str(extra))
    assert result.exit_code == 0
    assert "architecture: llama: not supported: blk.0.foo.weight is not used by architecture llama" in result.output
    report = json.loads(run("inspect", "--json", str(extra)).output)["architecture"]
    assert report == {"name": "llama", "supported": False,
                      "problem": "blk.0.foo.weight is not used by architecture llama"}


def test_serve_guard_options_reach_the_server(tmp_path, monkeypatch):
    """--body-timeout-s, --allowed-host and --cors-origin (repeatable) from the command line into ServeOptions;
    the archive's command line (and the .args baked into it) takes the same options."""
    import runtime.server
    from runtime.cli import archive_command
    from tests.live_server import free_port

    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    given = []
    monkeypatch.setattr(runtime.server, "serve", lambda options, say: given.append(options))
    args = ["--body-timeout-s", "2.5", "--allowed-host", "llm.example", "--allowed-host", "*.lan",
            "--cors-origin", "https://app.example/", "--cors-origin", "*"]
    result = run("serve", "-m", str(model), "--nobrowser", "--port", str(free_port()), *args)
    assert result.exit_code == 0, result.output
    options = given[0]
    assert options.body_timeout_s == 2.5 and options.allowed_hosts == ("llm.example", "*.lan")
    assert options.cors_origins == ("https://app.example", "*")  # as browsers send Origin: no final /
    defaults = archive_command.make_context("archive", []).params
    assert defaults["body_timeout_s"] == 30 and defaults["allowed_hosts"] == () == defaults["cors_origins"]
    assert archive_command.make_context("archive", args).params["cors_origins"] == ("https://app.example", "*")
    for bad in (["--cors-origin", "app.example"], ["--cors-origin", "https://app.example/path"],
                ["--body-timeout-s", "0"]):
        refused = run("serve", "-m", str(model), *bad)
        assert refused.exit_code == 1 and "error: Invalid value for" in refused.output, bad
    help_text = run("serve", "--help").output
    for option in ("--body-timeout-s", "--allowed-host", "--cors-origin"):
        assert option in help_text


def test_run_offloads_with_ngl_and_says_so(tmp_path):
    """Under the tests' CUDA simulator: the offload line; with the simulator off and no driver (CI): one
    warning, then the CPU."""
    import os

    path = tmp_path / "small.gguf"
    write_model(path, small=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the simulator polls its threads: see tests/test_gpu_offload.py
    try:
        result = run("run", "-m", str(path), "-p", "the", "-n", "2", "--temp", "0", "-t", "1", "-c", "32", "-ngl", "-1")
    finally:
        sys.setswitchinterval(interval)
    assert result.exit_code == 0, result.output
    assert "offloaded 2/2 layers and the output layer to GPU (numba's CUDA simulator, " in result.stderr
    assert result.stdout.startswith("the") and len(result.stdout) > len("the\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "run", "-m", str(path), "-p", "the", "-n", "2",
                           "-t", "1", "-c", "32", "-ngl", "99", "--main-gpu", "0"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: no NVIDIA GPU or driver found; running all layers on the CPU"]
