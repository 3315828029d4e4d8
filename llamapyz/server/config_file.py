"""Server config files (`llamapyz serve --config models.json`): llama-cpp-python's server config shape, as it is,
so that an existing config works unchanged, in JSON or (Python 3.11+) TOML:

    {"host": "0.0.0.0", "port": 8080, "api_key": "…",
     "models": [{"model": "a.gguf", "model_alias": "gpt-4", "chat_format": "chatml", "n_ctx": 2048,
                 "n_gpu_layers": -1, "n_threads": 12, "n_batch": 512}, …]}

Each model becomes a `ModelSpec`. Keys llamapyz has no use for are warned about, not fatal; keys whose meaning
llamapyz always has (`use_mmap`, `offload_kqv`, `verbose`) pass silently. Model paths are relative to the
config file's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..chat.template import BUILTIN
from ..errors import LlamapyzError
from ..gguf.reader import GGUFFile, Source, load_gguf


class ConfigError(LlamapyzError):
    """A config file llamapyz cannot use: the message names the file and the key."""


@dataclass
class ModelSpec:
    """One model to serve: where it is, the name requests use for it, and its own settings (None: the
    server's, from the command line or its defaults)."""

    source: Source  # a path, or (archive path, offset, size)
    alias: str
    chat_template: str | None = None  # a chat.BUILTIN name or Jinja2 source (--chat-template)
    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    main_gpu: int | None = None
    batch_size: int | None = None

    def settings(self) -> dict[str, Any]:
        """The settings that are set (JSON-able: what an archive's manifest keeps beside the file)."""
        return {f.name: getattr(self, f.name) for f in fields(self)[2:] if getattr(self, f.name) is not None}

    @property
    def base_model(self) -> bool:
        """Whether this is a base (pretrained, not chat-tuned) model, as far as can be told: its file has no
        chat template (llama.cpp's converter writes the one an instruct model ships with; Gemma 3 270M's base
        GGUF has none) and none was given for it. Such a model continues text; a chat gets a built-in
        template's markup it was never trained on (/v1/models says so, and the web UI's header)."""
        return self.chat_template is None and not has_chat_template(self.source)


_CHAT_TEMPLATES: dict[Source, bool] = {}  # has_chat_template's answers, by file


def has_chat_template(source: Source, gguf: GGUFFile | None = None) -> bool:
    """Whether the GGUF at `source` carries `tokenizer.chat_template`, read once per process (start-up passes
    the file it has open to check it: `gguf`). A file that cannot be read: True, claiming nothing."""
    if source not in _CHAT_TEMPLATES:
        try:
            opened = gguf if gguf is not None else load_gguf(source)
        except (LlamapyzError, OSError):
            return True
        template = opened.metadata.get("tokenizer.chat_template")
        if gguf is None:
            opened.close()
        _CHAT_TEMPLATES[source] = isinstance(template, str) and bool(template.strip())
    return _CHAT_TEMPLATES[source]


@dataclass
class ServerConfig:
    server: dict[str, Any]  # server options by their ServeOptions/CLI names: host, port, api_key
    models: list[ModelSpec]
    warnings: list[str] = field(default_factory=list)


# llama-cpp-python's chat_format names → ours (BUILTIN); None leaves the model's own template
CHAT_FORMATS = {**{name: name for name in BUILTIN}, "llama-3": "llama3"}
SERVER_KEYS = {"host": str, "port": int, "api_key": str}
MODEL_KEYS = {  # config key -> (ModelSpec field, type)
    "n_ctx": ("n_ctx", int), "n_threads": ("n_threads", int), "n_gpu_layers": ("n_gpu_layers", int),
    "main_gpu": ("main_gpu", int), "n_batch": ("batch_size", int),
}
ALWAYS = {"use_mmap", "offload_kqv", "verbose"}  # what llamapyz always does (mmap, KV beside offloaded layers)


def read_config(path: str | Path) -> ServerConfig:
    """The config file at `path`, checked: a ConfigError names what is wrong; unknown keys are warnings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    data = parse(text, path)
    return config_from(data, str(path), path.resolve().parent)


def parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"{path}: TOML configs need Python 3.11 or later", hint="write it as JSON") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def config_from(data: Any, where: str, base: Path | None = None) -> ServerConfig:
    """A parsed config (`where` names it in messages; relative model paths are under `base`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the config must be an object with a \"models\" list")
    warnings: list[str] = []
    server = {}
    for key, value in data.items():
        if key == "models":
            continue
        if key in SERVER_KEYS:
            server[key] = checked(value, SERVER_KEYS[key], f"{where}: \"{key}\"")
        else:
            warnings.append(f"{where}: \"{key}\" is not a llamapyz setting; ignored")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: \"models\" must be a list of at least one model")
    models = [model_spec(entry, f"{where}: models[{i}]", base, warnings) for i, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, spec in enumerate(models):
        if spec.alias in seen:
            raise ConfigError(f"{where}: models[{seen[spec.alias]}] and models[{i}] are both called \"{spec.alias}\"",
                              hint="give each a model_alias of its own")
        seen[spec.alias] = i
    return ServerConfig(server, models, warnings)


def model_spec(entry: Any, where: str, base: Path | None, warnings: list[str]) -> ModelSpec:
    """One entry of "models"."""
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not entry["model"]:
        raise ConfigError(f"{where}: each model needs \"model\": the path of its GGUF file")
    source = Path(entry["model"]).expanduser()
    if base is not None and not source.is_absolute():
        source = base / source
    alias = entry.get("model_alias")
    if alias is not None and (not isinstance(alias, str) or not alias.strip()):
        raise ConfigError(f"{where}: \"model_alias\" must be a non-empty string")
    spec = ModelSpec(source=str(source), alias=alias or Path(entry["model"]).stem)
    chat_format = entry.get("chat_format")
    if chat_format is not None:
        if chat_format not in CHAT_FORMATS:
            known = ", ".join(sorted(CHAT_FORMATS))
            raise ConfigError(f"{where}: unknown chat_format \"{chat_format}\"",
                              hint=f"use one of {known}, or leave it out for the model's own template")
        spec.chat_template = CHAT_FORMATS[chat_format]
    for key, value in entry.items():
        if key in MODEL_KEYS:
            name, kind = MODEL_KEYS[key]
            setattr(spec, name, checked(value, kind, f"{where}: \"{key}\""))
        elif key not in ("model", "model_alias", "chat_format") and key not in ALWAYS:
            warnings.append(f"{where}: \"{key}\" is not a llamapyz setting; ignored")
    return spec


def checked(value: Any, kind: type, where: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be a whole number, not {json.dumps(value)}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {json.dumps(value)}")
    return value
