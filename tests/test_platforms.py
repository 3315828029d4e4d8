"""llamapyz/bundler/platforms.py and the per-target parts of llamapyz/bundler/deps.py: which targets
`--python/--platform` name, how each answers environment markers and pip's platform options, and the closure of a
runtime's requirements for a target (on described wheels, no index)."""

from __future__ import annotations

import sys

import pytest
from packaging.markers import Marker

from llamapyz.archive.targets import Interpreter
from llamapyz.bundler import deps
from llamapyz.bundler.platforms import PORTABLE_PLATFORMS, PORTABLE_PYTHONS, native, parse, target
from llamapyz.errors import LlamapyzError

HERE = "{}.{}".format(*sys.version_info[:2])


def test_the_options_name_targets():
    assert [t.name for t in parse(None, None)] == [native().name] and native().native
    platform = Interpreter.current().platform_name
    assert [t.name for t in parse("3.12,3.13", None)] == [f"cp312-{platform}", f"cp313-{platform}"]
    assert [t.name for t in parse(None, "windows-amd64,macos-arm64")] == [
        f"cp{HERE.replace('.', '')}-windows-amd64", f"cp{HERE.replace('.', '')}-macos-arm64"]
    portable = parse(None, None, portable=True)
    assert len(portable) == len(PORTABLE_PYTHONS) * len(PORTABLE_PLATFORMS) and not any(t.native for t in portable)
    for bad, message in [(("3.9", None), "needs CPython 3.10 or newer"), (("three", None), "not a CPython 3 version"),
                         ((None, "amiga-68k"), "--platform amiga-68k: unknown")]:
        with pytest.raises(LlamapyzError, match=message):
            parse(*bad)
    with pytest.raises(LlamapyzError, match="give either, not both"):
        parse("3.12", None, portable=True)


@pytest.mark.parametrize("name, python, platform, expected", [
    ("windows", "3.10", "windows-amd64", {"sys_platform == 'win32'": True, "platform_system == 'Windows'": True,
                                          "python_version < '3.11'": True, "os_name == 'nt'": True}),
    ("macos", "3.13", "macos-arm64", {"sys_platform == 'darwin'": True, "platform_machine == 'arm64'": True,
                                      "python_version < '3.13'": False, "platform_system == 'Windows'": False}),
    ("linux", "3.12", "linux-aarch64", {"sys_platform == 'linux'": True, "platform_machine == 'aarch64'": True,
                                        "python_full_version >= '3.12.0'": True}),
])
def test_markers_are_answered_as_the_targets_interpreter_would(name, python, platform, expected):
    env = target(python, platform).marker_environment()
    assert {marker: Marker(marker).evaluate(env) for marker in expected} == expected


def test_pip_is_given_the_platform_tags_oldest_first():
    options = target("3.12", "linux-x86_64").pip_options()
    assert options[:6] == ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    platforms = options[7::2]
    assert platforms[:2] == ["manylinux1_x86_64", "manylinux_2_5_x86_64"] and platforms[-1] == "linux_x86_64"
    assert "manylinux_2_35_x86_64" in platforms and "manylinux_2_36_x86_64" not in platforms  # the ceiling
    mac = target("3.12", "macos-arm64").pip_options()[7::2]
    assert mac[0].startswith("macosx_10_") and mac[-1] == "macosx_14_0_arm64"
    assert native().pip_options() == []  # pip's own choice for this interpreter


def wheel(name, version, tags=("py3-none-any",), requires=()):
    return deps.Wheel(name, version, tuple(tags), tuple(requires))


def test_the_closure_follows_the_targets_markers(monkeypatch):
    from packaging.requirements import Requirement

    monkeypatch.setattr(deps, "roots", lambda: [Requirement("starlette>=1"), Requirement("click")])
    wheels = [wheel("starlette", "1.10.0",
                    requires=["anyio<5,>=4", "typing-extensions>=4.10; python_version < '3.13'"]),
              wheel("anyio", "4.16.0", requires=['exceptiongroup>=1.0.2; python_version < "3.11"', "idna>=2.8",
                                                 'trio>=0.32.0; extra == "trio"']),
              wheel("idna", "3.20"), wheel("click", "8.1.7", requires=['colorama; platform_system == "Windows"']),
              wheel("typing_extensions", "4.16.0"), wheel("unrelated", "1.0")]
    needed, missing = deps.closure(target("3.10", "windows-amd64"), wheels)
    assert [w.key for w in needed] == ["anyio", "click", "idna", "starlette", "typing-extensions"]
    assert sorted(str(r) for r in missing) == ['colorama; platform_system == "Windows"',
                                               'exceptiongroup>=1.0.2; python_version < "3.11"']
    needed, missing = deps.closure(target("3.13", "linux-x86_64"), wheels)
    assert [w.key for w in needed] == ["anyio", "click", "idna", "starlette"] and not missing


def test_the_floor_is_the_newest_system_any_wheel_needs():
    assert deps.floor([wheel("numpy", "2", ["cp312-cp312-manylinux_2_27_x86_64", "cp312-cp312-manylinux_2_28_x86_64"]),
                       wheel("llguidance", "1", ["cp39-abi3-manylinux_2_31_x86_64"]),
                       wheel("markupsafe", "3", ["cp312-cp312-manylinux2014_x86_64"])]) == "glibc 2.31"
    assert deps.floor([wheel("llvmlite", "0.50", ["cp312-cp312-macosx_12_0_arm64"]),
                       wheel("numpy", "2", ["cp312-cp312-macosx_11_0_arm64"])]) == "macOS 12.0"
    assert deps.floor([wheel("numpy", "2", ["cp312-cp312-win_amd64"]), wheel("click", "8")]) is None
