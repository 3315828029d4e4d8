"""A `.pyz` archive's view of itself, and its start-up: this file is also the archive's `__main__.py`.

The archive (written by `bundler/build.py`):

    #!/usr/bin/env python3
    <model>.gguf        stored, its data at a multiple of 64 KiB: memory-mapped in place, never extracted
    .args               baked-in default arguments, one per line; a `...` line marks where the user's go
    __main__.py         this file
    manifest.json       model file, size and sha256; versions; Python and platform tags; build time
    environment.json    shiv's build settings (entry point, build id)
    _bootstrap/         shiv's bootstrap: extracts site-packages/ into a per-user cache keyed by the build id,
                        under a file lock, then calls the entry point (`runtime.cli:archive_main`)
    site-packages/      runtime/, webui/ and every dependency

Start-up (`main`) runs before anything is extracted, so this module uses the standard library only. It
refuses a Python or platform the bundled wheels were not built for, answers `--version` and `--verify`
on its own (no extraction, no numpy), merges the baked-in arguments with the user's, and hands over to
shiv's bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
ARGS = ".args"
USER_ARGS = "..."  # the line in .args where the user's own arguments are inserted
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header: signature ... name length, extra length
HASH_CHUNK = 8 << 20


class BundleError(Exception):
    """The archive is damaged or does not fit this machine; the message says which and what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class Bundle:
    path: Path
    manifest: dict
    args: list[str]  # baked-in arguments, `...` included
    model_offset: int  # file offset of the GGUF's first byte inside the archive

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["file"]

    @property
    def model_size(self) -> int:
        return self.manifest["model"]["size"]

    @property
    def model_source(self) -> tuple[Path, int, int]:
        """What `load_gguf` takes to map the weights straight from the archive."""
        return self.path, self.model_offset, self.model_size


def open_bundle(path: str | Path) -> Bundle:
    """Read the manifest and baked-in arguments, and find where the weights start inside the archive."""
    path = Path(path).resolve()
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            names = set(zf.namelist())
            args = zf.read(ARGS).decode().splitlines() if ARGS in names else []
            entry = zf.getinfo(manifest["model"]["file"])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not a complete llamapyz archive ({exc})",
                          hint="the file may be truncated or damaged; copy it again") from None
    if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != manifest["model"]["size"]:
        raise BundleError(f"{path}: the model entry is compressed or has the wrong size",
                          hint="rebuild the archive with build.py")
    with open(path, "rb") as f:
        f.seek(entry.header_offset)  # absolute: zipfile accounts for the shebang before the zip
        header = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
    if header[0] != b"PK\x03\x04":
        raise BundleError(f"{path}: no zip header at offset {entry.header_offset}", hint="copy the file again")
    name_len, extra_len = header[-2:]
    return Bundle(path, manifest, [a for a in args if a.strip()],
                  entry.header_offset + LOCAL_HEADER.size + name_len + extra_len)


def merge_args(baked: list[str], user: list[str]) -> list[str]:
    """llamafile's rule: the user's arguments replace the `...` line, or follow the baked ones if it is
    missing. Options given later win, so the user's command line overrides the defaults before `...`."""
    if USER_ARGS not in baked:
        return [*baked, *user]
    at = baked.index(USER_ARGS)
    return [*baked[:at], *user, *(a for a in baked[at + 1:] if a != USER_ARGS)]


# --- does the archive fit this machine? -------------------------------------------------------------------

SYSTEM_NAMES = {"Darwin": "macOS", "Linux": "Linux", "Windows": "Windows"}
MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def this_platform() -> dict:
    """The facts about this interpreter that decide whether the bundled wheels can run on it."""
    libc, libc_version = platform.libc_ver()
    machine = platform.machine().lower()
    return {"implementation": sys.implementation.name, "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "system": platform.system(), "machine": MACHINE_ALIASES.get(machine, machine),
            "glibc": libc_version if libc == "glibc" else None}


def describe(p: dict) -> str:
    impl = {"cpython": "CPython", "pypy": "PyPy"}.get(p["implementation"], p["implementation"])
    machine = p["machine"].replace("x86_64", "x86-64")
    return f"{impl} {p['python']} on {SYSTEM_NAMES.get(p['system'], p['system'])} {machine}"


