from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from llamapyz.__main__ import main
from llamapyz.errors import LlamapyzError
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
    result = subprocess.run([sys.executable, "-m", "llamapyz", "inspect", str(small_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and str(small_path) in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_option_errors_are_one_error_line_and_a_hint(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "llamapyz", "inspect", str(tmp_path / "nope.gguf")],
                             capture_output=True, text=True)
    unknown = subprocess.run([sys.executable, "-m", "llamapyz", "serve", "-m", "x.gguf", "--no-such-flag"],
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
    result = subprocess.run([sys.executable, "-m", "llamapyz", "--help"], capture_output=True, text=True)
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
    result = subprocess.run([sys.executable, "-m", "llamapyz", "serve", "-m", str(model), "-c", "999999999",
                             "--nobrowser", "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "error: the model could not be loaded: a context of 999999999 tokens needs" in result.stderr
    assert "hint: use a smaller context (-c N)" in result.stderr and "Traceback" not in result.stderr


def test_api_key_file_is_read_and_checked(tmp_path):
    from llamapyz.cli.serving import read_api_key

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
    import llamapyz.server
    from llamapyz.cli.main import archive_command
    from tests.live_server import free_port

    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    given = []
    monkeypatch.setattr(llamapyz.server, "serve", lambda options, say: given.append(options))
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
    done = subprocess.run([sys.executable, "-m", "llamapyz", "run", "-m", str(path), "-p", "the", "-n", "2",
                           "-t", "1", "-c", "32", "-ngl", "99", "--main-gpu", "0"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: no NVIDIA GPU or driver found; running all layers on the CPU"]


# --- issue 27: what a new user and a probe met at start-up ---------------------------------------------------


@pytest.fixture
def no_serving(monkeypatch) -> list:
    """llamapyz.server.serve replaced by a list of the ServeOptions it was given: start-up checks run, no server."""
    import llamapyz.server

    started: list = []
    monkeypatch.setattr(llamapyz.server, "serve", lambda options, say: started.append(options))
    monkeypatch.delenv("LLAMAPYZ_API_KEY", raising=False)
    return started


def test_a_missing_model_file_is_an_error_line_and_a_hint_about_models(tmp_path, no_serving):
    missing = str(tmp_path / "nope.gguf")
    for args in (["run", "-m", missing, "-p", "x"], ["serve", "-m", missing, "--nobrowser"],
                 ["tokenize", "-m", missing, "x"], ["inspect", missing]):
        result = run(*args)
        assert result.exit_code == 1, args
        lines = result.stderr.strip().splitlines()
        assert lines[-2].startswith("error: ") and "nope.gguf" in lines[-2], (args, lines)
        assert lines[-1].startswith("hint: ") and ".gguf" in lines[-1] and "--help" not in lines[-1], (args, lines)
    assert not no_serving


def test_a_file_that_is_not_gguf_is_named_so_not_truncated_or_corrupt(tmp_path, no_serving):
    readme = tmp_path / "README.md"
    readme.write_text("# llamapyz\n\nOne GGUF model, one self-running Python file.\n")
    for args in (["run", "-m", str(readme), "-p", "x"], ["serve", "-m", str(readme), "--nobrowser"]):
        result = run(*args)
        assert result.exit_code == 1
        error, hint = result.stderr.strip().splitlines()[-2:]
        assert error == (f"error: {readme}: not a GGUF file (it starts with b'# llamapyz\\n\\nOne ', a GGUF file "
                         "with b'GGUF')")
        assert hint.startswith("hint: ") and "truncated" not in hint and "corrupt" not in hint


def test_an_error_line_is_capped(tmp_path):
    """A corrupt GGUF's one error line was 3.7 MB (issue 27): here a 1,000,000-character architecture name."""
    path = tmp_path / "odd.gguf"
    write_gguf(path, {"w": ("F32", (2, 8))}, metadata={}, arch="x" * 1_000_000)
    result = run("run", "-m", str(path), "-p", "x")
    assert result.exit_code == 1
    error = result.stderr.strip().splitlines()[-2]
    assert error.startswith("error: ") and "is not supported" not in error and len(error) < 500
    assert error.endswith("more characters)")


@pytest.mark.parametrize(("how", "key", "problem"), [
    ("option", "", "--api-key: the API key is empty"),
    ("env", "", "$LLAMAPYZ_API_KEY: the API key is empty"),
    ("config", "", "the API key is empty"),
    ("option", "   ", "--api-key: the API key is only whitespace"),
    ("option", " s3cret", "--api-key: the API key starts or ends with whitespace"),
    ("env", "s3cret\t", "$LLAMAPYZ_API_KEY: the API key starts or ends with whitespace"),
    ("option", "\ufeffs3cret", "--api-key: the API key starts with a byte order mark"),
    ("file", "\ufeffs3cret", "the API key starts with a byte order mark"),
    ("option", "clé", "--api-key: the API key holds '\\xe9' (character 3), which HTTP headers cannot carry"),
    ("config", "k\u00a0ey", "the API key holds '\\xa0' (character 2)"),
    ("file", "s3cret\x07", "the API key holds '\\x07' (character 7)"),
    ("archive", "", "--api-key: the API key is empty"),  # baked into an archive's .args: its command line
    ("archive", "naïve", "--api-key: the API key holds '\\xef' (character 3)"),
])
def test_an_api_key_no_client_can_send_is_refused_at_start(tmp_path, no_serving, monkeypatch, how, key, problem):
    """An empty key served without one; a key with a BOM, only whitespace or non-ASCII characters started but
    could never match (HTTP headers are ASCII, trimmed): each is refused at start, saying why (issue 27)."""
    from llamapyz.cli.main import archive_command

    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    args = ["-m", str(model), "--nobrowser"]
    if how in ("option", "archive"):
        args += ["--api-key", key]
    elif how == "env":
        monkeypatch.setenv("LLAMAPYZ_API_KEY", key)
    elif how == "file":
        (tmp_path / "key").write_text(key + "\n", encoding="utf-8")
        args += ["--api-key-file", str(tmp_path / "key")]
    else:
        config = tmp_path / "server.json"
        config.write_text(json.dumps({"api_key": key, "models": [{"model": str(model)}]}))
        args = ["--config", str(config), "--nobrowser"]
    command = archive_command if how == "archive" else main
    result = CliRunner().invoke(command, args if how == "archive" else ["serve", *args])
    assert result.exit_code == 1, result.output
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: ") and problem in error and hint.startswith("hint: "), result.stderr
    assert not no_serving  # nothing started


def test_an_api_key_a_client_can_send_is_taken(tmp_path, no_serving, monkeypatch):
    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    for key in ("s3cret", "with inner spaces", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "x" * 4096):
        result = run("serve", "-m", str(model), "--nobrowser", "--api-key", key)
        assert result.exit_code == 0, result.output
        assert no_serving.pop().api_key == key
    monkeypatch.setenv("LLAMAPYZ_API_KEY", "from-env")
    assert run("serve", "-m", str(model), "--nobrowser").exit_code == 0 and no_serving.pop().api_key == "from-env"
    assert run("serve", "-m", str(model), "--nobrowser", "--api-key", "x" * 4097).exit_code == 1


def test_an_api_key_file_must_be_a_regular_file_and_is_never_waited_on(tmp_path):
    """A FIFO as --api-key-file hung the start-up (issue 27): it is refused without being read."""
    import os
    import threading

    from llamapyz.cli.serving import read_api_key

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    outcome: list = []

    def read() -> None:
        try:
            outcome.append(read_api_key(str(fifo), given=None))
        except LlamapyzError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():  # blocked on the FIFO: free it (a writer lets open() return) before failing
        with open(fifo, "w") as writer:
            writer.write("key\n")
        reader.join(timeout=5)
        pytest.fail("read_api_key waited on a FIFO")
    assert isinstance(outcome[0], LlamapyzError) and "is not a regular file" in str(outcome[0])
    with pytest.raises(LlamapyzError, match="is not a regular file"):
        read_api_key(str(tmp_path), given=None)  # a folder


@pytest.mark.parametrize(("option", "value"), [("--repeat-penalty", "0"), ("--top-p", "0"), ("--temp", "5.5"),
                                               ("--min-p", "1.5"), ("-n", "0"), ("--top-k", "-1")])
def test_a_default_sampling_option_the_api_would_refuse_is_refused_at_start(tmp_path, no_serving, option, value):
    """serve --repeat-penalty 0 was taken, then every request that did not set it got a 400 (issue 27): each
    default option's range is the API's own for that field."""
    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    result = run("serve", "-m", str(model), "--nobrowser", option, value)
    assert result.exit_code == 1 and "error: Invalid value for" in result.stderr and option in result.stderr
    assert not no_serving


def test_the_default_sampling_options_bounds_are_the_apis(tmp_path, no_serving):
    """At each bound a default option takes, the API's field and the sampler take the value too."""
    from llamapyz.cli.serving import SERVE_OPTIONS
    from llamapyz.decode.sampling import SamplingParams
    from llamapyz.server.schema import SAMPLING

    fields = {f.name: f for f in SAMPLING}
    options = {o.name: o for o in (make(lambda: None).__click_params__[0] for make in SERVE_OPTIONS)}
    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        bound = options[name].type
        for edge, is_open in ((bound.min, bound.min_open), (bound.max, bound.max_open)):
            if edge is None:
                continue
            value = edge + (1e-6 if edge == bound.min else -1e-6) if is_open else edge
            fields[name].check(value)  # no ApiError
            SamplingParams(**{name: value})  # no ValueError
        if bound.min is not None and bound.min_open:  # the open end itself: the API refuses it too
            with pytest.raises(ValueError):
                SamplingParams(**{name: bound.min})


# `python -m llamapyz ARGS…` that prints every thread's stack on SIGUSR1 (faulthandler, from the signal handler
# itself: it works in the middle of a numba call too), so a child that outlives the wait says where it was
LLAMAPYZ_WITH_STACKS = ("import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1); "
                        "runpy.run_module('llamapyz', run_name='__main__', alter_sys=True)")


def interrupted(args: list[str], started: Callable[[subprocess.Popen], None],
                program: str = LLAMAPYZ_WITH_STACKS) -> tuple[int, str]:
    """Run `llamapyz ARGS…` (or the Python source `program`) as an interactive shell runs a foreground command,
    call `started` with the process once it is under way, then press Ctrl+C (SIGINT, as a terminal sends it); the
    exit code and stderr.

    A foreground command starts with SIGINT at its default; a child inherits an ignored one, though, and pytest
    ignores SIGINT when a script starts it in the background (`pytest … > log &`: POSIX shells without job
    control start asynchronous commands so). Such a `run` would go on streaming after Ctrl+C, and `serve` stop
    without a word (uvicorn re-raises the SIGINT it caught, into the ignored disposition it restored). So the
    child is started while SIGINT has a handler here, which exec resets to the default."""
    import signal

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, "-c", program, *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if inherited is None else inherited)
    try:
        started(process)
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            try:  # whether SIGINT was blocked, ignored or caught (Linux: bit SIGINT - 1 of each mask)
                status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
                masks = " ".join(line for line in status if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
            except OSError:
                masks = "(no /proc)"
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"still running 30 s after Ctrl+C; its signal masks: {masks}; its stderr and stacks:\n"
                        f"{stderr[-20_000:]}")
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_ctrl_c_reaches_the_child_even_where_pytest_ignores_it():
    """What `interrupted` guards against: pytest started in the background by a script ignores SIGINT, and its
    children would too (every Ctrl+C test below then failed, in whole runs started with `&`)."""
    import signal

    waits = "import time; print('ready', flush=True); time.sleep(60)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, stderr = interrupted([], lambda process: process.stdout.readline(), program=waits)
    finally:
        signal.signal(signal.SIGINT, previous)
    # an uncaught KeyboardInterrupt ends Python by SIGINT itself, once its traceback is out
    assert code == -signal.SIGINT and stderr.strip().splitlines()[-1] == "KeyboardInterrupt", (code, stderr)


def test_ctrl_c_while_a_stream_is_open_stops_the_server_with_one_line(tmp_path):
    """Ctrl+C with a reply streaming printed two tracebacks, ~60 lines (uvicorn cancelled the stream after its
    graceful-shutdown timeout): the engines stop first, so the streams end (with an error event: the one in
    the slot and the one queued for it) and so does the process, with one line."""
    import threading

    import httpx

    from tests.live_server import free_port, wait_healthy

    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")
    port = free_port()
    events: list[list[str]] = [[], []]

    def stream(i: int) -> None:
        body = {"prompt": "the cat", "max_tokens": 100_000, "stream": True, "temperature": 0,
                "logit_bias": {"0": -100, "1": -100}}  # no end of generation: it streams until interrupted
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as response:
            events[i].extend(line for line in response.iter_lines() if line.startswith("data: "))

    def started(process: subprocess.Popen) -> None:
        wait_healthy(f"http://127.0.0.1:{port}", 120, alive=lambda: process.poll() is None)
        for i in range(2):  # one slot: the second waits in the queue
            threading.Thread(target=stream, args=(i,), daemon=True).start()
        while not any(events) and process.poll() is None:  # a reply is streaming
            time.sleep(0.05)
        time.sleep(0.5)

    code, stderr = interrupted(["serve", "-m", str(model), "-c", "100000", "-np", "1", "-t", "1", "--nobrowser",
                                "--port", str(port)], started)
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "error: aborted" and code == 1, f"exit code {code}; stderr:\n{stderr}"
    for stream_events in events:  # each client was told, not cut off
        assert stream_events and "shutting down" in stream_events[-1], events


def test_ctrl_c_while_run_streams_is_one_line(tmp_path):
    model = tmp_path / "tiny.gguf"
    write_model(model, "llama", "Q8_0")

    def started(process: subprocess.Popen) -> None:
        process.stdout.read(200)  # the prompt and generated text are coming

    code, stderr = interrupted(["run", "-m", str(model), "-p", "the cat", "-n", "100000", "-c", "100000", "-t", "1",
                                "--temp", "0"], started)  # never ends
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "error: aborted" and code == 1, stderr
