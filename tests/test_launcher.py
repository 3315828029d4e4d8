"""`llamapyz/archive/launcher.py`: the archive's view of itself, on small hand-made archives (the real build is in
test_build.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from llamapyz.archive.launcher import BundleError, choose_target, merge_args, open_bundle, verify
from llamapyz.archive.targets import Interpreter, expand, platform_title, supported_tags
from llamapyz.bundler.zipapp import ArchiveWriter
from llamapyz.gguf.reader import load_gguf
from tests.synth import write_model

REPO = Path(__file__).resolve().parents[1]


def here_target(python: str | None = None) -> dict:
    """A manifest target whose one compiled wheel fits this interpreter (or, with `python`, that version)."""
    here = Interpreter.current()
    version = python or "{}.{}".format(*here.version)
    cp = "cp" + version.replace(".", "")
    platform_tag = supported_tags(here)[0].split("-")[-1]
    return {"python": version, "platform": here.platform_name, "floor": None, "kernels": [],
            "wheels": [{"name": "numpy", "version": "2", "tags": [f"{cp}-{cp}-{platform_tag}"]}]}


TWO_MODELS = [("tiny", "tiny.gguf", {}), ("tiny-chatml", "tiny.gguf", {"chat_template": "chatml", "n_ctx": 128}),
              ("gemma", "gemma.gguf", {"n_ctx": 64})]  # (alias, file, settings): the first two share a file


def make_archive(tmp_path: Path, targets: dict | None = None, args: tuple[str, ...] = ("-c", "64", "..."),
                 models: list[tuple[str, str, dict]] | None = None) -> Path:
    """A `.pyz` with the layout the bundler writes, less site-packages: enough for the start-up stage.
    `models`: (alias, file, settings) of each (default: one, tiny.gguf); the files are tiny synthetic models."""
    targets = targets or {"here": here_target()}
    models = models or [("tiny", "tiny.gguf", {})]
    files = {file: tmp_path / file for _, file, _ in models}
    for n, (file, path) in enumerate(files.items()):
        write_model(path, arch="gemma3" if file.startswith("gemma") else "llama", seed=n)
    archive = tmp_path / "tiny.pyz"
    with ArchiveWriter(archive, "/usr/bin/env python3", (2024, 1, 1, 0, 0, 0)) as w:
        offsets = {file: w.add_weights(path) for file, path in files.items()}
        w.add_bytes(".args", "".join(f"{a}\n" for a in args).encode())
        w.add_file("__main__.py", REPO / "llamapyz" / "archive" / "launcher.py")
        w.add_file("_llamapyz_targets.py", REPO / "llamapyz" / "archive" / "targets.py")
        w.add_bytes("blobs/" + hashlib.sha256(b"y = 2\n").hexdigest(), b"y = 2\n")
        w.add_bytes("environment.json", json.dumps({"build_id": "0" * 16}).encode())
        w.add_bytes("manifest.json", json.dumps({
            "name": "tiny", "llamapyz_version": "0.0.test", "built_at": "2024-01-01T00:00:00Z",
            "models": [{"file": file, "size": files[file].stat().st_size, "alias": alias, "settings": settings,
                        "sha256": hashlib.sha256(files[file].read_bytes()).hexdigest(), "offset": offsets[file]}
                       for alias, file, settings in models],
            "targets": targets}).encode())
        w.add_bytes("site-packages/llamapyz/x.py", b"x = 1\n" * 100)
        for name in targets:
            y = ["llamapyz/y.py", "blobs/" + hashlib.sha256(b"y = 2\n").hexdigest(), 0o644]
            w.add_bytes(f"targets/{name}.json", json.dumps({"files": [y]}).encode())
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
    (model,) = bundle.models
    assert model.offset == bundle.manifest["models"][0]["offset"] and model.offset % 65536 == 0
    assert (model.file, model.alias, model.settings) == ("tiny.gguf", "tiny", {})
    assert bundle.args == ["-c", "64", "..."]
    assert model.source == (archive, model.offset, (tmp_path / "tiny.gguf").stat().st_size)
    with load_gguf(model.source) as inside, load_gguf(tmp_path / "tiny.gguf") as original:
        assert inside.metadata.keys() == original.metadata.keys()
        assert inside.get("general.architecture") == "llama"
        for name, tensor in original.tensors.items():
            np.testing.assert_array_equal(inside.tensors[name].raw, tensor.raw)


def test_each_model_is_mapped_from_its_own_aligned_entry_and_a_shared_file_once(tmp_path):
    archive = make_archive(tmp_path, models=TWO_MODELS)
    bundle = open_bundle(archive)
    assert [(m.alias, m.file, m.settings) for m in bundle.models] == TWO_MODELS  # in order: the first the default
    tiny, tiny_chatml, gemma = bundle.models
    assert tiny.source == tiny_chatml.source != gemma.source
    assert [m.offset for m in bundle.models] == [m["offset"] for m in bundle.manifest["models"]]
    assert all(m.offset % 65536 == 0 for m in bundle.models)
    assert bundle.stored() == {"tiny.gguf": [tiny, tiny_chatml], "gemma.gguf": [gemma]}
    for model in (tiny, gemma):
        with load_gguf(model.source) as inside, load_gguf(tmp_path / model.file) as original:
            assert inside.get("general.architecture") == original.get("general.architecture")
            for name, tensor in original.tensors.items():
                np.testing.assert_array_equal(inside.tensors[name].raw, tensor.raw)


def test_verify_passes_then_names_what_a_flipped_byte_broke(tmp_path):
    archive = make_archive(tmp_path)
    lines: list[str] = []
    assert verify(open_bundle(archive), say=lines.append)
    assert lines[-1] == "OK"

    (model,) = open_bundle(archive).models
    flip_byte(archive, model.offset + model.size // 2)
    lines.clear()
    assert not verify(open_bundle(archive), say=lines.append)
    assert lines[0].startswith("FAILED tiny.gguf (tiny): sha256 ")
    assert "damaged" in lines[-1]


def test_verify_hashes_each_stored_model_and_names_the_damaged_one(tmp_path):
    archive = make_archive(tmp_path, models=TWO_MODELS)
    lines: list[str] = []
    assert verify(open_bundle(archive), say=lines.append)
    assert [line.split(":")[0] for line in lines[:2]] == ["ok     tiny.gguf (tiny, tiny-chatml)",
                                                          "ok     gemma.gguf (gemma)"]
    gemma = open_bundle(archive).models[2]
    flip_byte(archive, gemma.offset + gemma.size - 1)
    lines.clear()
    assert not verify(open_bundle(archive), say=lines.append)
    assert lines[0].startswith("ok     tiny.gguf (tiny, tiny-chatml): ")
    assert lines[1].startswith("FAILED gemma.gguf (gemma): sha256 ") and "damaged" in lines[-1]


@pytest.mark.parametrize("damage", ["offset", "size", "missing"])
def test_a_model_the_manifest_misplaces_is_refused_at_start(tmp_path, damage):
    """No GGUF where the manifest says, weights running into the zip, or no offset at all: a clear error."""
    archive = make_archive(tmp_path, models=TWO_MODELS)
    with zipfile.ZipFile(archive) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
        zip_start = zf.infolist()[0].header_offset
    manifest = json.loads(entries["manifest.json"])
    gemma = manifest["models"][2]
    if damage == "offset":
        gemma["offset"] += 65536
    elif damage == "size":
        gemma["size"] = zip_start - gemma["offset"] + 1
    else:
        del gemma["offset"]
    damaged = tmp_path / "damaged.pyz"
    with open(archive, "rb") as src, open(damaged, "wb") as dst:
        dst.write(src.read(zip_start))  # the shebang and the weights, as they were
        with zipfile.ZipFile(dst, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, json.dumps(manifest) if name == "manifest.json" else data)
    expected = "not a complete" if damage == "missing" else "no GGUF of \\d+ bytes at offset \\d+ for gemma.gguf"
    with pytest.raises(BundleError, match=expected):
        open_bundle(damaged)


def test_verify_catches_a_damaged_runtime_file(tmp_path):
    archive = make_archive(tmp_path)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("site-packages/llamapyz/x.py")
        header = info.header_offset
    flip_byte(archive, header + 30 + len(info.filename) + 2)  # inside its deflated data
    lines: list[str] = []
    assert not verify(open_bundle(archive), say=lines.append)
    assert any(line.startswith("FAILED site-packages/llamapyz/x.py") for line in lines)


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


WHEELS = {  # the compiled wheels of llamapyz's runtime as PyPI has them (numpy, llvmlite, llguidance)
    "cp311-linux-x86_64": ("3.11", "linux-x86_64", ["cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64",
                                                    "cp39-abi3-manylinux_2_31_x86_64"]),
    "cp312-linux-x86_64": ("3.12", "linux-x86_64", ["cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64",
                                                    "cp39-abi3-manylinux_2_31_x86_64"]),
    "cp312-macos-arm64": ("3.12", "macos-arm64", ["cp312-cp312-macosx_12_0_arm64", "cp39-abi3-macosx_11_0_arm64"]),
    "cp312-windows-amd64": ("3.12", "windows-amd64", ["cp312-cp312-win_amd64", "cp39-abi3-win_amd64"]),
}
MANIFEST = {"targets": {name: {"python": python, "platform": platform, "floor": None,
                               "wheels": [{"tags": sorted(expand(tag))} for tag in tags]}
                        for name, (python, platform, tags) in WHEELS.items()}}


def test_each_interpreter_gets_its_target_or_a_list_of_what_the_archive_carries():
    assert choose_target(MANIFEST, Interpreter((3, 12), "linux", "x86_64", ("glibc", (2, 39)))) == "cp312-linux-x86_64"
    assert choose_target(MANIFEST, Interpreter((3, 11), "linux", "x86_64", ("glibc", (2, 31)))) == "cp311-linux-x86_64"
    assert choose_target(MANIFEST, Interpreter((3, 12), "darwin", "arm64", macos=(14, 0))) == "cp312-macos-arm64"
    assert choose_target(MANIFEST, Interpreter((3, 12), "windows", "amd64")) == "cp312-windows-amd64"
    with pytest.raises(BundleError) as err:
        choose_target(MANIFEST, Interpreter((3, 13), "windows", "amd64"))
    assert str(err.value) == ("this archive carries CPython 3.11, 3.12 on Linux x86-64; CPython 3.12 on macOS arm64; "
                              "CPython 3.12 on Windows x86-64; this is CPython 3.13 on Windows x86-64")
    assert "python build.py --model MODEL --python 3.13 --platform windows-amd64" in err.value.hint
    with pytest.raises(BundleError, match="do not load on CPython 3.12 on Linux x86-64 \\(glibc 2.28\\)"):
        choose_target(MANIFEST, Interpreter((3, 12), "linux", "x86_64", ("glibc", (2, 28))))  # llguidance: 2.31
    with pytest.raises(BundleError, match="do not load on CPython 3.12 on macOS arm64 \\(macOS 11.0\\)"):
        choose_target(MANIFEST, Interpreter((3, 12), "darwin", "arm64", macos=(11, 0)))  # llvmlite: 12
    with pytest.raises(BundleError, match="wheels for CPython 3.11 on Linux x86-64 do not load on CPython 3.11 on "
                                          "Linux x86-64 \\(musl 1.2\\)"):  # manylinux wheels need glibc
        choose_target(MANIFEST, Interpreter((3, 11), "linux", "x86_64", ("musl", (1, 2))))


def run_archive(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(archive), *args], capture_output=True, text=True, timeout=60)


def test_the_archive_answers_version_and_verify_before_unpacking_anything(tmp_path):
    archive = make_archive(tmp_path)
    result = run_archive(archive, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("llamapyz 0.0.test — tiny, built 2024-01-01T00:00:00Z for CPython")
    assert result.stdout.splitlines()[1].startswith("model tiny (the default): tiny.gguf, ")
    result = run_archive(archive, "--verify")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "OK"


def test_version_lists_every_model_with_its_settings(tmp_path):
    result = run_archive(make_archive(tmp_path, models=TWO_MODELS), "--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"model tiny \(the default\): tiny\.gguf, \d+\.\d MiB", lines[1])
    assert re.fullmatch(r"model tiny-chatml: tiny\.gguf, \d+\.\d MiB; chat_template=chatml, n_ctx=128", lines[2])
    assert re.fullmatch(r"model gemma: gemma\.gguf, \d+\.\d MiB; n_ctx=64", lines[3])
    assert lines[4].split()[0] == "weights"


def test_an_archive_for_another_python_says_so_instead_of_failing_on_numpy(tmp_path):
    here = Interpreter.current()
    archive = make_archive(tmp_path, targets={"cp399-x": here_target("3.99")})
    result = run_archive(archive, "--port", "8080")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (f"error: this archive carries CPython 3.99 on "
                                             f"{platform_title(here.platform_name)}; this is {here.describe()}")
    assert result.stderr.splitlines()[1].startswith("hint: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("system, env, expected", [
    ("linux", {"XDG_CACHE_HOME": "/x/cache"}, "/x/cache/llamapyz/pyz"),
    ("linux", {}, "~/.cache/llamapyz/pyz"),
    ("darwin", {"XDG_CACHE_HOME": "/x/cache"}, "~/Library/Caches/llamapyz/pyz"),  # macOS's own convention
    ("win32", {"LOCALAPPDATA": "/c/Users/me/AppData/Local"}, "/c/Users/me/AppData/Local/llamapyz/pyz"),
])
def test_the_cache_folder_follows_each_systems_convention(monkeypatch, system, env, expected):
    from llamapyz.archive import launcher as bundle

    for name in ("XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "platform", system)
    assert bundle.cache_root() == Path(os.path.expanduser(expected))


def test_version_names_every_model_on_its_first_line(tmp_path):
    """A two-model archive's --version named only the first model in its heading (the archive's name, which is
    the first model's alias unless --name was given)."""
    result = run_archive(make_archive(tmp_path, models=TWO_MODELS), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("llamapyz 0.0.test — tiny: 3 models (tiny, tiny-chatml, gemma), "
                                                    "built 2024-01-01T00:00:00Z for CPython")
    (tmp_path / "one").mkdir()
    one = run_archive(make_archive(tmp_path / "one"), "--version")
    assert one.stdout.startswith("llamapyz 0.0.test — tiny, built 2024-01-01T00:00:00Z for CPython")


def test_the_start_up_error_line_is_capped(capsys):
    from llamapyz.archive.launcher import fail

    with pytest.raises(SystemExit) as exited:
        fail(BundleError("x" * 3_700_000, hint="copy it again"))
    error, hint = capsys.readouterr().err.splitlines()
    assert exited.value.code == 1 and len(error) < 500 and error.endswith("more characters)")
    assert hint == "hint: copy it again"


def test_version_into_a_closed_pipe_ends_quietly(tmp_path):
    """`./x.pyz --version | head -1`: the reader may go away before the second line; a BrokenPipeError
    traceback was printed."""
    archive = make_archive(tmp_path)
    child = subprocess.Popen([sys.executable, str(archive), "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before anything is written
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err
