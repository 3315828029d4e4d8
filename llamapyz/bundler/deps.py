"""The archive's Python side for each target: our runtime's dependencies, pinned to the versions this
environment runs.

For a target (`llamapyz/bundler/platforms.py`), the closure of llamapyz's requirements is taken with the target's
environment markers (click brings colorama on Windows only; anyio brings exceptiongroup below 3.11). Every distribution
installed here is pinned to its version here, so an archive runs exactly the numpy, numba, … the tests ran; one this
environment lacks (it is only needed elsewhere) takes the newest release that fits its requirement, as does one whose
version here does not fit (`--gpu cuda12` asks for cuda-bindings 12 where this environment has 13). A target with GPU
support (`Target.gpu`, llamapyz/bundler/cuda_wheels.py) adds that variant's requirements to the runtime's. pip's
`install --target` with `--no-deps` fetches the wheels (binary only, for the target's Python version and platform tags,
no bytecode) in rounds, each adding what the previous round's wheels require, until nothing is missing. The folder is
cached per target and pin set, so a rebuild downloads nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canonical
except ImportError:  # pip always brings its own copy; the build needs pip anyway
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name as canonical

from llamapyz.errors import LlamapyzError

from . import cuda_wheels as gpu
from .platforms import Target
from .registry import cache_dir

PROJECT = "llamapyz"
BUILD_ONLY = {"shiv"}  # needed to build archives, not inside them
PRUNED_TESTS = {"numpy", "numba"}  # their test suites: 12 MB and a thousand files nobody runs from an archive
MAX_ROUNDS = 8  # a dependency chain deeper than this is a resolver bug, not a real package set


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    tags: tuple[str, ...]  # from the installed .dist-info/WHEEL
    requires: tuple[str, ...] = ()  # Requires-Dist, as written

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def key(self) -> str:
        return canonical(self.name)


def roots() -> list[Requirement]:
    """llamapyz's own requirements, less those only the build needs."""
    try:
        requires = metadata.distribution(PROJECT).requires or []
    except metadata.PackageNotFoundError:
        raise LlamapyzError(f"{PROJECT} is not installed in this Python ({sys.executable})",
                            hint="install it first: pip install -e .") from None
    return [r for r in map(Requirement, requires) if canonical(r.name) not in BUILD_ONLY]


def requirements(target: Target) -> list[Requirement]:
    """Where `target`'s closure starts: the runtime's requirements, and those of its GPU support (if any)."""
    return roots() + [Requirement(r) for r in (gpu.VARIANTS[target.gpu].requires if target.gpu else ())]


def applies(req: Requirement, environment: dict[str, str] | None, extras: frozenset[str] = frozenset()) -> bool:
    """Whether `req` holds for a target (`environment`: its markers; None: this interpreter), for a
    distribution asked for with `extras`."""
    if req.marker is None:
        return True
    base = dict(environment or {})
    return any(req.marker.evaluate({**base, "extra": extra}) for extra in ("", *sorted(extras)))


def wanted(req: Requirement) -> str:
    """What pip is asked for when this environment lacks the distribution: the requirement itself (markers
    dropped: they were evaluated for the target already)."""
    return f"{req.name}{req.specifier}"


def site_packages(target: Target, say: Callable[[str], None]) -> Path:
    """A folder holding the runtime's distributions for `target` (no bytecode, no scripts, no numpy/numba
    tests), cached per target and the versions installed here."""
    here = [Wheel(d.metadata["Name"], d.version, (), tuple(d.requires or ())) for d in metadata.distributions()]
    pins = sorted(w.pin for w in closure(target, here)[0])  # what the cached folder was pinned to
    key = hashlib.sha256("\n".join([target.name, *target.platform_tags, *map(str, requirements(target)),
                                    *pins]).encode())
    folder = cache_dir().parent / "site-packages" / f"{target.name}-{key.hexdigest()[:16]}"
    if folder.is_dir():
        say(f"  {target.name}: {len(installed_wheels(folder))} wheels, cached in {folder}")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".install-") as tmp:
        staging = Path(tmp) / "site-packages"
        staging.mkdir()
        for _ in range(MAX_ROUNDS):
            staged = {w.key: w for w in installed_wheels(staging)}
            needed, missing = closure(target, [*staged.values(), *(w for w in here if w.key not in staged)])
            asked = sorted({w.pin for w in needed if w.key not in staged} | {wanted(r) for r in missing},
                           key=str.lower)  # this environment's version of what it has; the rest by name
            if not asked:
                break
            say(f"  {target.name}: fetching {', '.join(asked)}")
            _pip_install(target, ["--target", str(staging), "--no-deps", "--only-binary=:all:", "--no-compile",
                                  "--quiet", "--upgrade", *target.pip_options(), *asked])
        else:
            raise LlamapyzError(f"{target.name}: the runtime's requirements did not close after {MAX_ROUNDS} rounds")
        for scripts in ("bin", "Scripts"):  # console scripts naming the build machine's python
            shutil.rmtree(staging / scripts, ignore_errors=True)
        for name in PRUNED_TESTS:
            for tests in sorted((staging / name).rglob("tests"), reverse=True):
                if tests.is_dir():
                    shutil.rmtree(tests)
        staging.rename(folder)
    say(f"  {target.name}: installed in {time.perf_counter() - started:.1f} s")
    return folder


