"""`python build.py`: the default model's `.pyz`, built once, run the way a colleague runs it (a bare Python,
an empty environment), and checked from outside."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from llamapyz.archive.launcher import open_bundle
from llamapyz.bundler import bytecode
from llamapyz.machine.cpu import choose, detect, runnable
from tests.live_server import ServerProcess, build, in_env
from tests.live_server import run_archive as run
from tests.synth import write_gguf

REPO = Path(__file__).resolve().parents[1]
BAKED = "-c 1024 --temp 0.3 -np 2"

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The default model's archive, with baked-in arguments."""
    out = tmp_path_factory.mktemp("build") / "smollm2.pyz"
    result = build("-o", str(out), "--args", BAKED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "[4/4]" in result.stderr and "SmolLM2-135M-Instruct.Q4_1.gguf: 94/94 MiB" in result.stderr  # bytes copied
    return out


def test_the_archive_is_an_executable_zipapp_with_the_weights_aligned_before_the_zip(archive):
    assert archive.read_bytes()[:23] == b"#!/usr/bin/env python3\n"
    assert os.access(archive, os.X_OK)
    bundle = open_bundle(archive)
    (model,) = bundle.models
    assert model.offset % 65536 == 0 and (model.alias, model.settings) == ("smollm2", {})
    assert bundle.manifest["args"] == [*BAKED.split(), "..."]
    assert model.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert names == sorted(names) and model.file not in names  # the weights precede the zip
        assert model.offset + model.size <= min(i.header_offset for i in zf.infolist())
        for needed in ("__main__.py", "_bootstrap/__init__.py", "environment.json", "site-packages/numba/__init__.py",
                       "site-packages/llamapyz/cli/main.py", "site-packages/webui/index.html"):
            assert needed in names
        sources = [n for n in names if n.startswith("site-packages/llamapyz/") and n.endswith(".py")]
        for source in sources:  # bytecode beside every module, hash-checked (PEP 552: flags 3), not timestamped
            pyc = zf.read(bytecode.pyc_name(source))
            assert pyc[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(pyc[4:8], "little") == 3
        kernels = [n for n in names if n.startswith("site-packages/llamapyz/kernels/__pycache__/")]
        assert [n for n in kernels if n.endswith(".nbi")] and [n for n in kernels if n.endswith(".nbc")]
    (target,) = bundle.manifest["targets"].values()  # this interpreter on this machine
    assert target["kernels"] == [t.name for t in runnable(detect())]  # every tier this machine runs
    for tier in target["kernels"]:
        assert any(n.split("/")[-1].startswith(f"warm-{tier}-") for n in kernels), tier
    wheels = {w["name"].lower(): w for w in target["wheels"]}
    assert {"numpy", "numba", "llvmlite", "starlette", "uvicorn", "click", "jinja2"} <= wheels.keys()
    assert all(w["tags"] for w in wheels.values())


def test_the_same_inputs_build_the_same_bytes_but_for_numbas_machine_code(archive, tmp_path):
    """numba's cached kernels name internal symbols after object addresses, so they (and the build id that
    hashes them, in environment.json) differ between builds; every other byte is the same."""
    again = tmp_path / archive.name
    result = build("-o", str(again), "--args", BAKED)
    assert result.returncode == 0, result.stderr
    first, second = zip_entries(archive), zip_entries(again)
    assert list(first) == list(second)
    differ = {name for name in first if first[name] != second[name]}
    assert differ <= {"environment.json"} | {name for name in first if name.endswith(".nbc")}
    assert archive.read_bytes()[:1 << 20] == again.read_bytes()[:1 << 20]  # header, weights' start


def zip_entries(path: Path) -> dict[str, tuple[int, int, tuple, int]]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (i.CRC, i.file_size, i.date_time, i.external_attr) for i in zf.infolist()}


def test_it_serves_from_a_bare_python_with_the_weights_mapped_in_place(archive, bare):
    from openai import OpenAI

    (model,) = open_bundle(archive).models
    env = {**bare, "PYTHONUNBUFFERED": "1"}
    with ServerProcess(None, "-t", "2", "--temp", "0.5", "-ngl", "99", launcher=in_env(env, str(archive))) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(model="smollm2", max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": "What is 2 + 2?"}])
        assert reply.choices[0].message.content.strip() and reply.model == "smollm2"
        props = httpx.get(f"{server.url}/props").json()
        assert props["n_ctx"] == 1024  # baked in
        assert props["gpu"]["n_gpu_layers"] == 0 and props["gpu"]["warning"].startswith("numba-cuda is not installed")
        assert props["default_generation_settings"]["temperature"] == 0.5  # the command line overrides
        page = httpx.get(f"{server.url}/")
        assert page.status_code == 200 and 'id="new-chat"' in page.text  # the web UI travelled too

        pid = server_pid(server)
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mapped = [line.split() for line in maps if line.endswith(str(archive))]
        weights = [m for m in mapped if int(m[2], 16) == model.offset]
        assert weights, "the weights are not mapped from the archive:\n" + "\n".join(maps)
        start, end = (int(x, 16) for x in weights[0][0].split("-"))
        assert end - start >= model.size and weights[0][1].startswith("r")

        cache = Path(bare["HOME"]) / ".cache" / "llamapyz" / "pyz"
        extracted = [p for p in cache.rglob("*") if p.is_file()]
        assert any(p.name == "main.py" and p.parent.name == "cli" for p in extracted)
        copies = [p for p in extracted if p.stat().st_size == model.size or p.read_bytes()[:4] == b"GGUF"]
        assert not copies, f"weights copied into the cache: {copies}"
    assert "first run of this archive: unpacking" in server.output
    target = choose(detect())
    assert props["cpu_tier"] == target.name and f"cpu: {target.describe()}" in server.output
    assert "compiling the kernels" not in server.output  # an empty cache, yet precompiled kernels loaded
    assert server.output.count("; running all layers on the CPU") == 1  # -ngl 99 on a machine without a GPU


def server_pid(server: ServerProcess) -> int:
    """`env` execs the archive, which execs nothing more: the child's pid is the server's."""
    pid = server.process.pid
    assert "python" in Path(f"/proc/{pid}/exe").resolve().name
    return pid


def test_version_is_fast_and_verify_catches_one_flipped_byte(archive, bare, tmp_path):
    started = time.perf_counter()
    result = run(archive, bare, "--version")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0 and result.stdout.startswith("llamapyz ") and "smollm2" in result.stdout
    assert elapsed < 1.0, f"--version took {elapsed:.2f} s"

    result = run(archive, bare, "--verify")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "OK", result.stdout + result.stderr

    damaged = tmp_path / "damaged.pyz"
    shutil.copy2(archive, damaged)
    (model,) = open_bundle(damaged).models
    with open(damaged, "r+b") as f:
        f.seek(model.offset + 1234567)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x80]))
    result = run(damaged, bare, "--verify")
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAILED {model.file} (smollm2): sha256 ")


