"""The kernels of every CPU tier: their machine code, and their results on this machine.

- Each target's code is compiled here for its ISA (both architectures: LLVM carries both backends) and
  checked for the instructions the tier exists for, and for nothing above it.
- Each target this CPU can run passes the kernel, op, synthetic-model and exactness tests in a child
  process forced to it, gives the same greedy SmolLM2 text as every other target, and the same logits and
  KV cache bits on synthetic models (that comparison is tests/test_exactness.py's).
- A tier the CPU lacks, and a CPU below every tier, are refused with one line and exit code 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import llvmlite.binding as llvm
import pytest
from llvmlite import ir

from llamapyz.bundler.precompile import WARM_UP
from llamapyz.kernels import TARGET, blockdot, simd
from llamapyz.machine.cpu import LLVM_NAMES, TIERS_BY_NAME, CpuInfo, all_names, choose, detect, machine, runnable
from tests.conftest import REPO, golden

TRIPLES = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}
HERE = [t.name for t in runnable(detect())] if machine() in TRIPLES else []
# (instructions that must appear, that must not) in a Q4 block dot product, a half -> float conversion and
# a 16-float addition
EXPECTED = {
    "x86-64-ssse3": ({"pmaddubsw"}, {"ymm", "zmm", "vpdpbusd", "vcvtph2ps", "call"}),
    "x86-64-avx2": ({"ymm", "vpmaddubsw", "vcvtph2ps"}, {"zmm", "vpdpbusd"}),
    "x86-64-avx2+vnni": ({"vpdpbusd", "vcvtph2ps"}, {"zmm"}),
    "x86-64-avx512": ({"zmm", "vpmaddubsw", "vcvtph2ps"}, {"vpdpbusd"}),
    "x86-64-avx512+vnni": ({"zmm", "vpdpbusd", "vcvtph2ps"}, set()),
    "aarch64-neon": ({"fcvt"}, {"sdot", "udot"}),
    "aarch64-dotprod": ({"sdot", "fcvt"}, set()),
}


def target_named(name: str):
    arch = TIERS_BY_NAME[name.split("+")[0]].arch
    return choose(CpuInfo(arch, frozenset(LLVM_NAMES.values()), "test"), name)


# the byte shuffle that looks up IQ4_NL's and MXFP4's 16 levels (blockdot.levels), per target
LOOKUP = {"x86-64-ssse3": "pshufb", "x86-64-avx2": r"vpshufb\s+%?ymm", "x86-64-avx512": r"vpshufb\s+%?ymm",
          "aarch64-neon": "tbl", "aarch64-dotprod": "tbl"}


def probe_assembly(name: str) -> str:
    """Our IR for a Q4_1 block dot product, a half -> float, a 16-float add and a lookup of 32 nibbles' levels,
    as `name`'s machine code."""
    target = target_named(name)
    module = ir.Module("probe")
    v32 = simd._vec(simd.I8, 32)
    lookup = ir.Function(module, ir.FunctionType(ir.VoidType(), [v32.as_pointer()]), "levels")
    b = ir.IRBuilder(lookup.append_basic_block())
    nibbles = b.and_(b.load(lookup.args[0], align=1), simd._splat(simd.I8, 32, 15))
    b.store(blockdot.levels(b, blockdot.IQ4_NL_VALUES, nibbles, target), lookup.args[0])
    b.ret_void()
    v32, v8 = simd._vec(simd.I8, 32), simd._vec(simd.I32, 8)
    dot = ir.Function(module, ir.FunctionType(v8, [simd.I8.as_pointer()] * 2), "dot4u")
    b = ir.IRBuilder(dot.append_basic_block())
    q = b.and_(b.load(b.bitcast(dot.args[0], v32.as_pointer()), align=1), simd._splat(simd.I8, 32, 15))
    x = b.load(b.bitcast(dot.args[1], v32.as_pointer()), align=1)
    b.ret(blockdot.dot4u(b, q, x, target))
    half = ir.Function(module, ir.FunctionType(ir.FloatType(), [simd.I16]), "half_to_float")
    b = ir.IRBuilder(half.append_basic_block())
    b.ret(simd.HALF_TO_FLOAT[target.native_f16](b, half.args[0]))
    v16 = simd._vec(ir.FloatType(), 16)
    add = ir.Function(module, ir.FunctionType(ir.VoidType(), [v16.as_pointer()] * 2), "add16")
    b = ir.IRBuilder(add.append_basic_block())
    b.store(b.fadd(b.load(add.args[0]), b.load(add.args[1])), add.args[0])
    b.ret_void()
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple = TRIPLES[target.tier.arch]
    parsed = llvm.parse_assembly(str(module))
    parsed.triple = triple
    machine_ = llvm.Target.from_triple(triple).create_target_machine(target.llvm_cpu, target.llvm_features, opt=3)
    return machine_.emit_assembly(parsed)


@pytest.mark.parametrize("name", all_names())
def test_each_target_uses_its_isa_and_nothing_above_it(name):
    assembly = probe_assembly(name)
    found = {word for word in set.union(*EXPECTED[name]) if re.search(rf"\b{word}", assembly)}
    must, must_not = EXPECTED[name]
    assert must <= found, must - found
    assert not (must_not & found), must_not & found
    assert re.search(rf"\b{LOOKUP[name.split('+')[0]]}", assembly), "no byte shuffle for the levels"


