"""Records the wheel tags of CPython interpreters as `packaging` (what pip uses) lists them, for
tests/test_targets.py: tests/data/interpreter_tags.json. One entry is this machine's real interpreter
(`packaging.tags.sys_tags()`); the others describe interpreters this machine does not have, with
packaging's own platform functions fed the glibc/musl/macOS release they would detect.

    python -m tests.record_interpreter_tags        # rewrites tests/data/interpreter_tags.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

from packaging import _manylinux, _musllinux, tags

from llamapyz.archive.targets import Interpreter

OUT = Path(__file__).resolve().parent / "data" / "interpreter_tags.json"


def linux_platforms(arch: str, glibc: tuple[int, int] | None, musl: tuple[int, int] | None) -> list[str]:
    with mock.patch.object(_manylinux, "_have_compatible_abi", return_value=glibc is not None), \
            mock.patch.object(_manylinux, "_get_glibc_version", return_value=glibc or (-1, -1)), \
            mock.patch.object(_manylinux, "_get_manylinux_module", return_value=None), \
            mock.patch.object(_musllinux, "_get_musl_version",
                              return_value=_musllinux._MuslVersion(*musl) if musl else None):
        return [f"linux_{arch}", *_manylinux.platform_tags([arch]), *_musllinux.platform_tags([arch])]


def cpython(version: tuple[int, int], platforms: list[str]) -> list[str]:
    cp = f"cp{version[0]}{version[1]}"
    return [str(t) for t in [*tags.cpython_tags(version, [cp], platforms),
                             *tags.compatible_tags(version, cp, platforms)]]


def main() -> None:
    here = Interpreter.current()
    entries = [
        {"name": f"this machine: CPython {sys.version.split()[0]}", "interpreter": vars(here),
         "tags": [str(t) for t in tags.sys_tags()]},
        {"name": "CPython 3.10, manylinux glibc 2.31, x86_64",
         "interpreter": {"version": (3, 10), "system": "linux", "machine": "x86_64", "libc": ("glibc", (2, 31))},
         "tags": cpython((3, 10), linux_platforms("x86_64", (2, 31), None))},
        {"name": "CPython 3.12, linux aarch64 glibc 2.39",
         "interpreter": {"version": (3, 12), "system": "linux", "machine": "aarch64", "libc": ("glibc", (2, 39))},
         "tags": cpython((3, 12), linux_platforms("aarch64", (2, 39), None))},
        {"name": "CPython 3.11, musllinux 1.2, x86_64",
         "interpreter": {"version": (3, 11), "system": "linux", "machine": "x86_64", "libc": ("musl", (1, 2))},
         "tags": cpython((3, 11), linux_platforms("x86_64", None, (1, 2)))},
        {"name": "CPython 3.12, macOS 14 arm64",
         "interpreter": {"version": (3, 12), "system": "darwin", "machine": "arm64", "macos": (14, 0)},
         "tags": cpython((3, 12), list(tags.mac_platforms((14, 0), "arm64")))},
        {"name": "CPython 3.11, macOS 13 x86_64",
         "interpreter": {"version": (3, 11), "system": "darwin", "machine": "x86_64", "macos": (13, 0)},
         "tags": cpython((3, 11), list(tags.mac_platforms((13, 0), "x86_64")))},
        {"name": "CPython 3.13, Windows amd64",
         "interpreter": {"version": (3, 13), "system": "windows", "machine": "amd64"},
         "tags": cpython((3, 13), ["win_amd64"])},
    ]
    OUT.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")  # an interpreter a line
    print(f"{OUT}: {len(entries)} interpreters, {sum(len(e['tags']) for e in entries)} tags")


if __name__ == "__main__":
    main()