def test_help_lists_the_options_and_the_baked_in_arguments(archive, bare):
    result = run(archive, bare, "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--model", "-ngl", "--host", "--port", "--threads", "--ctx-size", "--parallel", "--api-key",
                   "--nobrowser", "--verify", "--version"):
        assert option in result.stdout
    assert f"Baked in at build time: {BAKED}" in " ".join(result.stdout.split())


def test_two_first_runs_at_once_share_one_extraction(archive, bare, tmp_path):
    env = {**bare, "HOME": str(tmp_path)}  # an empty cache
    command = in_env(env, str(archive), "--help")
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in runs:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and "--verify" in out, err
    (target,) = (tmp_path / ".cache" / "llamapyz" / "pyz").iterdir()  # this interpreter's, e.g. cp311-linux-x86_64
    assert [p.name.split("_")[0] for p in target.iterdir() if not p.name.startswith(".")] == ["smollm2.pyz"]
    later = run(archive, env, "--help")
    assert later.returncode == 0 and "first run" not in later.stderr


def test_build_validates_and_bundles_a_local_model_under_its_own_name(tmp_path):
    """A GGUF path instead of a registry name: validated with our tokenizer, archived as STEM.pyz here."""
    from tests.test_tokenizer import bpe_metadata

    path = tmp_path / "tiny.gguf"
    md = bpe_metadata()
    write_gguf(path, {"token_embd.weight": ("Q8_0", (4, 32))}, metadata={
        key: (kind, md[key]) for key, kind in [("tokenizer.ggml.model", "string"), ("tokenizer.ggml.pre", "string"),
                                               ("tokenizer.ggml.tokens", "array"), ("tokenizer.ggml.merges", "array")]})
    result = build("--model", str(path), "--cpu-tiers", "none", cwd=tmp_path)  # tokens only: no model to run
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tiny.pyz" and "gpt2 tokenizer" in result.stderr
    bundle = open_bundle(tmp_path / "tiny.pyz")
    assert bundle.manifest["name"] == "tiny" and [(m.file, m.alias) for m in bundle.models] == [("tiny.gguf", "tiny")]
    assert bundle.manifest["args"] == ["..."]


def test_build_refuses_an_unknown_model_with_a_hint():
    result = build("--model", "no-such-model")
    assert result.returncode == 1
    assert "\nerror: 'no-such-model' is neither a GGUF file nor a known model" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_build_refuses_to_replace_what_is_not_a_file(tiny_llama, tmp_path):
    """The archive is renamed into place: `-o /dev/null` would replace the device (a FIFO stands in for it)."""
    fifo = tmp_path / "null"
    os.mkfifo(fifo)
    result = build("--model", str(tiny_llama), "-o", str(fifo), "--cpu-tiers", "none")
    assert result.returncode == 1 and f"error: -o {fifo}: not a regular file" in result.stderr
    assert fifo.is_fifo() and "[2/4]" not in result.stderr


def test_build_checks_the_baked_in_arguments(tmp_path):
    result = build("-o", str(tmp_path / "x.pyz"), "--args", "-c 4096 --tmep 0.7")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: --args: No such option" in result.stderr and "--tmep" in result.stderr
    assert "'--temp'" in result.stderr  # click's suggestion
    assert not (tmp_path / "x.pyz").exists()


def test_baked_arguments_get_the_user_slot_and_a_key_gets_a_warning():
    from llamapyz.bundler.builder import bake_args

    lines: list[str] = []
    assert bake_args(["-c", "4096"], say=lines.append) == ["-c", "4096", "..."]
    assert bake_args(["...", "--nobrowser"], say=lines.append) == ["...", "--nobrowser"]
    assert not lines
    assert bake_args(["--api-key", "sesame"], say=lines.append)[-1] == "..."
    assert len(lines) == 1 and "can be read by anyone" in lines[0]
