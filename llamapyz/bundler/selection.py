"""Which models an archive carries: `build.py --model NAME|FILE …` and a `--config FILE`'s models, each with
its alias (the model name requests ask for) and settings, in order (the first is the default); each file
hashed once, and each distinct file stored once, however many aliases serve it.

A `--config` is a server config (llamapyz/server/config_file.py: llama-cpp-python's shape); its server-level
options (host, port, api_key) become baked-in arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamapyz.errors import LlamapyzError

from .registry import DEFAULT_MODEL, REGISTRY, resolve_model, sha256_file


@dataclass
class StoredWeights:
    """One GGUF entry of the archive (several models may share it)."""

    path: Path  # the file on this machine
    entry: str  # its name in the archive: the file's name
    size: int
    sha256: str


@dataclass
class SelectedModel:
    path: Path
    alias: str
    settings: dict[str, Any]  # llamapyz/server/config_file.py's ModelSpec.settings(): only what is set
    named_by: str  # where it was named, for messages: "--model smollm2", "x.json: models[1]"
    weights: StoredWeights | None = field(default=None, repr=False)  # set by `store_once`

    def manifest_entry(self, offset: int, architecture: str) -> dict[str, Any]:
        """Its entry in the manifest's "models" (llamapyz/archive/launcher.py's BundledModel reads it)."""
        assert self.weights is not None
        return {"file": self.weights.entry, "size": self.weights.size, "sha256": self.weights.sha256,
                "alias": self.alias, "settings": self.settings, "architecture": architecture, "offset": offset}


def select(models: Sequence[str], config: Path | None = None, name: str | None = None,
           say: Callable[[str], None] = print) -> tuple[list[SelectedModel], list[str]]:
    """The models to bundle, and the server options `config` bakes in (as command-line arguments): the config's
    models in order, then each `--model` (the default model when neither names one). A lone `--model`'s alias
    is `name` (--name) if given, else its registry name or the file's stem. Aliases must differ."""
    selected, server_args = [], []
    if config is not None:
        from llamapyz.server.config_file import read_config

        read = read_config(config)
        for warning in read.warnings:
            say(f"  warning: {warning}")
        for i, spec in enumerate(read.models):
            named_by = f"{config}: models[{i}]"
            path = Path(spec.source) if isinstance(spec.source, (str, Path)) else None
            if path is None or not path.is_file():
                raise LlamapyzError(f"{named_by}: no such GGUF file: {spec.source}",
                                    hint="model paths in a config are relative to the config file's folder")
            selected.append(SelectedModel(path, spec.alias, spec.settings(), named_by))
        server_args = options_as_args(read.server)
    if not models and not selected:
        models = [DEFAULT_MODEL]
    lone = len(models) == 1 and not selected
    for model in models:
        path = resolve_model(model, progress=say)
        alias = model if model in REGISTRY else path.stem
        selected.append(SelectedModel(path, name if name and lone else alias, {}, f"--model {model}"))
    check_aliases(selected)
    return selected, server_args


def options_as_args(server: dict[str, Any]) -> list[str]:
    """A config's server options (ServeOptions names: host, port, api_key) as the archive's options."""
    args = []
    for key, value in server.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def check_aliases(selected: list[SelectedModel]) -> None:
    """Each alias names one model: a clash is an error naming both."""
    seen: dict[str, SelectedModel] = {}
    for model in selected:
        if model.alias in seen:
            first = seen[model.alias]
            raise LlamapyzError(f"two models are both called {model.alias!r}: {first.named_by} ({first.path}) and "
                                f"{model.named_by} ({model.path})",
                                hint="each needs an alias of its own: list them in a --config file with "
                                     "\"model_alias\", or rename a file")
        seen[model.alias] = model


def store_once(selected: list[SelectedModel], say: Callable[[str], None] = print) -> list[StoredWeights]:
    """Hash each file (once per path) and give each model its archive entry: one per distinct content, named
    after the first file with it; the entries in order of first use. Two different files of one name are an
    error (each is stored under its name)."""
    digests: dict[Path, str] = {}
    by_digest: dict[str, StoredWeights] = {}
    by_entry: dict[str, SelectedModel] = {}
    for model in selected:
        path = model.path.resolve()
        if path not in digests:
            say(f"  sha256 of {model.path.name} ({path.stat().st_size / 2**20:.1f} MiB) …")
            digests[path] = sha256_file(path)
        digest = digests[path]
        if digest not in by_digest:
            entry = model.path.name
            if entry in by_entry:
                other = by_entry[entry]
                raise LlamapyzError(f"two different files are both named {entry}: {other.path} ({other.named_by}) "
                                    f"and {model.path} ({model.named_by})",
                                    hint="an archive stores each model under its file name: rename one of them")
            by_digest[digest] = StoredWeights(model.path, entry, path.stat().st_size, digest)
            by_entry[entry] = model
        model.weights = by_digest[digest]
    return list(by_digest.values())
