"""`runtime/bundle.py`: the archive's view of itself, on small hand-made archives (the real build is in
test_build.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bundler.archive import ArchiveWriter
from runtime.bundle import BundleError, check_platform, describe, merge_args, open_bundle, this_platform, verify
from runtime.gguf import load_gguf
from tests.synth import write_model

REPO = Path(__file__).resolve().parents[1]


def make_archive(tmp_path: Path, platform: dict | None = None, args: tuple[str, ...] = ("-c", "64", "...")) -> Path:
    """A `.pyz` with the layout the bundler writes, less site-packages: enough for the start-up stage."""
    model = tmp_path / "tiny.gguf"
    write_model(model)
    data = model.read_bytes()
    archive = tmp_path / "tiny.pyz"
    with ArchiveWriter(archive, "/usr/bin/env python3", (2024, 1, 1, 0, 0, 0)) as w:
        offset = w.add_aligned(model.name, model)
        w.add_bytes(".args", "".join(f"{a}\n" for a in args).encode())
        w.add_file("__main__.py", REPO / "runtime" / "bundle.py")
        w.add_bytes("environment.json", json.dumps({"build_id": "0" * 64}).encode())
        w.add_bytes("manifest.json", json.dumps({
            "name": "tiny", "llamapyz_version": "0.0.test", "built_at": "2024-01-01T00:00:00Z",
            "model": {"file": model.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "offset": offset},
            "platform": platform or this_platform()}).encode())
        w.add_bytes("site-packages/runtime/x.py", b"x = 1\n" * 100)
    return archive


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_the_weights_are_mapped_from_inside_the_archive(tmp_path):
    archive = make_archive(tmp_path)
    bundle = open_bundle(archive)
    assert bundle.model_offset == bundle.manifest["model"]["offset"] and bundle.model_offset % 65536 == 0
    assert bundle.args == ["-c", "64", "..."]
    with load_gguf(bundle.model_source) as inside, load_gguf(tmp_path / "tiny.gguf") as original:
        assert inside.metadata.keys() == original.metadata.keys()
        assert inside.get("general.architecture") == "llama"
        for name, tensor in original.tensors.items():
            np.testing.assert_array_equal(inside.tensors[name].raw, tensor.raw)


def test_verify_passes_then_names_what_a_flipped_byte_broke(tmp_path):
    archive = make_archive(tmp_path)
    lines: list[str] = []
    assert verify(open_bundle(archive), say=lines.append)
    assert lines[-1] == "OK"

    bundle = open_bundle(archive)
    flip_byte(archive, bundle.model_offset + bundle.model_size // 2)
    lines.clear()
    assert not verify(open_bundle(archive), say=lines.append)
    assert lines[0].startswith("FAILED tiny.gguf: sha256 ")
    assert "damaged" in lines[-1]


def test_verify_catches_a_damaged_runtime_file(tmp_path):
    archive = make_archive(tmp_path)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("site-packages/runtime/x.py")
        header = info.header_offset
    flip_byte(archive, header + 30 + len(info.filename) + 2)  # inside its deflated data
    lines: list[str] = []
    assert not verify(open_bundle(archive), say=lines.append)
    assert any(line.startswith("FAILED site-packages/runtime/x.py") for line in lines)


def test_a_truncated_archive_is_a_clear_error(tmp_path):
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(BundleError, match="not a complete llamapyz archive"):
        open_bundle(archive)


@pytest.mark.parametrize("baked, user, merged", [
    (["-c", "4096", "--temp", "0.7", "..."], ["--port", "9"], ["-c", "4096", "--temp", "0.7", "--port", "9"]),
    (["-c", "4096"], ["-c", "512"], ["-c", "4096", "-c", "512"]),  # no `...`: the user's come last and win
    (["--nobrowser", "...", "--host", "0.0.0.0"], ["-t", "2"], ["--nobrowser", "-t", "2", "--host", "0.0.0.0"]),
    ([], ["--port", "1"], ["--port", "1"]),
    (["..."], [], []),
])
def test_user_arguments_go_where_the_dots_are(baked, user, merged):
    assert merge_args(baked, user) == merged


LINUX_311 = {"implementation": "cpython", "python": "3.11", "system": "Linux", "machine": "x86_64", "glibc": "2.28"}


def test_platform_check():
    check_platform(LINUX_311, {**LINUX_311, "glibc": "2.36"})
    check_platform({**LINUX_311, "glibc": None}, {**LINUX_311, "glibc": None})
    mac = {"implementation": "cpython", "python": "3.12", "system": "Darwin", "machine": "aarch64", "glibc": None}
    with pytest.raises(BundleError) as err:
        check_platform(LINUX_311, mac)
    assert str(err.value) == ("this archive was built for CPython 3.11 on Linux x86-64; "
                              "this is CPython 3.12 on macOS aarch64")
    assert "python build.py" in err.value.hint
    with pytest.raises(BundleError, match="need glibc 2.28 or newer; this machine has glibc 2.17"):
        check_platform(LINUX_311, {**LINUX_311, "glibc": "2.17"})
    with pytest.raises(BundleError, match="this machine has no glibc"):
        check_platform(LINUX_311, {**LINUX_311, "glibc": None})  # musl


def run_archive(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(archive), *args], capture_output=True, text=True, timeout=60)


def test_the_archive_answers_version_and_verify_before_unpacking_anything(tmp_path):
    archive = make_archive(tmp_path)
    result = run_archive(archive, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("llamapyz 0.0.test — tiny (tiny.gguf), built 2024-01-01T00:00:00Z for CPython")
    result = run_archive(archive, "--verify")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "OK"


def test_an_archive_for_another_python_says_so_instead_of_failing_on_numpy(tmp_path):
    here = this_platform()
    archive = make_archive(tmp_path, platform={**here, "python": "3.99"})
    result = run_archive(archive, "--port", "8080")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (f"error: this archive was built for {describe({**here, 'python': '3.99'})}"
                                             f"; this is {describe(here)}")
    assert result.stderr.splitlines()[1].startswith("hint: ") and "Traceback" not in result.stderr
