"""`QuantMatrix`: a 2-d weight kept in its GGUF encoding, multiplied without ever decoding it whole.

- `matvec(x)` (decode: one token of each of a few sequences): the format's integer kernel on the raw
  blocks, or, for formats without one, row tiles decoded to float32 and multiplied by BLAS.
- `matmul(X)` (prefill, many tokens): row tiles decoded to float32 (at most `TILE_ELEMENTS` at a time)
  and multiplied by BLAS: one pass over the weights for the whole batch.
- `rows(ids)`: selected rows decoded (token embeddings).
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedQuantError
from ..gguf import Tensor
from ..quants import dequantize
from . import KERNELS
from .matvec import QK, quantize_q8

TILE_ELEMENTS = 1 << 21  # 8 MiB of float32 per decoded tile


class QuantizedRows:
    """x (n, n_cols) quantized to int8 blocks of 32 (see matvec.py)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)  # the float original, for the BLAS fallback
        n, n_cols = self.x.shape
        self.xq = np.empty((n, n_cols), np.int8)
        self.xd = np.empty((n, n_cols // QK), np.float32)
        self.xs = np.empty((n, n_cols // QK), np.float32)
        self.xqs = np.empty((n, n_cols // QK), np.int32)
        quantize_q8(self.x, self.xq, self.xd, self.xs, self.xqs)


class QuantMatrix:
    """Tensor of numpy shape (n_rows, n_cols): y = W @ x maps n_cols inputs to n_rows outputs."""

    def __init__(self, tensor: Tensor) -> None:
        if len(tensor.shape) != 2:
            raise UnsupportedQuantError(f"tensor {tensor.name!r}: expected a matrix, got shape {tensor.shape}")
        if not tensor.format.supported:
            dequantize(tensor.raw[:1], tensor.format, (1, -1), tensor=tensor.name)  # raises the clear error
        self.name = tensor.name
        self.format = tensor.format
        self.n_rows, self.n_cols = tensor.shape
        self.raw = tensor.raw  # (n_rows, row_bytes) uint8
        kernels = KERNELS.get(self.format.name)
        self._matvec = kernels.matvec if kernels else None
        self._dequant = kernels.dequant if kernels else None
        if self._matvec is not None and self.n_cols % QK:
            self._matvec = None
        self.tile_rows = max(1, TILE_ELEMENTS // self.n_cols)

    @property
    def integer_kernel(self) -> bool:
        return self._matvec is not None

    def dequantize_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start, n_cols)."""
        return self._decode(self.raw[start:stop], out)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` as float32 (len(ids), n_cols)."""
        return self._decode(self.raw[np.asarray(ids, dtype=np.int64)], None)

    def _decode(self, raw: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            out = np.empty((raw.shape[0], self.n_cols), np.float32)
        if self._dequant is not None:
            self._dequant(raw, out)
        else:
            out[:] = dequantize(raw, self.format, out.shape, tensor=self.name)
        return out

    def matvec(self, x: QuantizedRows, out: np.ndarray | None = None) -> np.ndarray:
        """out (n, n_rows) = x @ W.T, one integer matrix-vector product per row of x."""
        if out is None:
            out = np.empty((x.x.shape[0], self.n_rows), np.float32)
        if self._matvec is not None:
            self._matvec(self.raw, x.xq, x.xd, x.xs, x.xqs, out)
            return out
        return self.matmul(x.x, out, row_by_row=True)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None, row_by_row: bool = False) -> np.ndarray:
        """out (n, n_rows) = x (n, n_cols) @ W.T, one decoded tile of rows at a time.

        row_by_row: one BLAS product per row of x (each tile still decoded once), so that a row's result
        does not depend on the other rows (BLAS takes other code paths for other shapes): batched decode.
        """
        if out is None:
            out = np.empty((x.shape[0], self.n_rows), np.float32)
        groups = [slice(i, i + 1) for i in range(x.shape[0])] if row_by_row else [slice(None)]
        if self.format.name == "F32":
            for rows in groups:
                np.matmul(x[rows], self.raw.view(np.float32).T, out=out[rows])
            return out
        tile = np.empty((min(self.tile_rows, self.n_rows), self.n_cols), np.float32)
        for start in range(0, self.n_rows, self.tile_rows):
            stop = min(start + self.tile_rows, self.n_rows)
            decoded = self.dequantize_rows(start, stop, tile[: stop - start])
            for rows in groups:
                np.matmul(x[rows], decoded.T, out=out[rows, start:stop])
        return out
