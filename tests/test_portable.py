"""A multi-target archive (`build.py --python --platform`): two Pythons (this one and 3.13) on three
platforms, built once on the tiny llama, checked from outside: its layout stores each distinct file once,
each target is complete as pip would resolve it (checked with `packaging`, not with the bundler's code),
and it runs under a bare 3.11 and under Debian's 3.13 (tests/portable_python.py), each extracting only
its own target. The full set (--portable, the default model) is bench/bench_portable.py's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name
from packaging.version import Version

from llamapyz.archive.launcher import open_bundle
from llamapyz.machine.cpu import choose, detect
from tests.live_server import ServerProcess, bare_python, in_env
from tests.portable_python import portable_python

REPO = Path(__file__).resolve().parents[1]
HERE = "{}.{}".format(*sys.version_info[:2])
PYTHONS = sorted({HERE, "3.13"}, key=Version)
PLATFORMS = ["linux-x86_64", "macos-arm64", "windows-amd64"]
TARGETS = [f"cp{p.replace('.', '')}-{platform}" for platform in PLATFORMS for p in PYTHONS]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_llama) -> Path:
    out = tmp_path_factory.mktemp("portable") / "tiny.pyz"
    tier = choose(detect()).name  # the one this machine runs: kernels precompiled for its own target only
    result = subprocess.run([sys.executable, str(REPO / "build.py"), "--model", str(tiny_llama), "-o", str(out),
                             "--python", ",".join(PYTHONS), "--platform", ",".join(PLATFORMS), "--cpu-tiers", tier],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert f"Python side for {len(TARGETS)} targets" in result.stderr and "dedupe: " in result.stderr
    return out


def read_archive(path: Path) -> tuple[dict, dict[str, bytes], dict[str, dict[str, str]]]:
    """(manifest, every entry's bytes (the weights precede the zip), each target's site-packages/ as path -> the
    entry its bytes come from)."""
    with zipfile.ZipFile(path) as zf:
        data = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(data["manifest.json"])
    common = {name[len("site-packages/"):]: name for name in data if name.startswith("site-packages/")}
    trees = {}
    for target in manifest["targets"]:
        own = {path: entry for path, entry, _ in json.loads(data[f"targets/{target}.json"])["files"]}
        assert not own.keys() & common.keys()
        trees[target] = {**common, **own}
    return manifest, data, trees


def test_each_distinct_file_is_stored_once(archive):
    manifest, data, trees = read_archive(archive)
    assert sorted(manifest["targets"]) == sorted(TARGETS)
    stored = [name for name in data if name.startswith(("site-packages/", "blobs/"))]
    common = {hashlib.sha256(data[name]).hexdigest() for name in stored if name.startswith("site-packages/")}
    blobs = {name[len("blobs/"):]: hashlib.sha256(data[name]).hexdigest()
             for name in stored if name.startswith("blobs/")}
    assert all(sha == name for name, sha in blobs.items()) and not common & set(blobs)  # no target's bytes twice
    # (under site-packages/, every target's layout: a few tiny files with equal bytes at two paths, like
    # each wheel's INSTALLER, are each stored at their own path)
    assert set(stored) == {entry for tree in trees.values() for entry in tree.values()}  # each one extracted
    # llguidance's abi3 library: one entry for both Pythons of each platform
    for platform in PLATFORMS:
        libraries = {target: {e for path, e in trees[target].items()
                              if path.startswith("llguidance/_lib") and path.endswith((".so", ".pyd"))}
                     for target in TARGETS if target.endswith(platform)}
        first, *others = libraries.values()
        assert len(first) == 1 and all(other == first for other in others), libraries
    carried = sum(len(data[entry]) for tree in trees.values() for entry in tree.values())
    assert sum(len(data[name]) for name in stored) < carried * 0.75  # each target alone vs what is stored


def target_environment(target: str) -> tuple[dict[str, str], set[str]]:
    """The marker environment and the wheel tags of a target, from `packaging` and the platform's facts."""
    cp, platform = target.split("-", 1)
    version = f"{cp[2]}.{cp[3:]}"
    system, machine = {"linux-x86_64": ("Linux", "x86_64"), "macos-arm64": ("Darwin", "arm64"),
                       "windows-amd64": ("Windows", "AMD64")}[platform]
    sys_platform = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}[system]
    env = {"python_version": version, "python_full_version": f"{version}.0", "sys_platform": sys_platform,
           "platform_system": system, "platform_machine": machine, "os_name": "nt" if system == "Windows" else "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    if system == "Linux":
        platforms = [f"manylinux_2_{m}_x86_64" for m in range(35, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
    elif system == "Darwin":
        platforms = list(mac_platforms((14, 0), "arm64"))
    else:
        platforms = ["win_amd64"]
    py = tuple(int(x) for x in version.split("."))
    tags = {str(t) for t in [*cpython_tags(py, [cp], platforms), *compatible_tags(py, cp, platforms)]}
    return env, tags


def distributions(data: dict[str, bytes], tree: dict[str, str]) -> dict[str, tuple[Version, list, set[str]]]:
    """name -> (version, Requires-Dist, wheel tags) of each .dist-info in a target's tree."""
    dists = {}
    for info in {PurePosixPath(p).parts[0] for p in tree if PurePosixPath(p).parts[0].endswith(".dist-info")}:
        headers = data[tree[f"{info}/METADATA"]].decode().split("\n\n")[0]
        fields = [line.split(": ", 1) for line in headers.splitlines() if ": " in line]
        wheel = data[tree[f"{info}/WHEEL"]].decode()
        name = canonicalize_name(next(v for k, v in fields if k == "Name"))
        dists[name] = (Version(next(v for k, v in fields if k == "Version")),
                       [Requirement(v) for k, v in fields if k == "Requires-Dist"],
                       {line.split(": ", 1)[1] for line in wheel.splitlines() if line.startswith("Tag:")})
    return dists


def runtime_requirements() -> list[str]:
    import tomllib

    return [r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
            if not r.startswith("shiv")]


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_is_complete_and_holds_only_its_own_wheels(archive, target):
    manifest, data, trees = read_archive(archive)
    env, supported = target_environment(target)
    tree = trees[target]

    dists = distributions(data, tree)
    for name, (_, _, wheel_tags) in dists.items():
        assert wheel_tags & supported, f"{target}: {name}'s wheel ({wheel_tags}) does not fit"

    todo = [Requirement(r) for r in runtime_requirements()]
    reached = set()
    while todo:
        req = todo.pop()
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in dists, f"{target}: {req} is not in the archive"
        assert req.specifier.contains(dists[name][0], prereleases=True), f"{target}: {req} vs {dists[name][0]}"
        if name not in reached:
            reached.add(name)
            todo.extend(dists[name][1])  # "extra == ..." markers are false: env's extra is ""
    assert reached == set(dists), f"{target}: not needed: {set(dists) - reached}"

    extensions = {PurePosixPath(p).suffix for p in tree if PurePosixPath(p).suffix in (".so", ".pyd", ".dylib", ".dll")}
    expected = {"linux": {".so"}, "macos": {".so", ".dylib"}, "windows": {".pyd", ".dll"}}[target.split("-")[1]]
    assert extensions and extensions <= expected, f"{target}: {extensions}"
    assert any(p.endswith(f".cpython-{target[2:5]}.pyc") for p in tree) == (target[2:5] == HERE.replace(".", ""))
    kernels = [p for p in tree if p.startswith("llamapyz/kernels/__pycache__/") and not p.endswith(".pyc")]
    here = manifest["targets"][target]["kernels"]
    assert bool(kernels) == bool(here) == (target == f"cp{HERE.replace('.', '')}-linux-x86_64")


def test_this_machines_target_holds_what_pips_resolver_picks(archive, tmp_path):
    """pip evaluates markers for the interpreter running it, whatever --python-version says, so its resolver
    speaks for the target of this interpreter and machine: given the archive's versions as constraints, it
    must pick exactly the archive's distributions for the runtime's requirements."""
    _, data, trees = read_archive(archive)
    dists = distributions(data, trees[f"cp{HERE.replace('.', '')}-linux-x86_64"])
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, (version, _, _) in dists.items()))
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--only-binary=:all:", "--report", str(report), "-c", str(constraints), *runtime_requirements()],
                   check=True, capture_output=True, timeout=600)
    picked = {canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
              for item in json.loads(report.read_text())["install"]}
    assert picked == {name: version for name, (version, _, _) in dists.items()}


