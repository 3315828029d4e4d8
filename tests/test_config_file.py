"""Server config files (llamapyz/server/config_file.py): llama-cpp-python's example works verbatim, TOML the same, and
each bad config is one clear error; keys llamapyz has no use for are warnings."""

from __future__ import annotations

import json

import pytest

from llamapyz.server.config_file import ConfigError, ModelSpec, read_config

# llama-cpp-python's docs/server.md "Configuration and Multi-Model Support", its first two models, verbatim
LLAMA_CPP_PYTHON_EXAMPLE = """{
    "host": "0.0.0.0",
    "port": 8080,
    "models": [
        {
            "model": "models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf",
            "model_alias": "gpt-3.5-turbo",
            "chat_format": "chatml",
            "n_gpu_layers": -1,
            "offload_kqv": true,
            "n_threads": 12,
            "n_batch": 512,
            "n_ctx": 2048
        },
        {
            "model": "models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf",
            "model_alias": "gpt-4",
            "chat_format": "chatml",
            "n_gpu_layers": -1,
            "offload_kqv": true,
            "n_threads": 12,
            "n_batch": 512,
            "n_ctx": 2048
        }
    ]
}"""


def test_llama_cpp_pythons_example_works_verbatim(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(LLAMA_CPP_PYTHON_EXAMPLE)
    config = read_config(path)
    file = str(tmp_path / "models/OpenHermes-2.5-Mistral-7B-GGUF/openhermes-2.5-mistral-7b.Q4_K_M.gguf")
    expected = {"chat_template": "chatml", "n_ctx": 2048, "n_threads": 12, "n_gpu_layers": -1, "batch_size": 512}
    assert config.models == [ModelSpec(file, "gpt-3.5-turbo", **expected), ModelSpec(file, "gpt-4", **expected)]
    assert config.server == {"host": "0.0.0.0", "port": 8080}
    assert config.warnings == []  # offload_kqv is what llamapyz does anyway


def test_toml_and_defaults(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('port = 9000\napi_key = "k"\n[[models]]\nmodel = "/m/a.gguf"\n[[models]]\nmodel = "b.gguf"\n'
                    'chat_format = "llama-3"\nrope_freq_base = 10000.0\n')
    config = read_config(path)
    assert config.server == {"port": 9000, "api_key": "k"}
    assert config.models == [ModelSpec("/m/a.gguf", "a"),
                             ModelSpec(str(tmp_path / "b.gguf"), "b", chat_template="llama3")]
    assert config.warnings == [f'{path}: models[1]: "rope_freq_base" is not a llamapyz setting; ignored']
    assert config.models[1].settings() == {"chat_template": "llama3"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "config file not found"),
    ("{not json", "is not valid JSON"),
    ('{"models": []}', '"models" must be a list of at least one model'),
    ('{"models": [{"model_alias": "x"}]}', 'models[0]: each model needs "model"'),
    ('{"models": [{"model": "a.gguf", "model_alias": "x"}, {"model": "b.gguf", "model_alias": "x"}]}',
     'models[0] and models[1] are both called "x"'),
    ('{"models": [{"model": "a.gguf"}, {"model": "other/a.gguf"}]}', 'both called "a"'),
    ('{"models": [{"model": "a.gguf", "chat_format": "llava-1-5"}]}', 'unknown chat_format "llava-1-5"'),
    ('{"models": [{"model": "a.gguf", "n_ctx": "big"}]}', '"n_ctx" must be a whole number, not "big"'),
    ('{"port": true, "models": [{"model": "a.gguf"}]}', '"port" must be a whole number'),
    ('[1, 2]', 'must be an object with a "models" list'),
])
def test_bad_configs_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        read_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_keys_are_warnings_not_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ssl_keyfile": "k.pem", "models": [{"model": "a.gguf", "use_mlock": True}]}))
    config = read_config(path)
    assert [w.split(": ", 1)[1] for w in config.warnings] == [
        '"ssl_keyfile" is not a llamapyz setting; ignored', 'models[0]: "use_mlock" is not a llamapyz setting; ignored']
