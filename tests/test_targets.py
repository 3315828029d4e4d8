"""llamapyz/archive/targets.py: an interpreter's wheel tags equal, in order, what `packaging` (pip's tag logic)
lists for it (tests/data/interpreter_tags.json, recorded by tests/record_interpreter_tags.py: this
machine's real interpreter, and described ones for Linux x86-64/aarch64 glibc, musl, macOS arm64/x86_64,
Windows); and the choice of an archive's target follows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamapyz.archive.targets import Interpreter, choose, expand, supported_tags

RECORDED = json.loads((Path(__file__).resolve().parent / "data" / "interpreter_tags.json").read_text())


def interpreter(entry: dict) -> Interpreter:
    d = entry["interpreter"]
    libc = (d["libc"][0], tuple(d["libc"][1])) if d.get("libc") else None
    return Interpreter(tuple(d["version"]), d["system"], d["machine"], libc,
                       tuple(d["macos"]) if d.get("macos") else None)


@pytest.mark.parametrize("entry", RECORDED, ids=[e["name"] for e in RECORDED])
def test_tags_equal_packagings_in_order(entry: dict) -> None:
    assert supported_tags(interpreter(entry)) == entry["tags"]


def test_the_running_interpreter_matches_packaging_live() -> None:
    from packaging.tags import sys_tags  # pip's tag logic (pytest depends on packaging)

    assert supported_tags(Interpreter.current()) == [str(tag) for tag in sys_tags()]


TARGETS = {  # name -> the tag of each compiled wheel (numpy, numba, llvmlite, llguidance as on PyPI)
    "cp310-linux-x86_64": ["cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64",
                           "cp310-cp310-manylinux2014_x86_64.manylinux_2_17_x86_64",
                           "cp39-abi3-manylinux_2_31_x86_64"],
    "cp311-linux-x86_64": ["cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",
                           "cp39-abi3-manylinux_2_31_x86_64"],
    "cp312-linux-aarch64": ["cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64",
                            "cp39-abi3-manylinux_2_31_aarch64"],
    "cp312-macos-arm64": ["cp312-cp312-macosx_14_0_arm64", "cp312-cp312-macosx_11_0_arm64",
                          "cp39-abi3-macosx_11_0_arm64"],
    "cp313-windows-amd64": ["cp313-cp313-win_amd64", "cp39-abi3-win_amd64"],
}


def by_name(name: str) -> Interpreter:
    return interpreter(next(e for e in RECORDED if e["name"] == name))


def test_each_interpreter_gets_its_own_target() -> None:
    assert choose(TARGETS, by_name("CPython 3.10, manylinux glibc 2.31, x86_64")) == "cp310-linux-x86_64"
    assert choose(TARGETS, by_name("CPython 3.12, linux aarch64 glibc 2.39")) == "cp312-linux-aarch64"
    assert choose(TARGETS, by_name("CPython 3.12, macOS 14 arm64")) == "cp312-macos-arm64"
    assert choose(TARGETS, by_name("CPython 3.13, Windows amd64")) == "cp313-windows-amd64"


def test_what_does_not_fit_is_refused() -> None:
    assert choose(TARGETS, by_name("CPython 3.11, musllinux 1.2, x86_64")) is None  # manylinux needs glibc
    assert choose(TARGETS, by_name("CPython 3.11, macOS 13 x86_64")) is None
    old_glibc = Interpreter((3, 10), "linux", "x86_64", ("glibc", (2, 28)))
    assert choose(TARGETS, old_glibc) is None  # llguidance's wheel needs glibc 2.31
    assert choose({"cp312-macos-arm64": TARGETS["cp312-macos-arm64"]},
                  Interpreter((3, 12), "darwin", "arm64", macos=(13, 0))) is None  # a macOS 14 wheel


def test_the_more_specific_target_wins() -> None:
    pure_abi3 = {"abi3": ["cp39-abi3-manylinux_2_17_x86_64"], "own": ["cp311-cp311-manylinux_2_17_x86_64"]}
    assert choose(pure_abi3, Interpreter((3, 11), "linux", "x86_64", ("glibc", (2, 36)))) == "own"
    assert expand("cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64") == {
        "cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"}
