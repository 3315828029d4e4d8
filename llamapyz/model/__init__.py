"""The inference engine: config, weights, forward pass, KV cache and the public `Model`."""

from __future__ import annotations

from .model import Model

__all__ = ["Model"]
