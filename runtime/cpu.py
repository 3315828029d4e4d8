"""What the CPU can do, and the kernel tier that follows: found before numba is imported.

    cpu = detect()                 # CpuInfo(arch, features, source, model)
    tier = select_tier(cpu)        # the best tier it supports, or the one forced by name

Sources, first that answers: `$LLAMAPYZ_CPU_FEATURES` (comma-separated names below; for tests and for
pretending to be a smaller CPU), `/proc/cpuinfo` on Linux, `sysctl` on macOS, then LLVM's host detection
(llvmlite, which numba brings anyway) anywhere else. Feature names follow Linux's /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import LlamapyzError

X86_FEATURES = ("ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
ARM_FEATURES = ("asimd", "asimddp", "fphp")
ENV_FEATURES = "LLAMAPYZ_CPU_FEATURES"

# macOS sysctl keys (value 1 = present) and tokens of machdep.cpu.features / leaf7_features, by our names.
SYSCTL_KEYS = {
    "hw.optional.supplementalsse3": "ssse3", "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma", "hw.optional.f16c": "f16c", "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512bw": "avx512bw", "hw.optional.avx512vl": "avx512vl",
    "hw.optional.AdvSIMD": "asimd", "hw.optional.neon": "asimd", "hw.optional.arm.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_FP16": "fphp", "hw.optional.neon_fp16": "fphp",
}
MACHDEP_TOKENS = {"SSSE3": "ssse3", "AVX1.0": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c",
                  "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni"}
LLVM_NAMES = {"ssse3": "ssse3", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f",
              "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni",
              "neon": "asimd", "dotprod": "asimddp", "fullfp16": "fphp"}


class UnsupportedCpuError(LlamapyzError):
    """This CPU cannot run llamapyz's kernels, or cannot run the tier asked for."""


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "aarch64", or whatever else platform.machine() says
    features: frozenset[str]  # of X86_FEATURES / ARM_FEATURES
    source: str  # where the features came from
    model: str = ""


@dataclass(frozen=True)
class Tier:
    name: str
    arch: str
    requires: tuple[str, ...]


TIERS = (  # best first, per architecture
    Tier("x86-64-avx512", "x86_64", ("ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl")),
    Tier("x86-64-avx2", "x86_64", ("ssse3", "avx", "avx2", "fma", "f16c")),
    Tier("x86-64-ssse3", "x86_64", ("ssse3",)),
    Tier("aarch64-dotprod", "aarch64", ("asimd", "asimddp")),
    Tier("aarch64-neon", "aarch64", ("asimd",)),
)
GENERIC = Tier("generic", "*", ())  # any other architecture: numba's code for the host, untiered
TIERS_BY_NAME = {t.name: t for t in TIERS}


def machine() -> str:
    name = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


def known_features(arch: str) -> tuple[str, ...]:
    return {"x86_64": X86_FEATURES, "aarch64": ARM_FEATURES}.get(arch, ())


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """Linux /proc/cpuinfo: the first processor's `flags` (x86) or `Features` (Arm) line."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or (f"Arm CPU part {fields['cpu part']}" if "cpu part" in fields else "")
    return CpuInfo(arch, frozenset(flags & set(known_features(arch))), "/proc/cpuinfo", model)


def parse_sysctl(text: str, arch: str) -> CpuInfo:
    """macOS `sysctl -a` (or its hw.optional and machdep.cpu lines). Under Rosetta 2 an x86-64 process
    sees both the Arm keys and the x86 features Rosetta emulates; `arch` (the process's) picks which count."""
    found: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in SYSCTL_KEYS and value == "1":
            found.add(SYSCTL_KEYS[key])
        elif key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            found.update(MACHDEP_TOKENS[t] for t in value.split() if t in MACHDEP_TOKENS)
        elif key == "machdep.cpu.brand_string":
            model = value
    return CpuInfo(arch, frozenset(found & set(known_features(arch))), "sysctl", model)


def from_env(value: str, arch: str) -> CpuInfo:
    names = {n for n in re.split(r"[,\s]+", value.strip().lower()) if n}
    unknown = names - set(X86_FEATURES) - set(ARM_FEATURES)
    if unknown:
        raise UnsupportedCpuError(f"{ENV_FEATURES}: unknown feature names {', '.join(sorted(unknown))}",
                                  hint=f"known: {', '.join(X86_FEATURES + ARM_FEATURES)}")
    return CpuInfo(arch, frozenset(names & set(known_features(arch))), ENV_FEATURES)


def from_llvm(arch: str) -> CpuInfo:
    """LLVM's own detection (what numba compiles for by default): works on every OS."""
    from llvmlite import binding

    host = binding.get_host_cpu_features()
    found = {ours for llvm, ours in LLVM_NAMES.items() if host.get(llvm)}
    return CpuInfo(arch, frozenset(found & set(known_features(arch))), "llvm", binding.get_host_cpu_name())


def detect(environ: dict[str, str] | None = None) -> CpuInfo:
    environ = os.environ if environ is None else environ
    arch = machine()
    if ENV_FEATURES in environ:
        return from_env(environ[ENV_FEATURES], arch)
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() == "Linux" and cpuinfo.is_file():
        return parse_cpuinfo(cpuinfo.read_text(errors="replace"), arch)
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "hw.optional", "machdep.cpu"], capture_output=True, text=True,
                                 timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            return parse_sysctl(out, arch)
    return from_llvm(arch)


def select_tier(cpu: CpuInfo, forced: str | None = None) -> Tier:
    """The best tier `cpu` supports, or `forced` if it can run it; a CPU below every tier is refused."""
    own = [t for t in TIERS if t.arch == cpu.arch]
    if forced is not None:
        tier = TIERS_BY_NAME.get(forced)
        if tier is None:
            raise UnsupportedCpuError(f"unknown CPU tier {forced!r}",
                                      hint=f"known: {', '.join(TIERS_BY_NAME)}; this CPU runs "
                                           f"{', '.join(t.name for t in own if supports(cpu, t)) or 'none'}")
        if tier.arch != cpu.arch:
            raise UnsupportedCpuError(f"CPU tier {forced} is for {tier.arch}; this CPU is {cpu.arch}")
        if not supports(cpu, tier):
            raise UnsupportedCpuError(f"CPU tier {forced} needs {', '.join(missing(cpu, tier))}, which this CPU "
                                      f"lacks", hint="leave the tier out to use the best one this CPU supports")
        return tier
    if not own:
        return GENERIC
    for tier in own:
        if supports(cpu, tier):
            return tier
    lowest = own[-1]
    raise UnsupportedCpuError(f"this CPU lacks {', '.join(f.upper() for f in missing(cpu, lowest))}, which "
                              f"llamapyz needs on {cpu.arch}", hint=f"found: {describe(cpu)}")


def supports(cpu: CpuInfo, tier: Tier) -> bool:
    return not missing(cpu, tier)


def missing(cpu: CpuInfo, tier: Tier) -> list[str]:
    return [f for f in tier.requires if f not in cpu.features]


def describe(cpu: CpuInfo) -> str:
    features = " ".join(f for f in known_features(cpu.arch) if f in cpu.features) or "none of the ones we use"
    return f"{cpu.model or cpu.arch} ({cpu.arch}; {features}; from {cpu.source})"
