"""llamapyz/bundler/selection.py: which models an archive carries (`--model`, `--config`), their aliases and settings,
and each distinct file stored once; on small synthetic files, no build (the real one is test_build_models.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llamapyz.bundler.builder import bake_args
from llamapyz.bundler.selection import select, store_once
from llamapyz.errors import LlamapyzError
from tests.synth import write_model


@pytest.fixture
def ggufs(tmp_path: Path) -> dict[str, Path]:
    """Two different tiny models, a byte-for-byte copy of the first under another name, and a different model
    under the first one's name in another folder."""
    paths = {"a": tmp_path / "a.gguf", "b": tmp_path / "b.gguf", "copy": tmp_path / "copy-of-a.gguf",
             "other-a": tmp_path / "other" / "a.gguf"}
    paths["other-a"].parent.mkdir()
    write_model(paths["a"], seed=0)
    write_model(paths["b"], seed=1)
    shutil.copy(paths["a"], paths["copy"])
    write_model(paths["other-a"], seed=2)
    return paths


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def test_each_model_is_aliased_by_its_files_stem_in_order_and_a_lone_one_takes_the_name(ggufs):
    selected, server_args = select([str(ggufs["a"]), str(ggufs["b"])], say=lambda _: None)
    assert [(m.alias, m.path, m.settings) for m in selected] == [("a", ggufs["a"], {}), ("b", ggufs["b"], {})]
    assert server_args == []
    (lone,), _ = select([str(ggufs["a"])], name="assistant")
    assert lone.alias == "assistant"
    both, _ = select([str(ggufs["a"]), str(ggufs["b"])], name="both")  # --name then names the archive only
    assert [m.alias for m in both] == ["a", "b"]


def test_two_models_of_one_alias_are_an_error_naming_both(ggufs):
    with pytest.raises(LlamapyzError) as error:
        select([str(ggufs["a"]), str(ggufs["other-a"])])
    assert str(error.value) == (f"two models are both called 'a': --model {ggufs['a']} ({ggufs['a']}) and "
                                f"--model {ggufs['other-a']} ({ggufs['other-a']})")
    assert "model_alias" in error.value.hint


def test_a_config_gives_its_models_first_with_their_settings_and_its_server_options_as_arguments(ggufs, tmp_path):
    config = write_config(tmp_path / "server.json", {
        "host": "0.0.0.0", "port": 8000, "api_key": "sesame", "n_slots": 9,  # the last: not a llamapyz key
        "models": [{"model": "a.gguf", "model_alias": "chat", "chat_format": "chatml", "n_ctx": 1024, "n_batch": 64},
                   {"model": str(ggufs["a"]), "model_alias": "plain", "chat_format": "plain", "n_threads": 1}]})
    warnings: list[str] = []
    selected, server_args = select([str(ggufs["b"])], config, say=warnings.append)
    assert [(m.alias, m.path, m.settings) for m in selected] == [
        ("chat", ggufs["a"], {"chat_template": "chatml", "n_ctx": 1024, "batch_size": 64}),
        ("plain", ggufs["a"], {"chat_template": "plain", "n_threads": 1}),
        ("b", ggufs["b"], {}),  # --model comes after the config's
    ]
    assert selected[0].named_by == f"{config}: models[0]"
    assert server_args == ["--host", "0.0.0.0", "--port", "8000", "--api-key", "sesame"]
    assert len(warnings) == 1 and '"n_slots" is not a llamapyz setting' in warnings[0]
    said: list[str] = []
    assert bake_args(server_args, say=said.append) == [*server_args, "..."]  # the archive's own options
    assert len(said) == 1 and "can be read by anyone" in said[0]


def test_a_config_model_that_is_not_there_and_an_alias_clash_with_a_model_option_are_errors(ggufs, tmp_path):
    config = write_config(tmp_path / "server.json", {"models": [{"model": "missing.gguf"}]})
    with pytest.raises(LlamapyzError, match=r"server\.json: models\[0\]: no such GGUF file: .*missing\.gguf"):
        select([], config)
    config = write_config(tmp_path / "server.json", {"models": [{"model": "b.gguf", "model_alias": "a"}]})
    with pytest.raises(LlamapyzError, match=r"both called 'a': .*server\.json: models\[0\] .* and --model "):
        select([str(ggufs["a"])], config)


def test_a_file_is_stored_once_however_many_aliases_or_copies_serve_it(ggufs, tmp_path):
    config = write_config(tmp_path / "server.json", {"models": [{"model": "a.gguf", "model_alias": "one"},
                                                                {"model": "a.gguf", "model_alias": "two"}]})
    selected, _ = select([str(ggufs["copy"]), str(ggufs["b"])], config)
    hashed: list[str] = []
    stored = store_once(selected, say=hashed.append)
    assert [w.entry for w in stored] == ["a.gguf", "b.gguf"]  # the copy is a.gguf's bytes: stored as a.gguf
    assert [m.weights.entry for m in selected] == ["a.gguf", "a.gguf", "a.gguf", "b.gguf"]
    assert len(hashed) == 3  # a.gguf, its copy, b.gguf: each path hashed once
    assert stored[0].size == ggufs["a"].stat().st_size and len(stored[0].sha256) == 64
    entry = selected[1].manifest_entry(offset=65536, architecture="llama")
    assert entry == {"file": "a.gguf", "size": stored[0].size, "sha256": stored[0].sha256, "alias": "two",
                     "settings": {}, "architecture": "llama", "offset": 65536}


def test_two_different_files_of_one_name_are_an_error(ggufs, tmp_path):
    config = write_config(tmp_path / "server.json", {"models": [{"model": "a.gguf", "model_alias": "first"},
                                                                {"model": "other/a.gguf", "model_alias": "second"}]})
    selected, _ = select([], config)
    with pytest.raises(LlamapyzError, match="two different files are both named a.gguf") as error:
        store_once(selected, say=lambda _: None)
    assert "rename one" in error.value.hint
