"""A `.pyz` archive's view of itself, and its start-up: this file is also the archive's `__main__.py`.

The archive (written by `llamapyz/bundler/builder.py`):

    #!/usr/bin/env python3
    <model>.gguf …      each model's bytes, before the zip, at a multiple of 64 KiB: memory-mapped in place,
                        never extracted (a file two models share is stored once); the manifest says where
    (the zip)
    .args               baked-in default arguments, one per line; a `...` line marks where the user's go
    __main__.py         this file
    manifest.json       the models in order, the first the default: file, size, sha256, alias, settings,
                        offset (in the archive); versions; Python and platform tags; build time
    _llamapyz_targets.py  llamapyz/archive/targets.py: which target fits this interpreter, as pip decides
    environment.json    shiv's build settings (entry point, build id)
    _bootstrap/         shiv's bootstrap: puts the extracted site-packages/ on sys.path and calls the entry
                        point (`llamapyz.cli.main:archive_main`)
    site-packages/      what every target has: llamapyz/, webui/, the pure-Python dependencies
    blobs/SHA256        the other files, each distinct one once; targets/NAME.json says where they go
                        (llamapyz/bundler/layout.py)

The weights sit in front of the zip (llamapyz/bundler/zipapp.py), so that the zip's offsets stay small and
zipimport reads it, however large the weights, on CPython 3.11 and 3.12 too (they read no ZIP64 record).

Start-up (`main`) runs before anything is extracted, so this module uses the standard library only. It
chooses the target that fits this interpreter (or says which the archive carries), answers `--version` and
`--verify` on its own (no extraction, no numpy), merges the baked-in arguments with the user's, extracts the
common files and that target's own into the per-user cache (once, under a file lock), and hands over to
shiv's bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__:  # llamapyz.archive.launcher, imported from a checkout or an extracted runtime
    from . import targets
else:  # the archive's __main__.py: nothing is extracted yet, its sibling at the archive's top level serves
    import _llamapyz_targets as targets

MANIFEST = "manifest.json"
TARGETS_MODULE = "_llamapyz_targets.py"
COMMON, BLOBS, INDEXES = "site-packages/", "blobs/", "targets/"
ARGS = ".args"
USER_ARGS = "..."  # the line in .args where the user's own arguments are inserted
GGUF_MAGIC = b"GGUF"
HASH_CHUNK = 8 << 20
MAX_ERROR_CHARS = 400  # an error line's length (llamapyz/errors.py's; this module imports nothing of ours)


class BundleError(Exception):
    """The archive is damaged or does not fit this machine; the message says which and what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class BundledModel:
    """One model the archive serves (an entry of the manifest's "models"), and where its weights are."""

    file: str  # the archive entry holding the GGUF (models may share one)
    size: int
    sha256: str
    alias: str  # the model name the API shows and requests ask for
    settings: dict  # its own serving settings (n_ctx, chat_template, …: llamapyz/server/config_file.py's ModelSpec)
    offset: int  # file offset of the GGUF's first byte inside the archive (before the zip)
    archive: Path

    @property
    def source(self) -> tuple[Path, int, int]:
        """What `load_gguf` takes to map the weights straight from the archive."""
        return self.archive, self.offset, self.size


@dataclass
class Bundle:
    path: Path
    manifest: dict
    args: list[str]  # baked-in arguments, `...` included
    models: list[BundledModel]  # in the manifest's order: the first is the default

    def stored(self) -> dict[str, list[BundledModel]]:
        """Each GGUF entry, and the models it serves (one file may serve several aliases)."""
        by_file: dict[str, list[BundledModel]] = {}
        for model in self.models:
            by_file.setdefault(model.file, []).append(model)
        return by_file


def open_bundle(path: str | Path) -> Bundle:
    """Read the manifest and baked-in arguments, and check that a GGUF starts where it says each model's
    weights do, ending before the zip."""
    path = Path(path).resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            names = set(zf.namelist())
            args = zf.read(ARGS).decode().splitlines() if ARGS in names else []
            zip_start = min(i.header_offset for i in zf.infolist())  # absolute: zipfile counts what precedes it
            models = [BundledModel(m["file"], int(m["size"]), m["sha256"], m["alias"], m.get("settings") or {},
                                   int(m["offset"]), path) for m in manifest["models"]]
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: not a complete llamapyz archive ({exc})",
                          hint="the file may be truncated or damaged; copy it again") from None
    if not models:
        raise BundleError(f"{path}: the manifest lists no model", hint="rebuild the archive with build.py")
    with open(path, "rb") as f:
        for model in models:
            f.seek(model.offset)
            if not 0 < model.offset < model.offset + model.size <= zip_start or f.read(4) != GGUF_MAGIC:
                raise BundleError(f"{path}: no GGUF of {model.size} bytes at offset {model.offset} for {model.file} "
                                  f"(the zip starts at {zip_start})", hint="rebuild the archive with build.py")
    return Bundle(path, manifest, [a for a in args if a.strip()], models)


