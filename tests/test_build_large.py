"""An archive over 4 GiB (issue 30): the tiny llama padded past 4 GiB with a hole, built for CPython 3.11 and
3.13, and started under each as a colleague would (`./big.pyz --version`, `python3.X big.pyz --verify`, one
chat completion with the weights mapped in place). zipimport before 3.13 reads no ZIP64 record; the weights
sit before the zip, whose own offsets stay small (llamapyz/bundler/zipapp.py). Model and archive are sparse
files: a few hundred MiB on disk, removed afterwards."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llamapyz.archive.launcher import open_bundle
from llamapyz.machine.cpu import choose, detect
from tests.live_server import ServerProcess, bare_python, build, in_env
from tests.portable_python import SUITES, portable_python
from tests.synth import write_model

pytestmark = pytest.mark.slow

GIB = 1 << 30
MODEL_SIZE = 4 * GIB + (16 << 20)  # every byte of the archive after the first 4 GiB belongs to the weights or the zip
PYTHONS = ("3.11", "3.13")  # 3.11's zipimport is the one that failed; 3.13's reads ZIP64
END_RECORD = struct.Struct("<4s4H2LH")  # the zip's end record: signature, disks, counts, directory size, offset


def find_python(version: str) -> str | None:
    """A CPython `version`: this one, Debian's (tests/portable_python.py), or `pythonX.Y` on PATH if it runs."""
    if "{}.{}".format(*sys.version_info[:2]) == version:
        return sys.executable
    if version in SUITES:
        found = portable_python(version)
        return str(found) if found else None
    command = shutil.which(f"python{version}")
    if command and subprocess.run([command, "-c", ""], capture_output=True).returncode == 0:  # not a bare pyenv shim
        return command
    return None


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("large")
    model = folder / "tiny-llama.gguf"
    write_model(model, "llama", "Q8_0")
    os.truncate(model, MODEL_SIZE)  # zeros after the tensors, as a hole: a GGUF may end in bytes no tensor uses
    out = folder / "large.pyz"
    try:
        tier = choose(detect()).name  # kernels for this machine's tier, so that 3.11's start compiles none
        result = build("--model", str(model), "-o", str(out), "--python", ",".join(PYTHONS), "--cpu-tiers", tier)
        assert result.returncode == 0, result.stderr
        yield out
    finally:
        model.unlink()
        out.unlink(missing_ok=True)


def test_the_weights_sit_before_a_zip_every_zipimport_reads(large):
    size = large.stat().st_size
    assert size > 4 * GIB and large.stat().st_blocks * 512 < GIB  # sparse: the hole was skipped, not written
    (model,) = open_bundle(large).models
    assert model.offset == 65536 and model.size == MODEL_SIZE
    with zipfile.ZipFile(large) as zf:
        zip_start = min(i.header_offset for i in zf.infolist())
        assert model.offset + model.size <= zip_start and zf.namelist()[0] != model.file
    with open(large, "rb") as f:
        f.seek(size - END_RECORD.size - 20)
        locator, record = f.read(20), f.read()
    signature, _, _, n_entries, _, directory_size, directory_offset, comment = END_RECORD.unpack(record)
    assert signature == b"PK\x05\x06" and comment == 0 and locator[:4] != b"PK\x06\x07"  # no ZIP64 locator
    assert zip_start + directory_offset + directory_size + END_RECORD.size == size  # offsets from the zip's start
    assert directory_offset < 2 * GIB and n_entries < 0xFFFF


@pytest.mark.parametrize("version", PYTHONS)
def test_it_starts_and_serves_under_each_python(large, version, tmp_path):
    python = find_python(version)
    assert python is not None, f"no CPython {version} here (tests/portable_python.py fetches Debian's 3.13)"
    env = {**bare_python(tmp_path), "PYTHONUNBUFFERED": "1"}  # its `python3` is this one: the shebang's
    command = [str(large)] if python == sys.executable else [python, str(large)]
    version_run = subprocess.run(in_env(env, *command, "--version"), capture_output=True, text=True, timeout=120)
    assert version_run.returncode == 0, version_run.stderr
    assert "model tiny-llama (the default): tiny-llama.gguf, 4112.0 MiB" in version_run.stdout
    verify = subprocess.run(in_env(env, *command, "--verify"), capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0 and verify.stdout.splitlines()[-1] == "OK", verify.stdout + verify.stderr
    assert f"ok     tiny-llama.gguf (tiny-llama): {MODEL_SIZE:,} bytes" in verify.stdout

    from openai import OpenAI

    with ServerProcess(None, "-t", "2", "-c", "256", launcher=in_env(env, *command)) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(model="tiny-llama", max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens > 0
        (model,) = open_bundle(large).models
        maps = [line.split() for line in Path(f"/proc/{server.process.pid}/maps").read_text().splitlines()
                if line.endswith(str(large))]
        assert any(int(m[2], 16) == model.offset for m in maps)  # mapped from the archive, not copied
    assert f"for cp{version.replace('.', '')}-" in server.output


def test_a_zip_a_target_could_not_read_stops_the_build_with_the_fix(tiny_llama, tmp_path, monkeypatch):
    """For 3.11 or 3.12 the zip must do without ZIP64 records (zipfile writes them past 2 GiB, lowered here to
    1 MiB so that the runtime's own files pass it); a build whose targets are all 3.13 or newer may use them."""
    from llamapyz.bundler.builder import before_zip64, build_archive
    from llamapyz.bundler.platforms import parse
    from llamapyz.errors import LlamapyzError

    assert before_zip64(parse("3.11,3.12,3.13", "linux-x86_64")) == ["3.11", "3.12"]
    assert before_zip64(parse("3.13", "linux-x86_64,windows-amd64")) == []
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1 << 20)
    out = tmp_path / "x.pyz"
    with pytest.raises(LlamapyzError) as refused:
        build_archive([str(tiny_llama)], out, cpu_tiers="none", say=lambda line: None)
    here = "{}.{}".format(*sys.version_info[:2])
    assert "would need ZIP64 records" in str(refused.value)
    assert f"CPython {here} cannot start such an archive" in str(refused.value)
    assert "--python 3.13" in refused.value.hint
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing left behind
