"""The archive's Python side: our runtime's dependencies, pinned to the versions this environment runs.

The closure of llamapyz's requirements (markers evaluated for this interpreter) is pinned to the installed
versions, so an archive runs exactly the numpy, numba, … the tests ran. shiv's `pip install --target`
fetches those wheels (binary only, no bytecode: Python writes it in the user's cache on first import) into a
site-packages folder cached per pin set, so a rebuild does not reinstall.
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
except ImportError:  # pip always brings its own copy; the build needs pip anyway
    from pip._vendor.packaging.requirements import Requirement

from runtime.errors import LlamapyzError

from .models import cache_dir

PROJECT = "llamapyz"
BUILD_ONLY = {"shiv"}  # needed to build archives, not inside them
PRUNED_TESTS = {"numpy", "numba"}  # their test suites: 12 MB and a thousand files nobody runs from an archive


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    tags: tuple[str, ...]  # from the installed .dist-info/WHEEL

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def runtime_pins() -> list[str]:
    """`name==version` for every distribution the runtime needs, as installed here, sorted."""
    try:
        roots = [Requirement(r) for r in metadata.distribution(PROJECT).requires or []]
    except metadata.PackageNotFoundError:
        raise LlamapyzError(f"{PROJECT} is not installed in this Python ({sys.executable})",
                            hint="install it first: pip install -e .") from None
    pins: dict[str, str] = {}
    todo = [r for r in roots if _applies(r) and _key(r.name) not in BUILD_ONLY]
    while todo:
        req = todo.pop()
        key = _key(req.name)
        if key in pins:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise LlamapyzError(f"{req.name} (needed by the runtime) is not installed here",
                                hint="reinstall: pip install -e .") from None
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        todo.extend(r for r in (Requirement(s) for s in dist.requires or []) if _applies(r))
    return sorted(pins.values(), key=str.lower)


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(pins: list[str], say: Callable[[str], None]) -> Path:
    """A folder holding exactly `pins` (no bytecode, no scripts, no numpy/numba tests), cached per pin set."""
    key = hashlib.sha256("\n".join([sys.version, sys.platform, *pins]).encode()).hexdigest()[:16]
    target = cache_dir().parent / "site-packages" / key
    if target.is_dir():
        say(f"  {len(pins)} wheels, cached in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say(f"  installing {len(pins)} wheels with pip: {', '.join(pins)}")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".install-") as tmp:
        staging = Path(tmp) / "site-packages"
        _pip_install(["--target", str(staging), "--no-deps", "--only-binary=:all:", "--no-compile", "--quiet",
                      *pins])
        shutil.rmtree(staging / "bin", ignore_errors=True)  # console scripts naming this machine's python
        for name in PRUNED_TESTS:
            for tests in sorted((staging / name).rglob("tests"), reverse=True):
                if tests.is_dir():
                    shutil.rmtree(tests)
        staging.rename(target)
    say(f"  installed in {time.perf_counter() - started:.1f} s")
    return target


def _pip_install(args: list[str]) -> None:
    from shiv.pip import clean_pip_env

    with clean_pip_env():
        result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", *args],
                                capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise LlamapyzError(f"pip could not install the runtime's wheels: {last[0]}",
                            hint="the package index must be reachable once; later builds use the cache")


def installed_wheels(root: Path) -> list[Wheel]:
    """Name, version and tags of every distribution in a site-packages folder."""
    wheels = []
    for info in sorted(root.glob("*.dist-info")):
        fields = {}
        for line in (info / "METADATA").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key, value.strip())
        tags = tuple(line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines()
                     if line.startswith("Tag:"))
        wheels.append(Wheel(fields["Name"], fields["Version"], tags))
    return wheels


def glibc_needed(wheels: list[Wheel]) -> str | None:
    """The newest glibc any wheel needs: each wheel needs the oldest its manylinux tags name."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    needed: tuple[int, int] | None = None
    for wheel in wheels:
        versions = []
        for tag in wheel.tags:
            platform_tag = tag.split("-")[-1]
            if m := re.match(r"manylinux_(\d+)_(\d+)_", platform_tag):
                versions.append((int(m[1]), int(m[2])))
            elif (base := platform_tag.split("_")[0]) in legacy:
                versions.append(legacy[base])
        if versions:
            needed = max(needed or (0, 0), min(versions))
    return f"{needed[0]}.{needed[1]}" if needed else None


def should_skip(relative: Path) -> bool:
    """Files of a site-packages folder that never go into an archive: bytecode, and caches other than our
    precompiled kernels (numba's .nbi/.nbc and the warm markers, see bundler/kernels.py)."""
    if relative.parts[:3] == ("runtime", "kernels", "__pycache__"):
        return relative.suffix not in (".nbi", ".nbc") and not relative.name.startswith("warm-")
    return relative.suffix == ".pyc" or "__pycache__" in relative.parts