def runs(archive: Path, python: str | None, root: Path) -> tuple[str, set[str]]:
    """Serve the archive under `python` (None: a bare venv of this one) in an empty environment, one chat
    completion, the weights mapped from the archive; then what was extracted: (target folder name, files
    under its site-packages/ that the archive put there)."""
    from openai import OpenAI

    root.mkdir()
    env = {**bare_python(root), "PYTHONUNBUFFERED": "1"}
    with ServerProcess(None, "-t", "2", "-c", "256", launcher=in_env(env, python or "python3", str(archive))) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(model="tiny-llama", max_tokens=6, temperature=0,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens > 0 and reply.model == "tiny-llama"
        maps = Path(f"/proc/{server.process.pid}/maps").read_text().splitlines()  # env and the launcher exec
        offset = open_bundle(archive).models[0].offset
        assert any(line.endswith(str(archive)) and int(line.split()[2], 16) == offset for line in maps)
    assert "first run of this archive: unpacking its Python runtime for" in server.output
    (target,) = (Path(env["HOME"]) / ".cache" / "llamapyz" / "pyz").iterdir()
    (folder,) = (p for p in target.iterdir() if not p.name.startswith("."))
    site = folder / "site-packages"
    made_here = (".pyc", ".nbi", ".nbc")  # Python's bytecode and numba's kernels, written on first use
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    return target.name, {f for f in files if not f.endswith(made_here) and "/warm-" not in f}


def test_it_runs_here_and_under_another_python_extracting_only_its_target(archive, tmp_path):
    _, _, trees = read_archive(archive)
    bare = tmp_path / "bare"
    bare.mkdir()
    result = subprocess.run(in_env(bare_python(bare), "python3", str(archive), "--verify"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "OK", result.stdout + result.stderr
    assert all(f"ok     {target}: CPython" in result.stdout for target in TARGETS)

    other = portable_python("3.13")
    assert other is not None, "Debian's CPython 3.13 could not be fetched (tests/portable_python.py)"
    for version, python in {HERE: None, "3.13": str(other)}.items():
        expected = f"cp{version.replace('.', '')}-linux-x86_64"
        name, extracted = runs(archive, python, tmp_path / version)
        assert name == expected
        ours = {p for p in trees[expected] if not p.endswith((".pyc", ".nbi", ".nbc")) and "/warm-" not in p}
        assert extracted == ours  # its own files and the common ones; nothing of another target


def test_version_lists_every_target_and_the_size_of_each_part(archive):
    result = subprocess.run([sys.executable, str(archive), "--version"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    first, model, *table = result.stdout.splitlines()
    assert model.startswith("model tiny-llama (the default): tiny-llama.gguf, ")
    assert first.endswith(f"for CPython {', '.join(PYTHONS)} on Linux x86-64; CPython {', '.join(PYTHONS)} on "
                          f"macOS arm64; CPython {', '.join(PYTHONS)} on Windows x86-64")
    parts = {line.rsplit(None, 2)[0].strip(): float(line.split()[-2]) for line in table}
    assert {"weights", "runtime, every target", "shared by some targets", *TARGETS} <= parts.keys()
    assert abs(sum(parts.values()) - archive.stat().st_size / 2**20) < 0.1 * len(parts)
    assert open_bundle(archive).manifest["format"] == 4
