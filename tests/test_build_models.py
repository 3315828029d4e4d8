"""`python build.py` with several models (llamapyz/bundler/selection.py, and llamapyz/archive/launcher.py's view of
them): both real models in one archive, built once, from a `--config` (two aliases of SmolLM2, one file) and a
`--model` (Gemma 3), checked from outside."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest

from llamapyz.archive.launcher import open_bundle
from llamapyz.bundler.registry import REGISTRY
from llamapyz.machine.cpu import choose, detect
from tests.live_server import ServerProcess, build, in_env
from tests.live_server import run_archive as run

REPO = Path(__file__).resolve().parents[1]
SMOLLM2, GEMMA = REGISTRY["smollm2"].filename, REGISTRY["gemma3-270m"].filename
KEY = "sesame"

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


@pytest.fixture(scope="module")
def built(tmp_path_factory, smollm2_path, gemma3_path) -> tuple[Path, str]:
    """The archive (kernels precompiled for this CPU's tier only, to save build time), and the build's stderr."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "server.json").write_text(json.dumps({
        "host": "127.0.0.1", "port": 8123, "api_key": KEY,
        "models": [{"model": str(smollm2_path), "model_alias": "smol", "n_ctx": 512, "n_batch": 64},
                   {"model": str(smollm2_path), "model_alias": "smol-plain", "chat_format": "plain"}]}))
    out = folder / "both.pyz"
    result = build("--config", str(folder / "server.json"), "--model", "gemma3-270m", "-o", str(out),
                   "--args", "-np 2", "--cpu-tiers", choose(detect()).name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    return out, result.stderr


def test_each_model_file_is_stored_once_and_aligned_and_the_manifest_lists_every_alias_in_order(built):
    archive, _ = built
    bundle = open_bundle(archive)
    assert [(m.alias, m.file, m.settings) for m in bundle.models] == [
        ("smol", SMOLLM2, {"n_ctx": 512, "batch_size": 64}),
        ("smol-plain", SMOLLM2, {"chat_template": "plain"}),
        ("gemma3-270m", GEMMA, {}),  # --model's come after the config's, aliased by their registry name
    ]
    assert bundle.manifest["name"] == "smol"  # the archive is named after its default model unless --name says
    assert [m["sha256"] for m in bundle.manifest["models"]] == [REGISTRY["smollm2"].sha256] * 2 + \
        [REGISTRY["gemma3-270m"].sha256]
    with zipfile.ZipFile(archive) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".gguf")]  # the weights precede the zip
        zip_start = min(i.header_offset for i in zf.infolist())
    smol, smol_plain, gemma = bundle.models
    assert smol.source == smol_plain.source and smol.offset % 65536 == 0 and gemma.offset % 65536 == 0
    assert smol.offset < gemma.offset < gemma.offset + gemma.size <= zip_start  # in the order of first use
    with open(archive, "rb") as raw:
        for model, name in ((smol, "smollm2"), (gemma, "gemma3-270m")):
            raw.seek(model.offset)
            assert raw.read(4) == b"GGUF" and model.size == REGISTRY[name].size


def test_the_config_bakes_its_server_options_in_before_the_args_and_warns_about_the_key(built):
    archive, stderr = built
    assert open_bundle(archive).args == ["--host", "127.0.0.1", "--port", "8123", "--api-key", KEY, "-np", "2", "..."]
    assert "warning: the baked-in API key can be read by anyone who has the archive" in stderr
    assert f"model gemma3-270m: {GEMMA}, 241.4 MiB" in stderr  # the build's summary lists the models


def test_version_lists_every_model(built, bare):
    archive, _ = built
    result = run(archive, bare, "--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("llamapyz ") and " — smol: 3 models (smol, smol-plain, gemma3-270m), built " in lines[0]
    assert lines[1:4] == [f"model smol (the default): {SMOLLM2}, 93.8 MiB; n_ctx=512, batch_size=64",
                          f"model smol-plain: {SMOLLM2}, 93.8 MiB; chat_template=plain",
                          f"model gemma3-270m: {GEMMA}, 241.4 MiB"]


def test_verify_hashes_both_models_and_names_a_damaged_second_one(built, bare, tmp_path):
    archive, _ = built
    result = run(archive, bare, "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ok     {SMOLLM2} (smol, smol-plain): 98,362,432 bytes, sha256 ")
    assert lines[1].startswith(f"ok     {GEMMA} (gemma3-270m): 253,113,024 bytes, sha256 ") and lines[-1] == "OK"

    damaged = tmp_path / "damaged.pyz"
    shutil.copy2(archive, damaged)
    gemma = open_bundle(damaged).models[2]
    with open(damaged, "r+b") as f:
        f.seek(gemma.offset + gemma.size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x80]))
    result = run(damaged, bare, "--verify")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ok     {SMOLLM2} (smol, smol-plain): ")
    assert lines[1].startswith(f"FAILED {GEMMA} (gemma3-270m): sha256 ") and "damaged" in lines[-1]


def test_two_models_of_one_alias_are_a_build_error_before_any_work(tmp_path):
    result = build("--model", "smollm2", "--model", "gemma3-270m", "--model", "smollm2", "-o", str(tmp_path / "x.pyz"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: two models are both called 'smollm2': --model smollm2 (" in result.stderr
    assert "hint: each needs an alias of its own" in result.stderr
    assert "[2/4]" not in result.stderr and not (tmp_path / "x.pyz").exists()


# Needs the server's side of issue 18 (several models behind one API: llamapyz/server/, llamapyz/cli/main.py's
# archive_command building one ModelSpec per BundledModel).
def test_it_serves_every_alias_from_the_weights_mapped_in_place(built, bare):
    archive, _ = built
    bundle = open_bundle(archive)
    headers = {"Authorization": f"Bearer {KEY}"}  # baked in by the config
    env = {**bare, "PYTHONUNBUFFERED": "1"}
    with ServerProcess(None, "-t", "2", launcher=in_env(env, str(archive))) as server:
        listed = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=30)
        assert listed.status_code == 200, listed.text
        assert sorted(m["id"] for m in listed.json()["data"]) == ["gemma3-270m", "smol", "smol-plain"]
        for alias in ("smol", "smol-plain", "gemma3-270m"):
            reply = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=300, json={
                "model": alias, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
            assert reply.status_code == 200, (alias, reply.text)
            assert reply.json()["model"] == alias
        maps = Path(f"/proc/{server.process.pid}/maps").read_text().splitlines()
        mapped = {int(line.split()[2], 16) for line in maps if line.endswith(str(archive))}
        assert {m.offset for m in bundle.models} <= mapped, "\n".join(maps)
