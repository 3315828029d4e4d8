"""llamapyz: one GGUF model, one self-running Python file. A folder (or module) per layer, lowest first:
`errors`, `machine`, `gguf`, `kernels`, `tokenizer`, `decode`, `chat`, `model`, `gpu`, `loader`, `server`,
`scale`, `archive`, `cli`, `bundler` (the builder, not inside archives); a layer imports only those below it
(tests/test_imports.py).

The public API (documented in README.md):

    from llamapyz import load_gguf, Tokenizer
    gguf = load_gguf("model.gguf")                  # or load_gguf((path, offset, length))
    tok = Tokenizer.from_gguf(gguf)
    ids = tok.encode("Hello", add_special=True, parse_special=True)
    text = tok.decode(ids)

    from llamapyz import Model, generate
    model = Model.load("model.gguf", n_ctx=2048, n_threads=2)    # or load_model(..., n_gpu_layers=-1)
    for step in generate(model, model.tokenize("Hello"), max_tokens=16):
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
from .gguf.quants import FORMATS, FORMATS_BY_NAME, QuantFormat
from .gguf.reader import GGUFFile, Tensor, load_gguf
from .tokenizer import StreamDecoder, Tokenizer
from .version import __version__


def __getattr__(name: str):
    """`Model`, `load_model` and `generate` are imported on first use: importing the model compiles or loads
    the kernels for this CPU's tier, which the command line must be able to choose first (`--cpu-tier`)."""
    if name == "Model":
        from .model import Model

        return Model
    if name == "load_model":
        from .loader import load_model

        return load_model
    if name == "generate":
        from .decode.generation import generate

        return generate
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
    "generate",
    "load_gguf",
    "load_model",
]