def closure(target: Target, wheels: list[Wheel]) -> tuple[list[Wheel], list[Requirement]]:
    """From the roots through every wheel's Requires-Dist, with the target's markers: the wheels of
    `wheels` that are needed, and the requirements that none of them meets (no wheel of that name, or one
    whose version does not fit; such a wheel is not needed: another version replaces it)."""
    env = target.marker_environment()
    have = {w.key: w for w in wheels}
    needed: dict[str, Wheel] = {}
    missing, seen = [], set()
    todo = [(r, frozenset()) for r in requirements(target)]
    while todo:
        req, extras = todo.pop()
        if not applies(req, env, extras) or (str(req), extras) in seen:
            continue
        seen.add((str(req), extras))
        wheel = have.get(canonical(req.name))
        if wheel is None or not req.specifier.contains(wheel.version, prereleases=True):
            missing.append(req)
            continue
        needed[wheel.key] = wheel
        todo.extend((Requirement(r), frozenset(req.extras)) for r in wheel.requires)
    replaced = {canonical(r.name) for r in missing}
    return sorted((w for w in needed.values() if w.key not in replaced), key=lambda w: w.key), missing


def _pip_install(target: Target, args: list[str]) -> None:
    from shiv.pip import clean_pip_env

    with clean_pip_env():
        result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", *args],
                                capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stderr or result.stdout
        if found := re.search(r"No matching distribution found for (\S+)", output):
            raise LlamapyzError(f"{found[1]} has no wheel for {target.name} on the package index",
                                hint="leave that target out, or build from an environment whose versions of it "
                                     "support that Python and platform")
        last = output.strip().splitlines()[-1:] or ["(no output)"]
        raise LlamapyzError(f"pip could not fetch the runtime's wheels for {target.name}: {last[0]}",
                            hint="the package index must be reachable once; later builds use the cache")


def installed_wheels(root: Path) -> list[Wheel]:
    """Name, version and tags of every distribution in a site-packages folder."""
    wheels = []
    for info in sorted(root.glob("*.dist-info")):
        fields, requires = {}, []
        for line in (info / "METADATA").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key, value.strip())
            if key == "Requires-Dist":
                requires.append(value.strip())
        tags = tuple(line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines()
                     if line.startswith("Tag:"))
        wheels.append(Wheel(fields["Name"], fields["Version"], tags, tuple(requires)))
    return wheels


def floor(wheels: list[Wheel]) -> str | None:
    """The oldest system all wheels load on, "glibc 2.28" or "macOS 11.0" (None: any): each wheel needs
    the oldest its manylinux or macOS tags name, the archive the newest of those."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    needed: dict[str, tuple[int, int]] = {}
    for wheel in wheels:
        versions: dict[str, list[tuple[int, int]]] = {}
        for tag in wheel.tags:
            platform_tag = tag.split("-")[-1]
            if m := re.match(r"(manylinux|macosx)_(\d+)_(\d+)_", platform_tag):
                versions.setdefault(m[1], []).append((int(m[2]), int(m[3])))
            elif (base := platform_tag.split("_")[0]) in legacy:
                versions.setdefault("manylinux", []).append(legacy[base])
        for kind, found in versions.items():
            needed[kind] = max(needed.get(kind, (0, 0)), min(found))
    for kind, title in (("manylinux", "glibc"), ("macosx", "macOS")):
        if kind in needed:
            return f"{title} {needed[kind][0]}.{needed[kind][1]}"
    return None


def should_skip(relative: Path, with_kernels: bool = True) -> bool:
    """Files of a site-packages folder that never go into an archive: bytecode, caches other than our
    precompiled kernels (numba's .nbi/.nbc and the warm markers, see llamapyz/bundler/precompile.py), which only the
    target they were compiled for gets, and the GPU wheels' executables (`gpu.PRUNED`)."""
    if relative.parts[:3] == ("llamapyz", "kernels", "__pycache__"):
        return not with_kernels or (relative.suffix not in (".nbi", ".nbc") and not relative.name.startswith("warm-"))
    return relative.suffix == ".pyc" or "__pycache__" in relative.parts or gpu.pruned(relative.as_posix())


def record_paths(site: Path, names: set[str]) -> set[str]:
    """The files (paths under site-packages/) that the distributions named `names` (canonical) installed
    into `site`, from their RECORD."""
    paths: set[str] = set()
    for info in sorted(site.glob("*.dist-info")):
        if canonical(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]) in names:
            for line in (info / "RECORD").read_text(encoding="utf-8").splitlines():
                path = line.rsplit(",", 2)[0]
                if path and not path.startswith(".."):
                    paths.add(path)
    return paths