def test_this_process_runs_the_best_target_or_the_forced_one():
    expected = os.environ.get("LLAMAPYZ_CPU_TIER") or choose(detect()).name
    assert TARGET.name == expected
    from numba.core.registry import cpu_target

    _, cpu_name, features = cpu_target.target_context.codegen().magic_tuple()
    assert (cpu_name, features) == (TARGET.llvm_cpu, TARGET.llvm_features)


def run_forced(name: str, *args: str, env: dict[str, str] | None = None, timeout: int = 900):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LLAMAPYZ_CPU_TIER": name, **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("name", HERE)
def test_every_runnable_target_matches_the_numpy_twins(name):
    """The kernel, op, synthetic-model and exactness tests, in a process whose kernels are compiled for `name`."""
    tests = ["tests/test_kernels.py", "tests/test_blockdot.py", "tests/test_half.py", "tests/test_steps.py",
             "tests/test_model.py", "tests/test_exactness.py",
             "tests/test_tiers.py::test_this_process_runs_the_best_target_or_the_forced_one"]
    done = run_forced(name, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout) and " failed" not in done.stdout


@pytest.fixture(scope="module")
def greedy_texts(smollm2_path) -> dict[str, str]:
    """SmolLM2's greedy continuation of each golden prompt, per target runnable here."""
    prompts = [case["prompt"] for case in golden("smollm2")["greedy"][:3]]
    texts = {}
    for name in HERE:
        outputs = []
        for prompt in prompts:
            done = run_forced(name, "-m", "llamapyz", "run", "-m", str(smollm2_path), "-p", prompt, "-n", "24",
                              "--temp", "0", "-t", "2")
            assert done.returncode == 0, done.stderr[-2000:]
            assert f"cpu: {target_named(name).describe()} (forced)" in done.stderr
            outputs.append(done.stdout)
        texts[name] = outputs
    return texts


@pytest.mark.slow
@pytest.mark.real_model
def test_every_runnable_target_gives_the_same_greedy_smollm2_text(greedy_texts):
    first, *others = HERE
    for name in others:
        assert greedy_texts[name] == greedy_texts[first], name
    assert "Paris" in greedy_texts[first][0]


def test_a_tier_this_cpu_lacks_is_refused_in_one_line(tmp_path):
    lacking = "aarch64-neon" if machine() == "x86_64" else "x86-64-ssse3"
    done = run_forced(lacking, "-m", "llamapyz", "run", "-m", str(tmp_path / "none.gguf"), "-p", "hi",
                      timeout=60)
    assert done.returncode != 0
    done = run_forced("", "-m", "llamapyz", "serve", "-m", "x.gguf", "--cpu-tier", lacking, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: CPU tier {lacking} is for ")
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(machine() != "x86_64", reason="the SSSE3 floor is x86-64's")
def test_an_x86_cpu_without_ssse3_gets_one_fatal_line(smollm2_path):
    done = run_forced("", "-m", "llamapyz", "serve", "-m", str(smollm2_path), "--port", "0",
                      env={"LLAMAPYZ_CPU_FEATURES": "popcnt"}, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "error: this CPU lacks SSSE3, which llamapyz needs on x86_64\n"


LOGITS_DIGEST = """
import hashlib, sys
from llamapyz import Model
model = Model.load(sys.argv[1], n_ctx=256, n_threads=2)
steps = [model.prefill(model.tokenize("The capital of France is"))]
for _ in range(6):
    steps.append(model.decode(int(steps[-1].argmax())))
print(hashlib.sha256(b"".join(s.tobytes() for s in steps)).hexdigest())
"""


@pytest.mark.slow
@pytest.mark.real_model
def test_freshly_compiled_and_cache_loaded_kernels_give_the_same_bits(smollm2_path, tmp_path):
    """An empty kernel cache (compiled in the process), then the same cache loaded by a second process."""
    digests = []
    for _ in range(2):
        done = run_forced("", "-c", LOGITS_DIGEST, str(smollm2_path), env={"NUMBA_CACHE_DIR": str(tmp_path)})
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(done.stdout.strip())
    assert any(tmp_path.glob("llamapyz-kernels/*.nbc"))  # the first run wrote the cache the second one read
    assert digests[0] == digests[1] and len(digests[0]) == 64


@pytest.mark.slow
@pytest.mark.real_model
def test_a_tier_without_cached_kernels_says_it_compiles_them_once(smollm2_path, tmp_path):
    """What a CPU tier the archive has no kernels for (aarch64) meets: one line on the first run, none later."""
    runs = [run_forced("", "-c", WARM_UP, str(smollm2_path), env={"NUMBA_CACHE_DIR": str(tmp_path)})
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    target = choose(detect()).name
    assert f"compiling the kernels for {target} (first run on this CPU tier" in runs[0].stdout
    assert re.search(r"kernels compiled in \d+\.\d s", runs[0].stdout)
    assert runs[1].stdout == ""
