"""`QuantMatrix`: a 2-d weight kept in its GGUF encoding, multiplied without ever decoding it whole.

- `matvec(x)` (every projection, prefill and decode alike): the format's integer row kernel on the raw
  blocks and x quantized to int8 blocks, or, for formats without one, `matmul`. `MatrixGroup` does
  several matrices that share an input (q, k, v) in one parallel pass.
- `matmul(X)`: row tiles decoded to float32 (at most `TILE_ELEMENTS` at a time) and multiplied in a
  fixed order by our own kernel: one pass over the weights for the whole batch.
- `rows(ids)`: selected rows decoded (token embeddings).
- `slice_rows(start, stop)`: a block of rows as a matrix of its own, zero copy (the parts of a fused
  tensor, one expert of a 3-d expert tensor).

A matrix may carry a float32 `bias` (n_rows,), which the forward pass adds after the product.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

from ..errors import UnsupportedQuantError
from ..gguf.quants import dequantize
from ..gguf.reader import Tensor
from . import KERNELS
from .matvec import ACTIVATIONS, QK, matmul_table, product, quantize_q8, quantize_q8_k
from .steps import dot_rows

TILE_ELEMENTS = 1 << 21  # 8 MiB of float32 per decoded tile
REUSED_TOKENS = 8  # MatrixGroup.project calls of up to this many tokens (decode) reuse their buffers


class QuantizedRows:
    """x (n, n_cols) and its int8 block forms (see matvec.py), each made the first time a kernel asks:
    "q8_0" (blocks of 32, llama.cpp's q8_0/q8_1) or "q8_K" (super-blocks of 256, for the K-quants)."""

    QUANTIZERS = {"q8_0": quantize_q8, "q8_K": quantize_q8_k}

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)  # the float original, for the float kernel
        self._forms: dict[str, tuple[np.ndarray, ...]] = {}

    def form(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(xq, xd, xs, xqs) of the `kind` quantization."""
        if kind not in self._forms:
            self._forms[kind] = _form_arrays(*self.x.shape)
            self.QUANTIZERS[kind](self.x, *self._forms[kind])
        return self._forms[kind]

    def forms(self, activations: set[str]) -> tuple:
        """The (q8_0, q8_K) pair `matmul_table` takes, with the forms in `activations` made, others empty."""
        return tuple(self.form(kind) if kind in activations else EMPTY_FORM for kind in ACTIVATIONS)


EMPTY_FORM = (np.empty((0, 0), np.int8), np.empty((0, 0), np.float32), np.empty((0, 0), np.float32),
              np.empty((0, 0), np.int32))


def _form_arrays(n: int, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Empty (xq, xd, xs, xqs) for x (n, n_cols): see matvec.py."""
    blocks = n_cols // QK
    return (np.empty((n, n_cols), np.int8), np.empty((n, blocks), np.float32), np.empty((n, blocks), np.float32),
            np.empty((n, blocks), np.int32))


def form_buffers(n: int, n_cols: int, activations: set[str]) -> tuple:
    """Buffers for x (n, n_cols) in the int8 forms of `activations` (the pair `product` takes; others empty)."""
    return tuple(_form_arrays(n, n_cols) if kind in activations else EMPTY_FORM for kind in ACTIVATIONS)


class QuantMatrix:
    """Tensor of numpy shape (n_rows, n_cols): y = W @ x maps n_cols inputs to n_rows outputs. A tensor of
    more dimensions (experts, n_rows, n_cols) is taken as its rows stacked; `slice_rows` parts it."""

    def __init__(self, tensor: Tensor, bias: np.ndarray | None = None) -> None:
        if len(tensor.shape) < 2:
            raise UnsupportedQuantError(f"tensor {tensor.name!r}: expected a matrix, got shape {tensor.shape}")
        if not tensor.format.supported:
            dequantize(tensor.raw[:1], tensor.format, (1, -1), tensor=tensor.name)  # raises the clear error
        self.name = tensor.name
        self.format = tensor.format
        self.n_cols = tensor.shape[-1]
        self.raw = tensor.raw  # (n_rows, row_bytes) uint8
        self.n_rows = self.raw.shape[0]
        self.bias = bias
        kernels = KERNELS.get(self.format.name)
        self.format_id = kernels.format_id if kernels and self.n_cols % QK == 0 else None
        self.activation = kernels.activation if kernels else ""
        self._dequant = kernels.dequant if kernels else None
        self.buffer, self.offset = _buffer_of(self.raw)
        self.tile_rows = max(1, TILE_ELEMENTS // self.n_cols)

    def slice_rows(self, start: int, stop: int, name: str | None = None) -> QuantMatrix:
        """Rows [start, stop) as a matrix sharing this one's bytes (and the matching part of its bias)."""
        part = copy.copy(self)
        part.name = name or f"{self.name}[{start}:{stop}]"
        part.raw = self.raw[start:stop]
        part.offset = self.offset + start * self.raw.strides[0]
        part.n_rows = stop - start
        part.bias = None if self.bias is None else self.bias[start:stop]
        return part

    @property
    def integer_kernel(self) -> bool:
        return self.format_id is not None

    def table_row(self, col0: int) -> list[int]:
        """This matrix's row of a `matmul_table` table, its outputs starting at column col0."""
        return [self.format_id, self.offset, self.raw.strides[0], col0, self.n_rows,
                ACTIVATIONS.index(self.activation), self.bias is not None]

    def dequantize_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start, n_cols)."""
        return self._decode(self.raw[start:stop], out)

    def rows(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `ids` as float32 (len(ids), n_cols), into `out` if given (then decoded one by one, no copy of
        their bytes: a decode step's few tokens)."""
        if out is None:
            return self._decode(self.raw[np.asarray(ids, dtype=np.int64)], None)
        for j, i in enumerate(ids):
            self._decode(self.raw[i:i + 1], out[j:j + 1])
        return out

    def _decode(self, raw: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            out = np.empty((raw.shape[0], self.n_cols), np.float32)
        fields = self.format.block_dtype.fields
        if self._dequant is not None:
            self._dequant(raw, out)
        elif self.format.block_size == 1 and fields["v"][0].kind == "f":  # F16, F32, F64: cast in place
            np.copyto(out, raw.view(fields["v"][0]).reshape(out.shape), casting="same_kind")
        else:
            out[:] = dequantize(raw, self.format, out.shape, tensor=self.name)
        return out

    def matvec(self, x: QuantizedRows, out: np.ndarray | None = None) -> np.ndarray:
        """out (n, n_rows) = x @ W.T: the format's integer kernel on x's int8 blocks, else `matmul` on x's
        float original. Either way each output is one fixed-order computation on its own row of x."""
        if out is None:
            out = np.empty((x.x.shape[0], self.n_rows), np.float32)
        if self.format_id is not None:
            table = np.array([self.table_row(0)], np.int64)  # the engine's products go through MatrixGroup
            matmul_table(self.buffer, table, x.forms({self.activation}), out)
            return out
        return self.matmul(x.x, out)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """out (n, n_rows) = x (n, n_cols) @ W.T in float32, one decoded tile of rows at a time, each output
        a `dot_rows` dot product in a fixed order: it depends on its two rows only, never on the number of
        rows, the threads or the CPU (no BLAS, whose kernels differ per shape and CPU)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if out is None:
            out = np.empty((x.shape[0], self.n_rows), np.float32)
        if self.format.name == "F32":
            dot_rows(self.raw.view(np.float32), x, out, 0)
            return out
        tile = _tile(min(self.tile_rows, self.n_rows) * self.n_cols).reshape(-1, self.n_cols)
        for start in range(0, self.n_rows, self.tile_rows):
            stop = min(start + self.tile_rows, self.n_rows)
            dot_rows(self.dequantize_rows(start, stop, tile[: stop - start]), x, out, start)
        return out


_tiles = threading.local()


def _tile(n: int) -> np.ndarray:
    """n float32 of this thread's tile for decoded rows (up to TILE_ELEMENTS), made once per thread: a float
    matrix's product allocates nothing (8 MiB a call was a page-faulted mmap each time)."""
    tile = getattr(_tiles, "array", None)
    if tile is None or tile.size < n:
        tile = _tiles.array = np.empty(max(n, TILE_ELEMENTS), np.float32)
    return tile[:n]


def _buffer_of(raw: np.ndarray) -> tuple[np.ndarray, int]:
    """The 1-d uint8 array that raw's bytes live in (the mmapped file, for a model's tensors), and the byte
    offset of raw's first row in it: the integer kernels address every matrix of a file through one array."""
    root = raw
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root.flags.c_contiguous and root.dtype == np.uint8 and raw.strides[-1] == 1:
        return root.reshape(-1), raw.ctypes.data - root.ctypes.data
    copy = np.ascontiguousarray(raw)
    return copy.reshape(-1), 0


class MatrixGroup:
    """Matrices that take the same input (q, k and v; gate and up): x @ W.T (+ bias) for each, in one parallel
    pass over all their rows when they can share it (integer kernels, one weights buffer), else one after
    the other. Each result is the same bits as `W.matvec(x)` (+ bias)."""

    def __init__(self, matrices: tuple[QuantMatrix, ...]) -> None:
        self.matrices = matrices
        first = matrices[0]
        cols = np.cumsum([0] + [m.n_rows for m in matrices])
        self.bounds = list(zip(cols[:-1].tolist(), cols[1:].tolist(), strict=True))
        self.n_out = int(cols[-1])
        self.activations = {m.activation for m in matrices}
        self.table = None  # (n_mats, TABLE_COLUMNS): see matvec.matmul_table
        same_buffer = lambda m: (m.buffer.ctypes.data, m.buffer.size) == (first.buffer.ctypes.data, first.buffer.size)  # noqa: E731
        if all(m.integer_kernel and same_buffer(m) for m in matrices):
            self.table = np.array([m.table_row(c) for m, (c, _) in zip(matrices, self.bounds, strict=True)], np.int64)
            self.bias = np.zeros(self.n_out, np.float32)  # (n_out,): the matrices' biases, zeros for those without
            for m, (a, b) in zip(matrices, self.bounds, strict=True):
                if m.bias is not None:
                    self.bias[a:b] = m.bias
        self._buffers: dict[int, tuple] = {}  # n -> (forms, out, views): decode's, made once

    @property
    def buffer(self) -> np.ndarray:
        return self.matrices[0].buffer

    def project(self, x: np.ndarray, keep: bool = False) -> list[np.ndarray]:
        """[x @ W.T + bias for W in matrices], x (n, n_in) float32. Unless `keep`, calls of up to
        `REUSED_TOKENS` tokens (decode) write into buffers of this group made once, so their results are
        valid until its next call (the forward pass uses them before); `keep` for results handed out."""
        n = x.shape[0]
        if n > REUSED_TOKENS:
            forms, out, outs = self._make_buffers(n, x.shape[1])
        else:
            forms, out, outs = self._buffers.get(n) or self._buffers.setdefault(n, self._make_buffers(n, x.shape[1]))
            if keep:  # x's forms reused, the results new
                _, out, outs = self._make_buffers(n, x.shape[1], forms=False)
        if self.table is None:  # one matrix after the other, each into its own part of `out`
            rows = QuantizedRows(x)
            for m, y in zip(self.matrices, outs, strict=True):
                m.matvec(rows, y)
                if m.bias is not None:
                    y += m.bias
            return outs
        product(np.ascontiguousarray(x, np.float32), self.buffer, self.table, self.bias, forms, out)
        return outs

    def _make_buffers(self, n: int, n_cols: int, forms: bool = True) -> tuple:
        """(forms, out, outs): x's int8 forms (unless not `forms`) and the products' array (n, n_out) with each
        matrix's columns as a view; without a table, each matrix its own array (the float kernel writes whole
        rows)."""
        if self.table is None:
            return None, None, [np.empty((n, m.n_rows), np.float32) for m in self.matrices]
        out = np.empty((n, self.n_out), np.float32)
        return form_buffers(n, n_cols, self.activations) if forms else None, out, [out[:, a:b] for a, b in self.bounds]
