"""`build.py --gpu` (llamapyz/bundler/cuda_wheels.py, its parts of llamapyz/bundler/deps.py and
llamapyz/bundler/builder.py, and `--version`'s line in llamapyz/archive/launcher.py): which targets get which NVIDIA
wheels, on described targets and wheels (no index); and one archive built with `--gpu cuda` on the tiny llama, whose
extracted site-packages/ give numba-cuda its NVVM, NVRTC, nvJitLink and libdevice, so that it compiles a kernel to PTX
with no GPU and no CUDA toolkit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from llamapyz.archive.launcher import describe_gpu, open_bundle
from llamapyz.bundler import cuda_wheels as gpu
from llamapyz.bundler import deps
from llamapyz.bundler.platforms import PORTABLE_PLATFORMS, native, parse, target
from llamapyz.errors import LlamapyzError
from tests.live_server import bare_python, build, in_env

REPO = Path(__file__).resolve().parents[1]
GPU_NAMES = {"numba-cuda", "cuda-bindings", "nvidia-nvvm", "nvidia-cuda-nvrtc", "nvidia-nvjitlink",
             "nvidia-cuda-runtime"}


def test_the_option_names_a_variant_and_cuda_is_cuda13():
    assert gpu.choose(None) is None
    assert gpu.choose("cuda") is gpu.VARIANTS["cuda13"] and gpu.choose("cuda12").driver == 525
    with pytest.raises(LlamapyzError, match=r"^--gpu rocm: unknown$") as caught:
        gpu.choose("rocm")
    assert caught.value.hint.startswith("known: cuda (= cuda13), cuda12, cuda13")


def test_targets_get_it_where_nvidia_has_wheels_and_the_summary_names_the_others():
    said: list[str] = []
    targets = gpu.assign(parse(None, None, portable=True), gpu.choose("cuda"), said.append)
    assert {t.name: t.gpu for t in targets if not t.name.endswith("macos-arm64")} == {
        f"cp3{minor}-{platform}": "cuda13" for minor in (11, 12, 13) for platform in PORTABLE_PLATFORMS
        if platform != "macos-arm64"}
    assert [t.gpu for t in targets if t.name.endswith("macos-arm64")] == [None] * 3
    assert said == ["  GPU (cuda13): none for cp311-macos-arm64, cp312-macos-arm64, cp313-macos-arm64 (NVIDIA's "
                    "wheels are for linux-x86_64, linux-aarch64, windows-amd64)"]
    assert gpu.assign(targets, None, said.append) == targets and len(said) == 1  # no --gpu: nothing changes
    with pytest.raises(LlamapyzError, match=r"--gpu cuda13: NVIDIA's CUDA wheels do not exist for macos-arm64") as e:
        gpu.assign(parse("3.12", "macos-arm64"), gpu.choose("cuda"), said.append)
    assert "linux-x86_64, linux-aarch64, windows-amd64" in e.value.hint


def test_a_closure_starts_from_the_runtimes_requirements_plus_the_variants():
    base = [str(r) for r in deps.roots()]
    assert not [r for r in deps.roots() if r.name == "numba-cuda" and r.marker is None]  # only in extras
    assert [str(r) for r in deps.requirements(native())] == base
    for name, platform in [("cuda13", "linux-aarch64"), ("cuda12", "windows-amd64")]:
        on_gpu = replace(target("3.12", platform), gpu=name)
        expected = base + [str(Requirement(r)) for r in gpu.VARIANTS[name].requires]
        assert [str(r) for r in deps.requirements(on_gpu)] == expected


def wheel(name, version, requires=()):
    return deps.Wheel(name, version, ("py3-none-any",), tuple(requires))


def test_a_pin_that_does_not_fit_the_variant_is_replaced(monkeypatch):
    """This environment has cuda-bindings 13; cuda12 asks for 12.x, which the closure reports missing (and
    does not pin 13) so that pip fetches the newest 12.x; cuda13 keeps this environment's."""
    monkeypatch.setattr(deps, "roots", lambda: [])  # the variant's requirements only
    here = [wheel("numba-cuda", "0.30.4", ["numba>=0.60.0", "cuda-bindings<14.0.0,>=12.9.1", "packaging",
                                           'cuda-bindings==13.*; extra == "cu13"']),
            wheel("numba", "0.68.1"), wheel("packaging", "26.4"), wheel("cuda-bindings", "13.5.0"),
            wheel("nvidia-nvvm", "13.5.37"), wheel("nvidia-cuda-nvrtc", "13.5.37")]
    cu12 = replace(target("3.11", "linux-x86_64"), gpu="cuda12")
    needed, missing = deps.closure(cu12, here)
    assert [w.key for w in needed] == ["numba", "numba-cuda", "packaging"]
    assert sorted(str(r) for r in missing) == sorted(["cuda-bindings<13,>=12.9.1", "nvidia-cuda-nvcc-cu12<13,>=12.3",
                                                      "nvidia-cuda-nvrtc-cu12<13,>=12.3",
                                                      "nvidia-nvjitlink-cu12<13,>=12.3",
                                                      "nvidia-cuda-runtime-cu12<13,>=12.3"])
    staged = [*here[:3], wheel("cuda-bindings", "12.9.10")]  # pip's next round: the 12.x fits both requirements
    assert "cuda-bindings" in {w.key for w in deps.closure(cu12, staged)[0]}
    cu13 = replace(cu12, gpu="cuda13")
    needed, missing = deps.closure(cu13, here)
    assert {w.key: w.version for w in needed}["cuda-bindings"] == "13.5.0"
    assert sorted(str(r) for r in missing) == ["nvidia-cuda-runtime<14,>=13", "nvidia-nvjitlink<14,>=13"]  # newest


