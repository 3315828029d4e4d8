"""Numba kernels, one set per quant format, looked up by the format's name.

`KERNELS[name]` gives the format's record (`llamapyz/gguf/quants.py`), its row dequantizer (token
embeddings, and the products of formats without an integer kernel; `dequant.DEQUANT`) and its row kernel
in `matvec.matmul_table` (the integer matrix product of prefill and decode; `blockdot.ROW_KERNELS`), which
`matmul_table` reaches through the record's ggml type id. It is made from those two tables, to which each
kernel attaches itself: nothing here names a format. Formats whose values are plain numbers (F32, F16,
BF16, F64, integers) need neither: numpy casts them. `QuantMatrix` (linear.py) is the one place that picks
among them.

Importing this package fixes the CPU target the kernels are compiled for (`llamapyz/machine/cpu.py`: the best tier
this CPU runs, or the one forced by `--cpu-tier` / $LLAMAPYZ_CPU_TIER before this import). Where a tier
needs a different kernel, the choice is made when the kernel is compiled (`simd._half_to_float`,
`blockdot.dot4u`), and the target is part of every cache key, so each tier's machine code is cached apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..gguf.quants import QuantFormat
from ..machine.cpu import active, check_numba

TARGET = active()

from . import kernel_cache as cache  # noqa: E402  (numba must not compile anything before the target is set)

cache.install()

from . import dequant  # noqa: E402
from .blockdot import ROW_KERNELS, RowKernel  # noqa: E402

check_numba(TARGET)


@dataclass(frozen=True)
class FormatKernels:
    """A format's CPU kernels."""

    format: QuantFormat
    dequant: Callable  # (w, out): `dequant.DEQUANT`'s kernel
    row: RowKernel | None  # its integer row kernel; None: dequantized rows and the fixed-order float kernel

    @property
    def format_id(self) -> int | None:
        """What `matvec.matmul_table` takes for the format (its ggml type id); None without a row kernel."""
        return self.format.type_id if self.row else None

    @property
    def activation(self) -> str:
        """The int8 form of x the row kernel takes (linear.QuantizedRows), as llama.cpp pairs them."""
        return self.row.activation if self.row else "q8_0"


KERNELS: dict[str, FormatKernels] = {
    record.name: FormatKernels(record, kernel, ROW_KERNELS.get(record.name))
    for record, kernel in dequant.DEQUANT.items()
}