def check_platform(built: dict, running: dict | None = None) -> None:
    """Raise `BundleError` when the wheels built for `built` cannot load on `running` (default: here)."""
    running = running or this_platform()
    if not all(built[k] == running[k] for k in ("implementation", "python", "system", "machine")):
        raise BundleError(f"this archive was built for {describe(built)}; this is {describe(running)}",
                          hint="its numpy and numba wheels only load there; rebuild it for this machine with: "
                               "python build.py --model MODEL (a checkout of llamapyz and pip are needed once)")
    needed = built.get("glibc")
    if needed and running["system"] == "Linux":
        have = running.get("glibc")
        if have is None or _version(have) < _version(needed):
            raise BundleError(f"this archive's wheels need glibc {needed} or newer; this machine has "
                              f"{'glibc ' + have if have else 'no glibc'}",
                              hint="rebuild it on this machine with: python build.py --model MODEL")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


# --- --version and --verify ---------------------------------------------------------------------------------

def version_line(bundle: Bundle) -> str:
    m = bundle.manifest
    return (f"llamapyz {m['llamapyz_version']} — {m['name']} ({bundle.model_name}), "
            f"built {m['built_at']} for {describe(m['platform'])}")


def verify(bundle: Bundle, say=print) -> bool:
    """Re-hash the weights against the manifest and check every other entry's CRC; say what is wrong."""
    expected = bundle.manifest["model"]["sha256"]
    digest = hashlib.sha256()
    with open(bundle.path, "rb") as f:
        f.seek(bundle.model_offset)
        remaining = bundle.model_size
        while remaining and (block := f.read(min(HASH_CHUNK, remaining))):
            digest.update(block)
            remaining -= len(block)
    ok = True
    if remaining:
        say(f"FAILED {bundle.model_name}: the archive ends {remaining} bytes before the weights do")
        ok = False
    elif digest.hexdigest() != expected:
        say(f"FAILED {bundle.model_name}: sha256 {digest.hexdigest()}, the manifest says {expected}")
        ok = False
    else:
        say(f"ok     {bundle.model_name}: {bundle.model_size:,} bytes, sha256 {expected}")
    with zipfile.ZipFile(bundle.path) as zf:
        others = [i for i in zf.infolist() if i.filename != bundle.model_name]
        bad = []
        for info in others:
            try:
                with zf.open(info) as member:
                    while member.read(HASH_CHUNK):
                        pass
            except (zipfile.BadZipFile, OSError, ValueError) as exc:  # a CRC or inflate error
                bad.append(f"{info.filename} ({exc})")
    for entry in bad[:10]:
        say(f"FAILED {entry}")
    if len(bad) > 10:
        say(f"FAILED … and {len(bad) - 10} more entries")
    if not bad:
        say(f"ok     {len(others)} other entries (runtime, dependencies, web UI): CRCs match")
    ok = ok and not bad
    say("OK" if ok else "the archive is damaged: copy it again from its source, or rebuild it")
    return ok


# --- start-up --------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where shiv extracts the Python side: $XDG_CACHE_HOME/llamapyz/pyz, else ~/.cache/llamapyz/pyz."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamapyz" / "pyz"


def main() -> None:
    archive = sys.argv[0]
    try:
        bundle = open_bundle(archive)
        check_platform(bundle.manifest["platform"])
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(1)
    user = sys.argv[1:]
    if "--version" in user:
        print(version_line(bundle))
        sys.exit(0)
    if "--verify" in user:
        sys.exit(0 if verify(bundle) else 1)
    sys.argv = [archive, *merge_args(bundle.args, user)]

    os.environ.setdefault("SHIV_ROOT", str(cache_root()))
    import _bootstrap  # shiv's, at the archive's top level
    from _bootstrap.environment import Environment

    with zipfile.ZipFile(bundle.path) as zf:
        env = Environment.from_json(zf.read("environment.json").decode())
        target = _bootstrap.cache_path(zf, env.root, env.build_id)  # where shiv will look
    if not (target / "site-packages").exists():
        print(f"llamapyz: first run of this archive: unpacking its Python runtime into {target} (once)",
              file=sys.stderr)
    _bootstrap.bootstrap()


if __name__ == "__main__":
    main()
