"""Which of an archive's targets fits the running interpreter, decided the way pip decides which wheel
fits (standard library only: it runs at start-up, before anything is extracted).

An interpreter supports an ordered list of wheel tags (`supported_tags`), most specific first, exactly as
`packaging.tags.sys_tags()` lists them for a CPython: its own ABI on each platform tag, then abi3 and
"none", then older abi3 versions, then the pure-Python tags. The platform tags follow the machine: on
Linux its architecture, then manylinux down from the running glibc (with the legacy manylinux1/2010/2014
aliases) or musllinux down from the running musl; on macOS each release down to 10.4 in its binary
formats; on Windows win_amd64 / win_arm64.

A target (one Python version on one platform) holds wheels, each with its tags. It fits when every wheel
has a supported tag; of several that fit, the one whose worst wheel matches earliest in the list wins
(`choose`), as pip prefers the most specific wheel.

    interpreter = Interpreter.current()
    name = choose({"cp311-linux-x86_64": ["cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", ...], ...},
                  interpreter)
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


@dataclass(frozen=True)
class Interpreter:
    """What decides a CPython's wheel tags. `libc`: ("glibc" or "musl", (major, minor)) on Linux;
    `macos`: the release, e.g. (14, 0), on macOS."""

    version: tuple[int, int]
    system: str  # "linux", "darwin" or "windows"
    machine: str  # "x86_64", "aarch64", "arm64", "amd64", ...
    libc: tuple[str, tuple[int, int]] | None = None
    macos: tuple[int, int] | None = None

    @classmethod
    def current(cls) -> Interpreter:
        system = sys.platform if sys.platform in ("linux", "darwin") else "windows" if os.name == "nt" else sys.platform
        machine = platform.machine().lower()
        libc = macos = None
        if system == "linux":
            libc = _linux_libc()
        elif system == "darwin":
            macos = tuple(int(part) for part in (platform.mac_ver()[0].split(".") + ["0"])[:2])
            machine = "arm64" if machine == "arm64" else "x86_64"
        return cls(sys.version_info[:2], system, machine, libc, macos)  # type: ignore[arg-type]

    @property
    def platform_name(self) -> str:
        """As `build.py --platform` names it: linux-x86_64, linux-aarch64, macos-arm64, windows-amd64, ..."""
        if self.system == "windows":
            return "windows-arm64" if self.machine in ("arm64", "aarch64") else "windows-amd64"
        system = "macos" if self.system == "darwin" else self.system
        return f"{system}-{self.machine.replace('amd64', 'x86_64')}"

    def describe(self) -> str:
        """"CPython 3.12 on Linux x86-64 (glibc 2.36)"."""
        floor = f" ({self.libc[0]} {self.libc[1][0]}.{self.libc[1][1]})" if self.libc else ""
        floor = f" (macOS {self.macos[0]}.{self.macos[1]})" if self.macos else floor
        return "CPython {}.{} on {}{}".format(*self.version, platform_title(self.platform_name), floor)


def platform_title(name: str) -> str:
    """linux-x86_64 -> "Linux x86-64", macos-arm64 -> "macOS arm64", windows-amd64 -> "Windows x86-64"."""
    system, _, machine = name.partition("-")
    titles = {"linux": "Linux", "macos": "macOS", "windows": "Windows"}
    return f"{titles.get(system, system)} {machine.replace('amd64', 'x86-64').replace('x86_64', 'x86-64')}"


def _linux_libc() -> tuple[str, tuple[int, int]] | None:
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (AttributeError, OSError, ValueError):
        found = ""
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", found)
    if match:
        return "glibc", (int(match.group(1)), int(match.group(2)))
    name, version = platform.libc_ver()
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if name == "musl" and match:  # Python's own check knows musl since 3.12; older ones report ""
        return "musl", (int(match.group(1)), int(match.group(2)))
    return None


# --- platform tags ----------------------------------------------------------------------------------------

def platform_tags(interpreter: Interpreter) -> list[str]:
    if interpreter.system == "linux":
        return list(_linux_platforms(interpreter))
    if interpreter.system == "darwin":
        return list(_mac_platforms(interpreter.macos or (11, 0), interpreter.machine))
    return ["win_arm64" if interpreter.machine in ("arm64", "aarch64") else "win_amd64"]


def _linux_platforms(interpreter: Interpreter) -> Iterator[str]:
    arch = interpreter.machine
    yield f"linux_{arch}"
    kind, (major, minor) = interpreter.libc or ("", (0, 0))
    if kind == "glibc" and major == 2:
        oldest = 5 if arch in ("x86_64", "i686") else 17  # manylinux's floor per architecture
        for glibc_minor in range(minor, oldest - 1, -1):
            yield f"manylinux_2_{glibc_minor}_{arch}"
            legacy = _LEGACY_MANYLINUX.get((2, glibc_minor))
            if legacy:
                yield f"{legacy}_{arch}"
    elif kind == "musl":
        for musl_minor in range(minor, -1, -1):
            yield f"musllinux_{major}_{musl_minor}_{arch}"


def _mac_formats(version: tuple[int, int], arch: str) -> list[str]:
    if arch == "x86_64":
        return [] if version < (10, 4) else ["x86_64", "intel", "fat64", "fat3", "universal2", "universal"]
    return [arch, "universal2"] if arch == "arm64" else [arch]


def _mac_platforms(version: tuple[int, int], arch: str) -> Iterator[str]:
    if (10, 0) <= version < (11, 0):
        for minor in range(version[1], -1, -1):
            for binary_format in _mac_formats((10, minor), arch):
                yield f"macosx_10_{minor}_{binary_format}"
        return
    for major in range(version[0], 10, -1):
        for binary_format in _mac_formats((major, 0), arch):
            yield f"macosx_{major}_0_{binary_format}"
    for minor in range(16, 3, -1):  # 11+ runs 10.x x86_64 binaries; arm64 only as part of universal2
        for binary_format in _mac_formats((10, minor), arch) if arch == "x86_64" else ["universal2"]:
            yield f"macosx_10_{minor}_{binary_format}"


# --- all tags, most specific first ------------------------------------------------------------------------

def supported_tags(interpreter: Interpreter) -> list[str]:
    """The wheel tags a CPython accepts, in pip's order of preference."""
    major, minor = interpreter.version
    platforms = platform_tags(interpreter)
    cp = f"cp{major}{minor}"
    tags = [f"{cp}-{cp}-{p}" for p in platforms]
    tags += [f"{cp}-abi3-{p}" for p in platforms]
    tags += [f"{cp}-none-{p}" for p in platforms]
    tags += [f"cp{major}{m}-abi3-{p}" for m in range(minor - 1, 1, -1) for p in platforms]
    pythons = [f"py{major}{minor}", f"py{major}", *(f"py{major}{m}" for m in range(minor - 1, -1, -1))]
    tags += [f"{py}-none-{p}" for py in pythons for p in platforms]
    tags.append(f"{cp}-none-any")
    tags += [f"{py}-none-any" for py in pythons]
    return tags


def expand(tag: str) -> set[str]:
    """A wheel's compressed tag set ("cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64") as tags."""
    interpreters, abis, platforms = tag.split("-")
    return {f"{i}-{a}-{p}" for i in interpreters.split(".") for a in abis.split(".") for p in platforms.split(".")}


def choose(targets: Mapping[str, Sequence[str | Sequence[str]]], interpreter: Interpreter) -> str | None:
    """The target whose wheels all fit and whose least specific wheel fits best; None if none fits.
    `targets`: name -> each wheel's tag as in its file name, or its list of tags (as its WHEEL file has them)."""
    rank = {tag: i for i, tag in enumerate(supported_tags(interpreter))}
    best: tuple[int, str] | None = None
    for name, wheels in sorted(targets.items()):
        worst = 0
        for wheel in wheels:
            tags = expand(wheel) if isinstance(wheel, str) else set().union(*map(expand, wheel))
            matches = [rank[t] for t in tags if t in rank]
            if not matches:
                break
            worst = max(worst, min(matches))
        else:
            if best is None or worst < best[0]:
                best = (worst, name)
    return None if best is None else best[1]
