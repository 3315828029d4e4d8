"""What the CPU can do, and the kernels that follow: found before numba compiles anything.

    cpu = detect()                 # CpuInfo(arch, features, source, model)
    target = choose(cpu)           # the best tier it supports, plus the tier's extras it has (VNNI)
    activate(target)               # numba compiles for exactly that ISA from now on

A tier's machine code uses only the features the tier requires (numba's target is a generic CPU plus
those features, never the host), so kernels compiled on one machine run on every CPU of the tier: that
is what lets the bundler ship precompiled kernels. An extra is an optional extension within a tier whose
instructions change the kernels (VNNI: the int8 dot products use vpdpbusd, `kernels/blockdot.py`); a
target is a tier and the extras in use, named like `x86-64-avx512+vnni`.

Sources, first that answers: `$LLAMAPYZ_CPU_FEATURES` (comma-separated names below; for tests and for
pretending to be a smaller CPU), `/proc/cpuinfo` on Linux, `sysctl` on macOS, then LLVM's host detection
(llvmlite, which numba brings anyway) anywhere else. Feature names follow Linux's /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlamapyzError

X86_FEATURES = ("ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c",
                "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
ARM_FEATURES = ("asimd", "asimddp", "fphp")
ENV_FEATURES = "LLAMAPYZ_CPU_FEATURES"
ENV_TIER = "LLAMAPYZ_CPU_TIER"

# macOS sysctl keys (value 1 = present) and tokens of machdep.cpu.features / leaf7_features, by our names.
SYSCTL_KEYS = {
    "hw.optional.supplementalsse3": "ssse3", "hw.optional.sse4_1": "sse4_1", "hw.optional.sse4_2": "sse4_2",
    "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma",
    "hw.optional.f16c": "f16c", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512vl": "avx512vl",
    "hw.optional.AdvSIMD": "asimd", "hw.optional.neon": "asimd", "hw.optional.arm.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_FP16": "fphp", "hw.optional.neon_fp16": "fphp",
}
MACHDEP_TOKENS = {"SSSE3": "ssse3", "SSE4.1": "sse4_1", "SSE4.2": "sse4_2", "POPCNT": "popcnt", "AVX1.0": "avx",
                  "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                  "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni"}
# LLVM's feature names (numba's target, llvmlite's host detection) -> ours
LLVM_NAMES = {"ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "popcnt": "popcnt", "avx": "avx",
              "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
              "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni",
              "neon": "asimd", "dotprod": "asimddp", "fullfp16": "fphp"}
TO_LLVM = {ours: llvm for llvm, ours in LLVM_NAMES.items()}


class UnsupportedCpuError(LlamapyzError):
    """This CPU cannot run llamapyz's kernels, or cannot run the tier asked for."""


@dataclass(frozen=True)
class CpuInfo:
    arch: str  # "x86_64", "aarch64", or whatever else platform.machine() says
    features: frozenset[str]  # of X86_FEATURES / ARM_FEATURES
    source: str  # where the features came from
    model: str = ""


@dataclass(frozen=True)
class Extra:
    name: str
    requires: tuple[str, ...]
    title: str  # for the start-up log


@dataclass(frozen=True)
class Tier:
    name: str
    arch: str
    requires: tuple[str, ...]
    extras: tuple[Extra, ...] = ()


_AVX2 = ("ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c")
TIERS = (  # best first, per architecture
    Tier("x86-64-avx512", "x86_64", (*_AVX2, "avx512f", "avx512bw", "avx512vl"),
         (Extra("vnni", ("avx512_vnni",), "VNNI dot products"),)),
    Tier("x86-64-avx2", "x86_64", _AVX2, (Extra("vnni", ("avx_vnni",), "AVX-VNNI dot products"),)),
    Tier("x86-64-ssse3", "x86_64", ("ssse3",)),
    Tier("aarch64-dotprod", "aarch64", ("asimd", "asimddp")),
    Tier("aarch64-neon", "aarch64", ("asimd",)),
)
GENERIC = Tier("generic", "*", ())  # any other architecture: numba's code for the host, untiered
TIERS_BY_NAME = {t.name: t for t in TIERS}
LLVM_CPU = {"x86_64": "x86-64", "aarch64": "generic"}  # plus exactly the target's features


@dataclass(frozen=True)
class Target:
    """A tier and the extras in use: what the kernels are compiled for."""

    tier: Tier
    extras: tuple[Extra, ...] = ()

    @property
    def name(self) -> str:
        return self.tier.name + "".join(f"+{e.name}" for e in self.extras)

    @property
    def features(self) -> tuple[str, ...]:
        return self.tier.requires + tuple(f for e in self.extras for f in e.requires)

    @property
    def llvm_cpu(self) -> str | None:
        """numba's NUMBA_CPU_NAME; None for the generic tier (numba's own choice: the host)."""
        return LLVM_CPU.get(self.tier.arch)

    @property
    def llvm_features(self) -> str | None:
        return ",".join(f"+{TO_LLVM[f]}" for f in self.features) if self.llvm_cpu else None

    @property
    def native_f16(self) -> bool:
        """Whether half -> float is one instruction; without F16C LLVM would call a libgcc routine that
        numba's JIT cannot link, so the ssse3 tier takes the integer conversion (see simd.py)."""
        return self.tier.arch != "x86_64" or "f16c" in self.features

    def describe(self) -> str:
        return self.tier.name + "".join(f" with {e.title}" for e in self.extras)


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


