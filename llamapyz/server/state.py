"""What the server's handlers share: the models, settings, the web UI's files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.model import Model
from .engine import Engine
from .pool import ModelPool
from .webui import MEDIA_TYPES, page_file


@dataclass
class ServerState:
    """What the handlers share: the models (`pool`; each loaded when first used) and the server's settings."""

    pool: ModelPool
    api_key: str | None = None
    max_body_bytes: int = 16 << 20  # a request body above it is a 413
    body_timeout_s: float | None = 30.0  # a body not all arrived by then (after the headers) is a 408
    allowed_hosts: tuple[str, ...] | None = None  # Host names answered (security.allowed_hosts); None: any
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API from a browser ("*": any)
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # the server's --temp etc.
    webui: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # path -> (content, media type)
    started: float = field(default_factory=time.time)

    # the default (first) model's, for a server of one model
    @property
    def model_alias(self) -> str:
        return self.pool.default.alias

    @property
    def engine(self) -> Engine | None:
        return self.pool.default.engine

    @property
    def model(self) -> Model:
        return self.pool.default.model

    @property
    def load_error(self) -> str | None:
        return self.pool.default.load_error


def load_webui(directory: Path | None) -> dict[str, tuple[bytes, str]]:
    """The static UI's files, read once into memory (works the same from a directory or an archive): the page's
    files (llamapyz/server/webui.py) of the kinds it serves, so not its licenses nor its doc/ folder's screenshots."""
    files: dict[str, tuple[bytes, str]] = {}
    if directory is None or not directory.is_dir():
        return files
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and page_file(relative) and relative.suffix in MEDIA_TYPES:
            files[relative.as_posix()] = (path.read_bytes(), MEDIA_TYPES[relative.suffix])
    return files
