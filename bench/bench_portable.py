"""A multi-target archive of a model, as `build.py --portable` makes it: its size per part and what storing
each distinct file once saves, then its start-up under each interpreter this machine has (`bench_startup`).

    python bench/bench_portable.py [--model smollm2] [--python 3.11,3.12,3.13 --platform linux-x86_64,...]
                                   [--runs 2] [-o portable.pyz]

Prints the build's own summary (targets, dedupe before compression, sizes), the compressed size each target
would have on its own against what the archive stores, and `bench_startup.py`'s figures under this Python and
under Debian's CPython 3.13 (tests/portable_python.py) when the archive carries a target for it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llamapyz.archive.launcher import COMMON, INDEXES, open_bundle  # noqa: E402
from tests.portable_python import portable_python  # noqa: E402


def stored_vs_alone(archive: Path) -> tuple[int, dict[str, int]]:
    """Compressed bytes of the Python side as stored, and what each target's own copy would take."""
    with zipfile.ZipFile(archive) as zf:
        sizes = {i.filename: i.compress_size for i in zf.infolist()}
        manifest = json.loads(zf.read("manifest.json"))
        indexes = {t: json.loads(zf.read(f"{INDEXES}{t}.json"))["files"] for t in manifest["targets"]}
    common = sum(n for name, n in sizes.items() if name.startswith(COMMON))
    stored = common + sum(n for name, n in sizes.items() if name.startswith("blobs/"))
    alone = {t: common + sum(sizes[entry] for _, entry, _ in files) for t, files in indexes.items()}
    return stored, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--python", dest="pythons", default=None)
    parser.add_argument("--platform", dest="platforms", default=None)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("portable.pyz"))
    args = parser.parse_args()
    targets = (["--python", args.pythons] if args.pythons else []) + (["--platform", args.platforms]
                                                                      if args.platforms else [])
    command = [sys.executable, str(REPO / "build.py"), "--model", args.model, "-o", str(args.output),
               *(targets or ["--portable"])]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)

    stored, alone = stored_vs_alone(args.output)
    print(f"\nPython side, compressed: {stored / 2**20:.1f} MiB stored for {len(alone)} targets; "
          f"{sum(alone.values()) / 2**20:.1f} MiB if each carried its own copy "
          f"(saved {(1 - stored / sum(alone.values())) * 100:.0f}%)")
    for target, n in sorted(alone.items()):
        print(f"  {target:<24} {n / 2**20:7.1f} MiB on its own")

    carried = open_bundle(args.output).manifest["targets"]
    here = "{}.{}".format(*sys.version_info[:2])
    for version, python in [(here, None), ("3.13", "debian")]:
        if not any(t["python"] == version and t["platform"].startswith("linux-x86_64") for t in carried.values()):
            continue
        interpreter = [] if python is None else ["--python", str(portable_python(version))]
        print(f"\nstart-up under CPython {version}{' (Debian)' if python else ''}:", flush=True)
        subprocess.run([sys.executable, str(REPO / "bench" / "bench_startup.py"), str(args.output),
                        "--runs", str(args.runs), *interpreter], check=True)


if __name__ == "__main__":
    main()
