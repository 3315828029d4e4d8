"""llamapyz runtime: everything that runs inside the archive.

The public API (documented in README.md):

    from runtime import load_gguf, Tokenizer
    gguf = load_gguf("model.gguf")                  # or load_gguf((path, offset, length))
    tok = Tokenizer.from_gguf(gguf)
    ids = tok.encode("Hello", add_special=True, parse_special=True)
    text = tok.decode(ids)

    from runtime import Model
    model = Model.load("model.gguf", n_ctx=2048, n_threads=2)
    for step in model.generate(model.tokenize("Hello"), max_tokens=16):
        print(step.text, end="")
"""

from __future__ import annotations

import os

# Two thread pools can share the cores: numba's (OpenMP) for the kernels and OpenBLAS's for whatever numpy
# hands it (the engine's projections and attention no longer use BLAS; numpy's small ops may). Each
# busy-waits after its work by default, starving the other. Short spins keep decode's back-to-back kernel
# launches fast without stealing from the other pool. Read when the libraries load, so this must run before
# numpy is imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from .errors import (
    ContextOverflowError,
    GGUFError,
    LlamapyzError,
    ModelFetchError,
    TokenizerError,
    UnsupportedModelError,
    UnsupportedQuantError,
)
from .gguf import GGUFFile, Tensor, load_gguf
from .quants import FORMATS, FORMATS_BY_NAME, QuantFormat
from .tokenizer import StreamDecoder, Tokenizer

__version__ = "0.1.0"


def __getattr__(name: str):
    """`Model` is imported on first use: importing it compiles or loads the kernels for this CPU's tier,
    which the command line must be able to choose first (`--cpu-tier`)."""
    if name == "Model":
        from .model import Model

        return Model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ContextOverflowError",
    "Model",
    "UnsupportedModelError",
    "FORMATS",
    "FORMATS_BY_NAME",
    "GGUFError",
    "GGUFFile",
    "LlamapyzError",
    "ModelFetchError",
    "QuantFormat",
    "StreamDecoder",
    "Tensor",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedQuantError",
    "__version__",
    "load_gguf",
]