def test_the_cuda_extra_is_what_the_default_variant_adds():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["cuda"] == list(gpu.VARIANTS[gpu.DEFAULT].requires)


def test_nvjitlink_must_be_as_new_as_nvvm():
    cuda13 = gpu.VARIANTS["cuda13"]
    gpu.check_versions(cuda13, {"nvidia-nvvm": "13.5.37", "nvidia-nvjitlink": "13.5.37"}, "t")
    gpu.check_versions(cuda13, {"nvidia-nvvm": "13.4.92", "nvidia-nvjitlink": "13.5.37"}, "t")
    with pytest.raises(LlamapyzError, match="nvidia-nvjitlink 13.4.92 cannot link the PTX of nvidia-nvvm 13.5.37") as e:
        gpu.check_versions(cuda13, {"nvidia-nvvm": "13.5.37", "nvidia-nvjitlink": "13.4.92"}, "t")
    assert "'nvidia-nvjitlink>=13.5'" in e.value.hint


@pytest.mark.parametrize("path, left_out", [
    ("nvidia/cu13/nvvm/bin/cicc", True), ("nvidia/cu13/nvvm/bin/cicc.exe", True),
    ("nvidia/cuda_nvcc/bin/ptxas", True), ("nvidia/cuda_nvrtc/lib/libnvrtc.alt.so.12", True),
    ("nvidia/cuda_nvrtc/lib/libnvrtc-builtins.alt.so.12.9", True),
    ("nvidia/cu13/lib/libnvvm.so.4", False), ("nvidia/cu13/bin/x86_64/nvvm64_40_0.dll", False),
    ("nvidia/cu13/nvvm/libdevice/libdevice.10.bc", False), ("nvidia/cuda_nvcc/nvvm/bin/nvvm64_40_0.dll", False),
    ("nvidia/cuda_nvcc/nvvm/lib64/libnvvm.so", False), ("nvidia/cuda_nvrtc/lib/libnvrtc.so.12", False),
])
def test_the_wheels_executables_are_left_out_and_their_libraries_kept(path, left_out):
    assert deps.should_skip(Path(path)) is left_out


