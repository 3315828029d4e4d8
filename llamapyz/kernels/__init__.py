"""Numba kernels, one set per quant format, looked up by the format's name.

`KERNELS[name]` gives the format's row kernel in `matvec.matmul_table` (the integer matrix product of
prefill and decode) and its row dequantizer (token embeddings, and the products of formats without an
integer kernel). Formats whose values are plain numbers (F32, F16, BF16, F64, integers) need neither:
numpy casts them. `QuantMatrix` (linear.py) is
the one place that picks among them.

Importing this package fixes the CPU target the kernels are compiled for (`llamapyz/machine/cpu.py`: the best tier
this CPU runs, or the one forced by `--cpu-tier` / $LLAMAPYZ_CPU_TIER before this import). Where a tier
needs a different kernel, the choice is made when the kernel is compiled (`simd._half_to_float`,
`blockdot.dot4u`), and the target is part of every cache key, so each tier's machine code is cached apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..machine.cpu import active, check_numba

TARGET = active()

from . import kernel_cache as cache  # noqa: E402  (numba must not compile anything before the target is set)

cache.install()

from . import dequant, matvec  # noqa: E402

check_numba(TARGET)


@dataclass(frozen=True)
class FormatKernels:
    format_id: int | None  # the format's row kernel in `matvec.matmul_table`; None: dequantized rows and the
    # fixed-order float kernel
    dequant: Callable  # (w, out)
    activation: str = "q8_0"  # the int8 form of x the kernel takes (linear.QuantizedRows), as llama.cpp pairs them


KERNELS: dict[str, FormatKernels] = {
    "Q4_0": FormatKernels(matvec.FORMAT_IDS["Q4_0"], dequant.dequant_q4_0),
    "Q4_1": FormatKernels(matvec.FORMAT_IDS["Q4_1"], dequant.dequant_q4_1),
    "Q5_0": FormatKernels(matvec.FORMAT_IDS["Q5_0"], dequant.dequant_q5_0),
    "Q5_1": FormatKernels(matvec.FORMAT_IDS["Q5_1"], dequant.dequant_q5_1),
    "Q8_0": FormatKernels(matvec.FORMAT_IDS["Q8_0"], dequant.dequant_q8_0),
    "Q2_K": FormatKernels(None, dequant.dequant_q2_k),
    "Q3_K": FormatKernels(None, dequant.dequant_q3_k),
    "Q4_K": FormatKernels(matvec.FORMAT_IDS["Q4_K"], dequant.dequant_q4_k, "q8_K"),
    "Q5_K": FormatKernels(matvec.FORMAT_IDS["Q5_K"], dequant.dequant_q5_k, "q8_K"),
    "Q6_K": FormatKernels(matvec.FORMAT_IDS["Q6_K"], dequant.dequant_q6_k, "q8_K"),
}