def choose(cpu: CpuInfo, forced: str | None = None) -> Target:
    """The best target `cpu` supports (its best tier with every extra it has), or exactly the `forced` one
    (`x86-64-avx2` without extras, `x86-64-avx2+vnni` with); a CPU below every tier is refused."""
    own = [t for t in TIERS if t.arch == cpu.arch]
    if forced:
        return _forced(cpu, forced)
    if not own:
        return Target(GENERIC)
    for tier in own:
        if supports(cpu, tier.requires):
            return Target(tier, tuple(e for e in tier.extras if supports(cpu, e.requires)))
    lowest = own[-1]
    raise UnsupportedCpuError(f"this CPU lacks {', '.join(f.upper() for f in missing(cpu, lowest.requires))}, "
                              f"which llamapyz needs on {cpu.arch}")  # one line, as llamafile says it


def _forced(cpu: CpuInfo, forced: str) -> Target:
    tier_name, *extra_names = forced.strip().split("+")
    tier = TIERS_BY_NAME.get(tier_name)
    extras = {e.name: e for e in tier.extras} if tier else {}
    if tier is None or any(n not in extras for n in extra_names):
        runs = [t.name for t in runnable(cpu)]
        raise UnsupportedCpuError(f"unknown CPU tier {forced!r}", hint=f"known: {', '.join(all_names())}; this "
                                                                      f"CPU runs {', '.join(runs) or 'none'}")
    if tier.arch != cpu.arch:
        raise UnsupportedCpuError(f"CPU tier {forced} is for {tier.arch}; this CPU is {cpu.arch}")
    target = Target(tier, tuple(extras[n] for n in extra_names))
    lacking = missing(cpu, target.features)
    if lacking:
        raise UnsupportedCpuError(f"CPU tier {forced} needs {', '.join(lacking)}, which this CPU lacks",
                                  hint="leave the tier out to use the best one this CPU supports")
    return target


def all_names() -> list[str]:
    return [Target(t, extras).name for t in TIERS for extras in ((), *((e,) for e in t.extras))]


def runnable(cpu: CpuInfo) -> list[Target]:
    """Every target this CPU can run, best first (what the bundler precompiles)."""
    return [Target(t, extras) for t in TIERS if t.arch == cpu.arch and supports(cpu, t.requires)
            for extras in (*((e,) for e in t.extras if supports(cpu, e.requires)), ())]


def supports(cpu: CpuInfo, features: tuple[str, ...]) -> bool:
    return not missing(cpu, features)


def missing(cpu: CpuInfo, features: tuple[str, ...]) -> list[str]:
    return [f for f in features if f not in cpu.features]


def describe(cpu: CpuInfo) -> str:
    features = " ".join(f for f in known_features(cpu.arch) if f in cpu.features) or "none of the ones we use"
    return f"{cpu.model or cpu.arch} ({cpu.arch}; {features}; from {cpu.source})"


# --- the target numba compiles for, chosen once per process ------------------------------------------------

_active: Target | None = None


def active() -> Target:
    """The target in use, choosing (and activating) the best one, or $LLAMAPYZ_CPU_TIER, on first call."""
    if _active is None:
        activate(choose(detect(), os.environ.get(ENV_TIER) or None))
    assert _active is not None
    return _active


def activate(target: Target) -> Target:
    """Make numba compile for `target`. Must run before the first kernel is compiled or loaded from its cache:
    numba fixes its target machine when its first dispatcher is created."""
    global _active
    if _active is not None:
        if _active != target:
            raise UnsupportedCpuError(f"the kernels are already compiled for {_active.name}; cannot switch to "
                                      f"{target.name} in the same process")
        return target
    if target.llvm_cpu:
        settings = {"NUMBA_CPU_NAME": target.llvm_cpu, "NUMBA_CPU_FEATURES": target.llvm_features}
        os.environ.update(settings)
        numba_config = sys.modules.get("numba.core.config")
        if numba_config is not None:  # imported already: its settings were read, set them directly
            numba_config.CPU_NAME, numba_config.CPU_FEATURES = target.llvm_cpu, target.llvm_features
    _active = target
    return target


def check_numba(target: Target) -> None:
    """Refuse to run kernels compiled for another target (numba set up before `activate` ran)."""
    if not target.llvm_cpu:
        return
    from numba.core.registry import cpu_target

    _, cpu_name, features = cpu_target.target_context.codegen().magic_tuple()
    if (cpu_name, features) != (target.llvm_cpu, target.llvm_features):
        raise UnsupportedCpuError(f"numba compiles for {cpu_name} ({features}), not for the CPU tier "
                                  f"{target.name}", hint="import llamapyz before anything that uses numba")
