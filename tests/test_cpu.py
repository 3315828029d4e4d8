from __future__ import annotations

import platform
from pathlib import Path

import pytest

from llamapyz.machine.cpu import (
    LLVM_NAMES,
    TIERS,
    TIERS_BY_NAME,
    TO_LLVM,
    CpuInfo,
    UnsupportedCpuError,
    all_names,
    choose,
    describe,
    detect,
    parse_cpuinfo,
    parse_sysctl,
    runnable,
)

SAMPLES = Path(__file__).parent / "data" / "cpu"


SSE4 = "ssse3 sse4_1 sse4_2 popcnt"


@pytest.mark.parametrize("sample, arch, features, target", [
    ("linux-graniterapids.cpuinfo", "x86_64",
     f"{SSE4} avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx_vnni", "x86-64-avx512+vnni"),
    ("linux-arrowlake.cpuinfo", "x86_64", f"{SSE4} avx avx2 fma f16c avx_vnni", "x86-64-avx2+vnni"),
    ("linux-graviton.cpuinfo", "aarch64", "asimd", "aarch64-neon"),
    ("linux-graviton2.cpuinfo", "aarch64", "asimd asimddp fphp", "aarch64-dotprod"),
    ("darwin-haswell.sysctl", "x86_64", f"{SSE4} avx avx2 fma f16c", "x86-64-avx2"),
    ("darwin-m3.sysctl", "aarch64", "asimd asimddp fphp", "aarch64-dotprod"),
    # the x86 features Rosetta 2 emulates (this sample's machdep line lacks POPCNT)
    ("darwin-rosetta2-m1.sysctl", "x86_64", "ssse3 sse4_1 sse4_2", "x86-64-ssse3"),
])
def test_recorded_machines_parse_to_their_features_and_tier(sample, arch, features, target):
    text = (SAMPLES / sample).read_text()
    cpu = (parse_sysctl if sample.endswith(".sysctl") else parse_cpuinfo)(text, arch)
    assert cpu.features == frozenset(features.split())
    assert choose(cpu).name == target
    assert cpu.model  # the model name is found in every sample


def test_an_x86_cpu_without_ssse3_is_refused_naming_the_feature():
    with pytest.raises(UnsupportedCpuError, match="this CPU lacks SSSE3, which llamapyz needs on x86_64"):
        choose(detect_with("avx", "x86_64"))


def test_forcing_a_tier():
    cpu = parse_cpuinfo((SAMPLES / "linux-arrowlake.cpuinfo").read_text(), "x86_64")
    assert choose(cpu, "x86-64-ssse3").name == "x86-64-ssse3"  # a lower tier is always allowed
    assert choose(cpu, "x86-64-avx2").name == "x86-64-avx2"  # exactly as named: no extras unless asked
    assert choose(cpu, "x86-64-avx2+vnni").extras[0].requires == ("avx_vnni",)
    with pytest.raises(UnsupportedCpuError, match="x86-64-avx512 needs avx512f, avx512bw, avx512vl"):
        choose(cpu, "x86-64-avx512")
    with pytest.raises(UnsupportedCpuError, match="is for aarch64; this CPU is x86_64"):
        choose(cpu, "aarch64-neon")
    with pytest.raises(UnsupportedCpuError, match="unknown CPU tier 'x86-64-ssse3\\+vnni'"):
        choose(cpu, "x86-64-ssse3+vnni")
    with pytest.raises(UnsupportedCpuError, match="unknown CPU tier 'avx3'") as err:
        choose(cpu, "avx3")
    assert "this CPU runs x86-64-avx2+vnni, x86-64-avx2, x86-64-ssse3" in err.value.hint
    assert [t.name for t in runnable(cpu)] == ["x86-64-avx2+vnni", "x86-64-avx2", "x86-64-ssse3"]


def test_other_architectures_get_the_generic_tier():
    target = choose(CpuInfo("riscv64", frozenset(), "test"))
    assert target.name == "generic" and target.llvm_cpu is None  # numba's own choice: the host


@pytest.mark.parametrize("name", all_names())
def test_a_target_compiles_for_exactly_its_required_features(name):
    """No host CPU name, no feature the tier does not require: the code runs on every CPU of the tier."""
    tier_name = name.split("+")[0]
    cpu = CpuInfo(TIERS_BY_NAME[tier_name].arch, frozenset(LLVM_NAMES.values()), "test")
    target = choose(cpu, name)
    assert target.llvm_cpu in ("x86-64", "generic")
    assert target.llvm_features.split(",") == [f"+{TO_LLVM[f]}" for f in target.features]
    assert set(target.features) >= set(TIERS_BY_NAME[tier_name].requires)
    assert target.native_f16 == (name != "x86-64-ssse3")
    assert len(all_names()) == len(TIERS) + sum(len(t.extras) for t in TIERS)


def detect_with(features: str, arch: str) -> CpuInfo:
    from llamapyz.machine.cpu import from_env

    return from_env(features, arch)


def test_the_environment_override_and_its_errors():
    cpu = detect({"LLAMAPYZ_CPU_FEATURES": "ssse3, avx2 asimd"})
    expected = {"x86_64": {"ssse3", "avx2"}, "aarch64": {"asimd"}}.get(cpu.arch, set())
    assert cpu.features == expected and cpu.source == "LLAMAPYZ_CPU_FEATURES"
    with pytest.raises(UnsupportedCpuError, match="unknown feature names sse9"):
        detect({"LLAMAPYZ_CPU_FEATURES": "sse9"})


def test_this_machine_agrees_with_llvm():
    """/proc/cpuinfo (or sysctl) and LLVM's own host detection name the same features here."""
    from llamapyz.machine.cpu import from_llvm, machine

    cpu = detect({})
    assert cpu.arch == machine()
    assert cpu.features == from_llvm(cpu.arch).features
    assert choose(cpu).tier.name in TIERS_BY_NAME or platform.machine() not in ("x86_64", "aarch64", "arm64")
    assert cpu.arch in describe(cpu)
