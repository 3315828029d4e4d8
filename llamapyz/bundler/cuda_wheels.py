"""`build.py --gpu cuda`: what an archive carries so that `-ngl` runs the GPU kernels (llamapyz/gpu, numba-cuda)
on a machine with an NVIDIA GPU and driver but no CUDA toolkit.

Besides the driver (libcuda, the user's own), numba-cuda needs:
- NVVM (libnvvm, and libdevice for math functions): numba's LLVM IR -> PTX;
- NVRTC: numba-cuda loads it with NVVM and asks it which GPU architectures the compiler knows (it compiles
  CUDA C++ only for kernels that link some in, which ours do not);
- nvJitLink: PTX -> the GPU's machine code, in the process. Without it the driver does that, and a driver
  older than NVVM rejects its PTX (NVVM 13.5 writes PTX ISA 9.5; driver 580, CUDA 13.0, reads up to 9.0);
  with it, every driver of the same CUDA major version runs the kernels;
- the CUDA runtime (cudart): numba-cuda asks it for its version when it is imported (numba/cuda/debuginfo.py),
  and cannot compile anything without it;
- cuda-bindings and cuda-core (numba-cuda's Python side of those libraries and of the driver), and
  cuda-pathfinder, which finds the libraries in site-packages.
numba-cuda's own extras (`numba-cuda[cu13]`) add CCCL too, headers for compiling CUDA C++, which these kernels
never do; so the archive asks for the pieces, not the extra, and leaves out the wheels' command-line compilers
(`PRUNED`).

Variants (`VARIANTS`): cuda13, the default `cuda`, is what the tests compile every kernel with (tests/gpu_ptx.py),
pinned to this environment like every other wheel; it needs driver 580 or newer. cuda12 runs on driver 525
or newer; its CUDA 12 wheels are the newest 12.x releases (this environment has 13.x, which does not fit).
NVIDIA publishes these wheels for Linux x86-64 and aarch64 and Windows x86-64; other targets (macOS) get none.

cuda-pathfinder looks in `site.getsitepackages()` only, not on sys.path, which does not list an archive's
extracted site-packages/; `HOOK` (llamapyz/bundler/site_hook.py, run by a .pth file at start-up) adds it there.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from llamapyz.errors import LlamapyzError

from .platforms import Target


@dataclass(frozen=True)
class Variant:
    name: str  # as `--gpu` takes it, and the manifest records it
    driver: int  # the oldest NVIDIA driver (Linux; Windows is about the same) of its CUDA major version
    requires: tuple[str, ...]  # the archive's requirements besides the runtime's
    compiler: str  # the distribution holding libnvvm ...
    linker: str  # ... and libnvJitLink, which must read the PTX the compiler writes: at least as new


VARIANTS = {
    "cuda13": Variant("cuda13", 580, ("numba-cuda>=0.30", "cuda-bindings>=13,<14", "nvidia-nvvm>=13,<14",
                                      "nvidia-cuda-nvrtc>=13,<14", "nvidia-nvjitlink>=13,<14",
                                      "nvidia-cuda-runtime>=13,<14"),
                      compiler="nvidia-nvvm", linker="nvidia-nvjitlink"),
    "cuda12": Variant("cuda12", 525, ("numba-cuda>=0.30", "cuda-bindings>=12.9.1,<13",
                                      "nvidia-cuda-nvcc-cu12>=12.3,<13",  # CUDA 12's NVVM ships with nvcc
                                      "nvidia-cuda-nvrtc-cu12>=12.3,<13", "nvidia-nvjitlink-cu12>=12.3,<13",
                                      "nvidia-cuda-runtime-cu12>=12.3,<13"),
                      compiler="nvidia-cuda-nvcc-cu12", linker="nvidia-nvjitlink-cu12"),
}
DEFAULT = "cuda13"
PLATFORMS = ("linux-x86_64", "linux-aarch64", "windows-amd64")  # where NVIDIA publishes the wheels

# Files of those wheels the archive leaves out (paths under site-packages/): nothing loads them.
PRUNED = (
    "nvidia/cu13/nvvm/bin/*",  # cicc: nvcc's compiler front end, an executable; libnvvm is the same compiler
    "nvidia/cuda_nvcc/bin/*",  # ptxas and friends (CUDA 12's nvcc wheel): nvJitLink assembles in-process
    "nvidia/cuda_nvrtc/*.alt.*",  # CUDA 12's second build of NVRTC; cuda-pathfinder loads libnvrtc.so.12
)

# The start-up hook: file name under site-packages/ -> its source (a file, or the text). The .pth runs when shiv's
# bootstrap adds the extracted site-packages/ with site.addsitedir.
HOOK_MODULE = "_llamapyz_site_hook"
HOOK = {f"{HOOK_MODULE}.py": Path(__file__).with_name("site_hook.py"),
        f"{HOOK_MODULE}.pth": f"import {HOOK_MODULE}; {HOOK_MODULE}.add_this_site_dir()\n"}


def choose(option: str | None) -> Variant | None:
    """The variant `--gpu` names (`cuda` is the default one), or None without the option."""
    if option is None:
        return None
    name = DEFAULT if option == "cuda" else option
    if name not in VARIANTS:
        raise LlamapyzError(f"--gpu {option}: unknown", hint=f"known: cuda (= {DEFAULT}), {', '.join(sorted(VARIANTS))}"
                                                              " (NVIDIA GPUs through numba-cuda)")
    return VARIANTS[name]


def assign(targets: list[Target], variant: Variant | None, say: Callable[[str], None]) -> list[Target]:
    """`targets` with the variant set on those NVIDIA has wheels for; says which get none, and fails when
    none of them has any."""
    if variant is None:
        return targets
    fits = {t.name for t in targets if t.interpreter.platform_name in PLATFORMS}
    if not fits:
        raise LlamapyzError(f"--gpu {variant.name}: NVIDIA's CUDA wheels do not exist for "
                            f"{', '.join(sorted({t.interpreter.platform_name for t in targets}))}",
                            hint=f"they exist for {', '.join(PLATFORMS)}: add one with --platform, or leave --gpu out")
    without = [t.name for t in targets if t.name not in fits]
    if without:
        say(f"  GPU ({variant.name}): none for {', '.join(without)} (NVIDIA's wheels are for {', '.join(PLATFORMS)})")
    return [replace(t, gpu=variant.name) if t.name in fits else t for t in targets]


def pruned(relative: str) -> bool:
    """Whether a path under site-packages/ (forward slashes) is one of `PRUNED`."""
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in PRUNED)


def check_versions(variant: Variant, versions: dict[str, str], target: str) -> None:
    """nvJitLink must read the PTX that NVVM writes: its CUDA release (major.minor) at least NVVM's.
    `versions`: canonical distribution name -> version, of one target's wheels."""
    compiler, linker = versions.get(variant.compiler), versions.get(variant.linker)
    if compiler and linker and _release(linker) < _release(compiler):
        raise LlamapyzError(f"{target}: {variant.linker} {linker} cannot link the PTX of {variant.compiler} {compiler}",
                            hint=f"install a {variant.linker} as new as {variant.compiler} in this environment "
                                 f"(pip install '{variant.linker}>={'.'.join(map(str, _release(compiler)))}')")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def manifest_entry(target: Target) -> dict | None:
    """What the manifest records per target: {"name": "cuda13", "driver": 580}, or None."""
    if target.gpu is None:
        return None
    variant = VARIANTS[target.gpu]
    return {"name": variant.name, "driver": variant.driver}


def hook_files(folder: Path) -> Path:
    """Write the start-up hook's files into `folder` (a site-packages/ root of their own); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in HOOK.items():
        (folder / name).write_text(source.read_text() if isinstance(source, Path) else source)
    return folder

