from __future__ import annotations

import platform
from pathlib import Path

import pytest

from runtime.cpu import (
    TIERS_BY_NAME,
    CpuInfo,
    UnsupportedCpuError,
    describe,
    detect,
    parse_cpuinfo,
    parse_sysctl,
    select_tier,
)

SAMPLES = Path(__file__).parent / "data" / "cpu"


@pytest.mark.parametrize("sample, arch, features, tier", [
    ("linux-graniterapids.cpuinfo", "x86_64",
     "ssse3 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx_vnni", "x86-64-avx512"),
    ("linux-arrowlake.cpuinfo", "x86_64", "ssse3 avx avx2 fma f16c avx_vnni", "x86-64-avx2"),
    ("linux-graviton.cpuinfo", "aarch64", "asimd", "aarch64-neon"),
    ("linux-graviton2.cpuinfo", "aarch64", "asimd asimddp fphp", "aarch64-dotprod"),
    ("darwin-haswell.sysctl", "x86_64", "ssse3 avx avx2 fma f16c", "x86-64-avx2"),
    ("darwin-m3.sysctl", "aarch64", "asimd asimddp fphp", "aarch64-dotprod"),
    ("darwin-rosetta2-m1.sysctl", "x86_64", "ssse3", "x86-64-ssse3"),  # the x86 features Rosetta emulates
])
def test_recorded_machines_parse_to_their_features_and_tier(sample, arch, features, tier):
    text = (SAMPLES / sample).read_text()
    cpu = (parse_sysctl if sample.endswith(".sysctl") else parse_cpuinfo)(text, arch)
    assert cpu.features == frozenset(features.split())
    assert select_tier(cpu).name == tier
    assert cpu.model  # the model name is found in every sample


def test_an_x86_cpu_without_ssse3_is_refused_naming_the_feature():
    with pytest.raises(UnsupportedCpuError, match="this CPU lacks SSSE3, which llamapyz needs on x86_64"):
        select_tier(detect_with("avx", "x86_64"))


def test_forcing_a_tier():
    cpu = parse_cpuinfo((SAMPLES / "linux-arrowlake.cpuinfo").read_text(), "x86_64")
    assert select_tier(cpu, "x86-64-ssse3").name == "x86-64-ssse3"  # a lower tier is always allowed
    with pytest.raises(UnsupportedCpuError, match="x86-64-avx512 needs avx512f, avx512bw, avx512vl"):
        select_tier(cpu, "x86-64-avx512")
    with pytest.raises(UnsupportedCpuError, match="is for aarch64; this CPU is x86_64"):
        select_tier(cpu, "aarch64-neon")
    with pytest.raises(UnsupportedCpuError, match="unknown CPU tier 'avx3'") as err:
        select_tier(cpu, "avx3")
    assert "this CPU runs x86-64-avx2, x86-64-ssse3" in err.value.hint


def test_other_architectures_get_the_generic_tier():
    assert select_tier(CpuInfo("riscv64", frozenset(), "test")).name == "generic"


def detect_with(features: str, arch: str) -> CpuInfo:
    from runtime.cpu import from_env

    return from_env(features, arch)


def test_the_environment_override_and_its_errors():
    cpu = detect({"LLAMAPYZ_CPU_FEATURES": "ssse3, avx2 asimd"})
    expected = {"x86_64": {"ssse3", "avx2"}, "aarch64": {"asimd"}}.get(cpu.arch, set())
    assert cpu.features == expected and cpu.source == "LLAMAPYZ_CPU_FEATURES"
    with pytest.raises(UnsupportedCpuError, match="unknown feature names sse9"):
        detect({"LLAMAPYZ_CPU_FEATURES": "sse9"})


def test_this_machine_agrees_with_llvm():
    """/proc/cpuinfo (or sysctl) and LLVM's own host detection name the same features here."""
    from runtime.cpu import from_llvm, machine

    cpu = detect({})
    assert cpu.arch == machine()
    assert cpu.features == from_llvm(cpu.arch).features
    assert select_tier(cpu).name in TIERS_BY_NAME or platform.machine() not in ("x86_64", "aarch64", "arm64")
    assert cpu.arch in describe(cpu)
