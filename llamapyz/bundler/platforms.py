"""The targets an archive can carry: one CPython version on one platform, named as `build.py` takes them.

    python build.py --python 3.11,3.12 --platform linux-x86_64,macos-arm64,windows-amd64
    python build.py --portable        # PORTABLE_PYTHONS x PORTABLE_PLATFORMS

Each platform is described by the newest system its wheels may ask for (the ceiling): a wheel fits a target
when one of its tags is among those a CPython of that version accepts there (`llamapyz.archive.targets.
supported_tags`). pip is given those platform tags oldest first, so of several builds of one release it picks
the one for the oldest system: the archive's floor (shown by `--version`) is as low as its wheels allow.
The default target is this interpreter on this machine, as it is (pip's own choice, for this system).

A target also answers the environment markers of requirements (`click`'s `colorama; platform_system ==
"Windows"`, `anyio`'s `exceptiongroup; python_version < "3.11"`) as its interpreter would.
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass

from llamapyz.archive.targets import Interpreter, platform_tags
from llamapyz.errors import LlamapyzError

# name -> (system, machine, newest glibc or macOS its wheels may need): glibc 2.35 is Ubuntu 22.04 (RHEL 9 has
# 2.34); macOS 14 is Sonoma. In practice (llamapyz's pins, late 2026) the floors come out lower: glibc 2.31
# (llguidance), macOS 12 (llvmlite).
PLATFORMS: dict[str, tuple[str, str, tuple[int, int] | None]] = {
    "linux-x86_64": ("linux", "x86_64", (2, 35)),
    "linux-aarch64": ("linux", "aarch64", (2, 35)),
    "macos-arm64": ("darwin", "arm64", (14, 0)),
    "macos-x86_64": ("darwin", "x86_64", (14, 0)),
    "windows-amd64": ("windows", "amd64", None),
}
# What the runtime's pins have wheels for (late 2026): numpy 2.4 and starlette 1.8+ need Python 3.11+, and
# llvmlite 0.50 / numba 0.68 ship no macOS x86-64 wheels (0.45 / 0.62 were the last).
PORTABLE_PYTHONS = ("3.11", "3.12", "3.13")
PORTABLE_PLATFORMS = ("linux-x86_64", "linux-aarch64", "macos-arm64", "windows-amd64")

_SYSTEMS = {"linux": ("Linux", "linux", "posix"), "darwin": ("Darwin", "darwin", "posix"),
            "windows": ("Windows", "win32", "nt")}  # platform_system, sys_platform, os_name


@dataclass(frozen=True)
class Target:
    name: str  # "cp312-linux-x86_64"
    interpreter: Interpreter
    native: bool = False  # this interpreter on this machine, as it is
    gpu: str | None = None  # the GPU support it carries (llamapyz/bundler/cuda_wheels.py's variant name), if any

    @property
    def python(self) -> str:
        return "{}.{}".format(*self.interpreter.version)

    @property
    def platform_tags(self) -> list[str]:
        return platform_tags(self.interpreter)

    def marker_environment(self) -> dict[str, str] | None:
        """What `packaging.markers.Marker.evaluate` reads, as this target's interpreter would report it
        (None: this interpreter's own)."""
        if self.native:
            return None
        system, sys_platform, os_name = _SYSTEMS[self.interpreter.system]
        machine = {"amd64": "AMD64"}.get(self.interpreter.machine, self.interpreter.machine)
        return {"implementation_name": "cpython", "implementation_version": f"{self.python}.0",
                "os_name": os_name, "platform_machine": machine, "platform_python_implementation": "CPython",
                "platform_release": "", "platform_system": system, "platform_version": "",
                "python_full_version": f"{self.python}.0", "python_version": self.python,
                "sys_platform": sys_platform}

    def pip_options(self) -> list[str]:
        """pip's cross-target options: wheels for this interpreter and platform tags, whatever runs pip."""
        if self.native:
            return []
        cp = "cp{}{}".format(*self.interpreter.version)
        options = ["--python-version", self.python, "--implementation", "cp", "--abi", cp]
        for tag in reversed(self.platform_tags):  # oldest first: pip prefers what it is given first
            options += ["--platform", tag]
        return options


def native() -> Target:
    here = Interpreter.current()
    return Target("cp{}{}-{}".format(*here.version, here.platform_name), here, native=True)


def target(python: str, platform_name: str) -> Target:
    system, machine, baseline = PLATFORMS[platform_name]
    version = tuple(int(part) for part in python.split("."))
    libc = ("glibc", baseline) if system == "linux" else None
    macos = baseline if system == "darwin" else None
    interpreter = Interpreter(version, system, machine, libc, macos)  # type: ignore[arg-type]
    return Target("cp{}{}-{}".format(*version, platform_name), interpreter)


def parse(pythons: str | None, platforms: str | None, portable: bool = False) -> list[Target]:
    """The targets `--python/--platform/--portable` name; neither given: this interpreter on this machine.
    One of the two given: the other defaults to this interpreter's version or this machine's platform."""
    if portable:
        if pythons or platforms:
            raise LlamapyzError("--portable is a set of --python and --platform values; give either, not both")
        pythons, platforms = ",".join(PORTABLE_PYTHONS), ",".join(PORTABLE_PLATFORMS)
    if not pythons and not platforms:
        return [native()]
    versions = _split(pythons) or ["{}.{}".format(*sys.version_info[:2])]
    for version in versions:
        if not re.fullmatch(r"3\.(1[0-9]|[89])", version):
            raise LlamapyzError(f"--python {version}: not a CPython 3 version like 3.12",
                                hint="the runtime needs CPython 3.10 or newer")
        if int(version.split(".")[1]) < 10:
            raise LlamapyzError(f"--python {version}: the runtime needs CPython 3.10 or newer")
    names = _split(platforms) or [this_platform_name()]
    unknown = [n for n in names if n not in PLATFORMS]
    if unknown:
        raise LlamapyzError(f"--platform {', '.join(unknown)}: unknown", hint=f"known: {', '.join(PLATFORMS)}")
    return [target(v, p) for p in names for v in versions]


def this_platform_name() -> str:
    here = Interpreter.current().platform_name
    if here not in PLATFORMS:
        raise LlamapyzError(f"this machine ({platform.system()} {platform.machine()}) is not one of the platforms "
                            "--python builds for", hint=f"add --platform, one of: {', '.join(PLATFORMS)}")
    return here


def _split(values: str | None) -> list[str]:
    return list(dict.fromkeys(v.strip() for v in (values or "").split(",") if v.strip()))