def merge_args(baked: list[str], user: list[str]) -> list[str]:
    """llamafile's rule: the user's arguments replace the `...` line, or follow the baked ones if it is
    missing. Options given later win, so the user's command line overrides the defaults before `...`."""
    if USER_ARGS not in baked:
        return [*baked, *user]
    at = baked.index(USER_ARGS)
    return [*baked[:at], *user, *(a for a in baked[at + 1:] if a != USER_ARGS)]


# --- which of its targets fits this machine? ---------------------------------------------------------------

def describe_target(target: dict) -> str:
    """"CPython 3.12 on Linux x86-64 (glibc 2.28 or newer)"."""
    floor = f" ({target['floor']} or newer)" if target.get("floor") else ""
    return f"CPython {target['python']} on {targets.platform_title(target['platform'])}{floor}"


def describe_targets(carried: dict) -> str:
    """"CPython 3.11, 3.12 on Linux x86-64; CPython 3.12 on macOS arm64"."""
    by_platform: dict[str, list[str]] = {}
    for target in carried.values():
        by_platform.setdefault(target["platform"], []).append(target["python"])
    return "; ".join(f"CPython {', '.join(sorted(versions, key=_version))} on {targets.platform_title(name)}"
                     for name, versions in by_platform.items())


def choose_target(manifest: dict, interpreter: targets.Interpreter | None = None) -> str:
    """The name of the archive's target whose wheels this interpreter loads (pip's rule: the most specific
    fit wins); `BundleError` naming what the archive carries when none does."""
    here = interpreter or targets.Interpreter.current()
    carried = manifest["targets"]
    found = targets.choose({name: [w["tags"] for w in t["wheels"]] for name, t in carried.items()}, here)
    if found:
        return found
    version = "{}.{}".format(*here.version)
    near = [t for t in carried.values() if (t["python"], t["platform"]) == (version, here.platform_name)]
    if near:  # the right Python and platform, but an older glibc or macOS than its wheels need
        raise BundleError(f"this archive's wheels for {describe_target(near[0])} do not load on "
                          f"{here.describe()}", hint="rebuild it on this machine with: python build.py --model MODEL")
    raise BundleError(f"this archive carries {describe_targets(carried)}; this is {here.describe()}",
                      hint="its numpy and numba wheels only load there; rebuild it with this one included: "
                           f"python build.py --model MODEL --python {version} --platform {here.platform_name}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


# --- --version and --verify ---------------------------------------------------------------------------------

def version_line(bundle: Bundle) -> str:
    """What the archive is and was built for (with several models, the first line names them all: the
    archive's name is the first one's by default), its GPU support (if it has any), and a line for each model."""
    m = bundle.manifest
    gpu = describe_gpu(m["targets"])
    aliases = [model.alias for model in bundle.models]
    several = f": {len(aliases)} models ({', '.join(aliases)})" if len(aliases) > 1 else ""
    lines = [f"llamapyz {m['llamapyz_version']} — {m['name']}{several}, built {m['built_at']} for "
             f"{describe_targets(m['targets'])}", *[gpu] * bool(gpu)]
    return "\n".join(lines + [describe_model(model, default=n == 0) for n, model in enumerate(bundle.models)])


def describe_model(model: BundledModel, default: bool = False) -> str:
    """"model smollm2 (the default): SmolLM2-135M-Instruct.Q4_1.gguf, 93.8 MiB; n_ctx=2048"."""
    settings = describe_settings(model.settings)
    return (f"model {model.alias}{' (the default)' * default}: {model.file}, {model.size / 2**20:.1f} MiB"
            + f"; {settings}" * bool(settings))


def describe_settings(settings: dict, width: int = 24) -> str:
    """"n_ctx=2048, chat_template=chatml", each value cut to `width` characters (a Jinja template is long)."""
    def short(text: str) -> str:
        return text if len(text) <= width and "\n" not in text else text.splitlines()[0][:width - 1] + "…"

    return ", ".join(f"{key}={short(str(value))}" for key, value in settings.items())


def describe_gpu(carried: dict) -> str | None:
    """"GPU offload (-ngl): cuda13, for NVIDIA driver 580 or newer, on Linux x86-64; none on macOS arm64"
    (`build.py --gpu`), or None when no target has any."""
    by_support: dict[str, list[str]] = {}
    for target in carried.values():
        gpu = target.get("gpu")  # archives built before --gpu have no such key
        support = f"{gpu['name']}, for NVIDIA driver {gpu['driver']} or newer," if gpu else "none"
        platform = targets.platform_title(target["platform"])
        if platform not in by_support.setdefault(support, []):
            by_support[support].append(platform)
    if list(by_support) == ["none"]:
        return None
    return "GPU offload (-ngl): " + "; ".join(f"{support} on {', '.join(platforms)}"
                                              for support, platforms in sorted(by_support.items()))


def read_indexes(zf: zipfile.ZipFile, manifest: dict) -> dict[str, list[list]]:
    """Each target's own files: [path under site-packages/, the archive entry holding its bytes, mode]."""
    return {name: json.loads(zf.read(f"{INDEXES}{name}.json"))["files"] for name in manifest["targets"]}


def part_sizes(bundle: Bundle) -> list[tuple[str, int]]:
    """What the archive's bytes are, compressed as stored: the weights, what every target shares, what
    several (not all) share, each target's own files, and the rest (start-up code, zip directory)."""
    with zipfile.ZipFile(bundle.path) as zf:
        stored = {i.filename: i.compress_size for i in zf.infolist()}
        indexes = read_indexes(zf, bundle.manifest)
    users = Counter(entry for files in indexes.values() for entry in {f[1] for f in files if f[1].startswith(BLOBS)})
    parts = [("weights", sum(models[0].size for models in bundle.stored().values())),
             ("runtime, every target", sum(n for name, n in stored.items() if name.startswith(COMMON)))]
    if len(indexes) > 1:  # (one target has everything under site-packages/)
        parts.append(("shared by some targets", sum(stored[entry] for entry, n in users.items() if n > 1)))
        for name, files in sorted(indexes.items()):
            parts.append((name, sum(stored[entry] for entry in {f[1] for f in files} if users[entry] == 1)))
    parts.append(("start-up, metadata, zip directory", bundle.path.stat().st_size - sum(n for _, n in parts)))
    return parts


def size_table(parts: list[tuple[str, int]]) -> str:
    width = max(len(name) for name, _ in parts)
    return "\n".join(f"  {name:<{width}}  {n / 2**20:8.1f} MiB" for name, n in parts)


def verify(bundle: Bundle, say=print) -> bool:
    """Re-hash each model's weights against the manifest, check every other entry's CRC and every blob's
    sha256 against its name, and that each target's files are all there; say what is wrong."""
    ok = all([_verify_weights(models, say) for models in bundle.stored().values()])  # a line for each
    with zipfile.ZipFile(bundle.path) as zf:
        others = zf.infolist()  # the weights are not among them: they precede the zip
        bad = [f"{i.filename} ({problem})" for i in others if (problem := _check_entry(zf, i))]
        try:
            indexes = read_indexes(zf, bundle.manifest)
        except (KeyError, ValueError, zipfile.BadZipFile) as exc:
            bad.append(f"a target's file list ({exc})")
            indexes = {}
        names = set(zf.namelist())
    for entry in bad[:10]:
        say(f"FAILED {entry}")
    if len(bad) > 10:
        say(f"FAILED … and {len(bad) - 10} more entries")
    if not bad:
        say(f"ok     {len(others)} other entries (runtime, dependencies, web UI): CRCs match")
    for name, files in sorted(indexes.items()):
        absent = sorted({entry for _, entry, _ in files if entry not in names})
        if absent:
            say(f"FAILED {name}: {len(absent)} of its files are missing ({absent[0]} …)")
        else:
            say(f"ok     {name}: {describe_target(bundle.manifest['targets'][name])}, {len(files)} own files")
        ok = ok and not absent
    ok = ok and not bad
    say("OK" if ok else "the archive is damaged: copy it again from its source, or rebuild it")
    return ok


def _verify_weights(models: list[BundledModel], say) -> bool:
    """Hash one GGUF entry in place; one line naming it and the models it serves (`models`: all the same file)."""
    model = models[0]
    named = f"{model.file} ({', '.join(m.alias for m in models)})"
    digest = hashlib.sha256()
    with open(model.archive, "rb") as f:
        f.seek(model.offset)
        remaining = model.size
        while remaining and (block := f.read(min(HASH_CHUNK, remaining))):
            digest.update(block)
            remaining -= len(block)
    if remaining:
        say(f"FAILED {named}: the archive ends {remaining} bytes before the weights do")
    elif digest.hexdigest() != model.sha256:
        say(f"FAILED {named}: sha256 {digest.hexdigest()}, the manifest says {model.sha256}")
    else:
        say(f"ok     {named}: {model.size:,} bytes, sha256 {model.sha256}")
        return True
    return False


def _check_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """None if the entry inflates with its CRC (and a blob hashes to its name), else what is wrong."""
    digest = hashlib.sha256() if info.filename.startswith(BLOBS) else None
    try:
        with zf.open(info) as member:
            while block := member.read(HASH_CHUNK):
                if digest:
                    digest.update(block)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:  # a CRC or inflate error
        return str(exc)
    if digest and digest.hexdigest() != info.filename[len(BLOBS):]:
        return f"sha256 {digest.hexdigest()}"
    return None


# --- start-up --------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where the Python side is extracted, by each system's convention: %LOCALAPPDATA%\\llamapyz\\pyz on
    Windows, ~/Library/Caches/llamapyz/pyz on macOS, else $XDG_CACHE_HOME/llamapyz/pyz or ~/.cache/llamapyz/pyz."""
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(base) / "llamapyz" / "pyz"


def unpack(bundle: Bundle, target: str, say=print) -> Path:
    """Extract what every target shares plus `target`'s own files into ROOT/TARGET/ARCHIVE_BUILDID/
    site-packages/ (ROOT: $SHIV_ROOT or `cache_root()`), once: under a file lock, through a temporary folder
    renamed into place, so two first runs at once share one extraction. That is where shiv's bootstrap
    looks (its SHIV_ROOT is pointed at ROOT/TARGET), so it extracts nothing itself."""
    from _bootstrap.filelock import FileLock  # shiv's, at the archive's top level: fcntl or msvcrt

    root = Path(os.environ.get("SHIV_ROOT") or cache_root()) / target
    os.environ["SHIV_ROOT"] = str(root)
    with zipfile.ZipFile(bundle.path) as zf:
        build_id = json.loads(zf.read("environment.json"))["build_id"]
        folder = root / f"{bundle.path.name}_{build_id}"
        if (folder / "site-packages").exists():
            return folder
        say(f"llamapyz: first run of this archive: unpacking its Python runtime for {target} into {folder} (once)")
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(root / f".{folder.name}_lock"):
            if (folder / "site-packages").exists():  # the other first run did it meanwhile
                return folder
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
            for info in zf.infolist():
                if info.filename.startswith(COMMON) and not info.is_dir():
                    _extract(zf, info, staging / info.filename, info.external_attr >> 16)
            for path, entry, mode in json.loads(zf.read(f"{INDEXES}{target}.json"))["files"]:
                _extract(zf, zf.getinfo(entry), staging / COMMON / path, mode)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
    return folder


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, HASH_CHUNK)
    if mode & 0o777:
        os.chmod(path, mode & 0o777)


def fail(exc: BundleError) -> None:
    message = str(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[:MAX_ERROR_CHARS]}…({len(message) - MAX_ERROR_CHARS} more characters)"
    print(f"error: {message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    archive = sys.argv[0]
    try:
        bundle = open_bundle(archive)
        target = choose_target(bundle.manifest)
    except BundleError as exc:
        fail(exc)
    user = sys.argv[1:]
    try:
        if "--version" in user:
            print(version_line(bundle))
            print(size_table(part_sizes(bundle)))
            sys.exit(0)
        if "--verify" in user:
            sys.exit(0 if verify(bundle) else 1)
    except BrokenPipeError:  # the reader went away (`--version | head -1`): nothing more to say, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        sys.exit(0)
    sys.argv = [archive, *merge_args(bundle.args, user)]
    try:
        unpack(bundle, target, say=lambda line: print(line, file=sys.stderr))
    except OSError as exc:
        fail(BundleError(f"cannot unpack the runtime: {exc}", hint="check the free space and permissions of the "
                         "cache folder, or point SHIV_ROOT at another folder"))
    import _bootstrap  # shiv's, at the archive's top level

    _bootstrap.bootstrap()


if __name__ == "__main__":
    main()