def test_the_site_hook_puts_the_archives_site_packages_first(tmp_path):
    """As shiv's bootstrap adds the extracted site-packages/: with site.addsitedir, which runs the .pth."""
    site_dir = gpu.hook_files(tmp_path / "site-packages")
    code = ("import site, sys; before = site.getsitepackages(); site.addsitedir(sys.argv[1]); "
            "print(site.getsitepackages() == [sys.argv[1], *before])")
    done = subprocess.run([sys.executable, "-I", "-c", code, str(site_dir)], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr
    code = f"import sys, site; sys.path.insert(0, {str(site_dir)!r}); before = site.getsitepackages(); " \
           f"import {gpu.HOOK_MODULE}; print(site.getsitepackages() == before)"  # importing alone changes nothing
    assert subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def test_version_says_which_targets_have_gpu_support():
    linux = {"python": "3.12", "platform": "linux-x86_64", "gpu": {"name": "cuda13", "driver": 580}}
    carried = {"a": linux, "b": {**linux, "python": "3.13"}, "c": {**linux, "platform": "windows-amd64"},
               "d": {"python": "3.12", "platform": "macos-arm64", "gpu": None}}
    assert describe_gpu(carried) == ("GPU offload (-ngl): cuda13, for NVIDIA driver 580 or newer, on Linux x86-64, "
                                     "Windows x86-64; none on macOS arm64")
    assert describe_gpu({"a": {"python": "3.12", "platform": "linux-x86_64"}}) is None  # built before --gpu


@pytest.mark.parametrize("args, error, hint", [
    (["--gpu", "rocm"], "--gpu rocm: unknown",
     "known: cuda (= cuda13), cuda12, cuda13 (NVIDIA GPUs through numba-cuda)"),
    (["--gpu", "cuda", "--platform", "macos-arm64"], "--gpu cuda13: NVIDIA's CUDA wheels do not exist for macos-arm64",
     "they exist for linux-x86_64, linux-aarch64, windows-amd64: add one with --platform, or leave --gpu out"),
])
def test_errors_are_one_line_and_a_hint_before_any_work(args, error, hint, tmp_path):
    result = build("--model", "no-such-model", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {error}", f"hint: {hint}"]  # not even the model was looked at


CHECK = """
import json, math, os, types
from numba import cuda
from numba.cuda import dispatcher
from numba.cuda.cuda_paths import get_cuda_paths
from cuda import pathfinder
dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))  # no GPU here
def softplus(x):
    i = cuda.grid(1)
    if i < x.size:
        x[i] = math.log1p(math.exp(x[i]))  # libdevice's
ptx, _ = cuda.compile_ptx(softplus, "(float32[::1],)", cc=(9, 0))
found = {name: pathfinder.load_nvidia_dynamic_lib(name).abs_path for name in ("nvvm", "nvrtc", "nvJitLink", "cudart")}
found.update({name: get_cuda_paths()[name].info for name in ("nvvm", "nvrtc", "libdevice")})
with open("/proc/self/maps") as maps:  # every NVIDIA library this process has loaded
    files = {line.split()[-1] for line in maps}
loaded = sorted(f for f in files if os.path.basename(f).startswith(("libnv", "libcuda")))
print(json.dumps({"found": found, "loaded": loaded, "ptx": ptx}))
"""  # run inside the archive (SHIV_INTERPRETER): where numba-cuda finds NVIDIA's libraries, and a kernel's PTX


@pytest.mark.slow
def test_an_archive_with_gpu_support_compiles_kernels_with_its_own_nvidia_libraries(tiny_llama, tmp_path):
    """This machine may have a CUDA toolkit of its own (/usr/local/cuda): every library must come from the
    archive's extracted site-packages/ all the same."""
    out = tmp_path / "tiny.pyz"
    result = build("--model", str(tiny_llama), "-o", str(out), "--cpu-tiers", "none", "--gpu", "cuda")
    assert result.returncode == 0, result.stderr
    assert "[2/4] Python side for 1 target: " in result.stderr and ", with GPU support (cuda13)" in result.stderr
    summary = re.search(r"GPU support \(cuda13 for NVIDIA driver 580 or newer\): ([\d.]+) MiB of the archive "
                        r"\(compressed, as stored\), for 1 of 1 target\n", result.stderr)
    assert summary and 50 < float(summary[1]) < out.stat().st_size / 2**20, result.stderr

    bundle = open_bundle(out)
    (here,) = bundle.manifest["targets"].values()
    assert here["gpu"] == {"name": "cuda13", "driver": 580}
    assert GPU_NAMES <= {w["name"].lower() for w in here["wheels"]}
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    for library in ("libnvvm.so.4", "libnvrtc.so.13", "libnvJitLink.so.13", "libcudart.so.13"):
        assert f"site-packages/nvidia/cu13/lib/{library}" in names
    assert "site-packages/nvidia/cu13/nvvm/libdevice/libdevice.10.bc" in names
    assert "site-packages/numba_cuda/numba/cuda/__init__.py" in names and not [n for n in names if "cicc" in n]
    assert {f"site-packages/{name}" for name in gpu.HOOK} <= names

    env = {**bare_python(tmp_path / "bare"), "SHIV_INTERPRETER": "1"}
    version = subprocess.run(in_env(env, str(out), "--version"), capture_output=True, text=True, timeout=60)
    assert version.stdout.splitlines()[1] == "GPU offload (-ngl): cuda13, for NVIDIA driver 580 or newer, on " \
                                             "Linux x86-64", version.stdout
    (tmp_path / "check.py").write_text(CHECK)
    done = subprocess.run(in_env(env, str(out), str(tmp_path / "check.py")), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    extracted = Path(env["HOME"]) / ".cache" / "llamapyz" / "pyz"
    assert len(report["loaded"]) >= 4  # libnvvm, libnvrtc (and its builtins), libcudart, libnvJitLink
    for path in [*report["found"].values(), *report["loaded"]]:
        assert Path(path).is_relative_to(extracted) and "/site-packages/nvidia/cu13/" in path, report
    assert ".target sm_90" in report["ptx"]
    assert "ex2.approx" in report["ptx"] and "__nv_" not in report["ptx"]  # libdevice's expf, linked and inlined
