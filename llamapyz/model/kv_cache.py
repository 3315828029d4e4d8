"""The key/value cache: every CPU layer's keys and values for n_ctx positions, allocated once (the layers
offloaded to a GPU keep theirs on the device: `KVCache.device`)."""

from __future__ import annotations

import numpy as np

KV_TYPES = {"f16": np.float16, "f32": np.float32}


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, kv_dim: int, kv_type: str = "f16") -> None:
        if kv_type not in KV_TYPES:
            raise ValueError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")
        dtype = KV_TYPES[kv_type]
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.keys = np.zeros((n_layer, n_ctx, kv_dim), dtype)  # (n_layer, n_ctx, kv_dim)
        self.values = np.zeros((n_layer, n_ctx, kv_dim), dtype)
        self.device = None  # the offloaded layers' part (gpu.offload.DeviceKV); these arrays hold the others

    @staticmethod
    def n_bytes_for(n_layer: int, n_ctx: int, kv_dim: int, kv_type: str = "f16") -> int:
        if kv_type not in KV_TYPES:
            raise ValueError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")
        return 2 * n_layer * n_ctx * kv_dim * np.dtype(KV_TYPES[kv_type]).itemsize

    @property
    def n_bytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def store(self, layer: int, pos0: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Write keys/values (n, kv_dim) for positions pos0..pos0+n-1."""
        self.keys[layer, pos0:pos0 + len(keys)] = keys
        self.values[layer, pos0:pos0 + len(values)] = values

    def read(self, layer: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored keys and values (stop - start, kv_dim) of positions start..stop-1: views in the cache's
        own type (float16 or float32), which attention reads as they are."""
        return self.keys[layer, start:stop], self.values[layer, start:stop]
