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
from .model import Model
from .tokenizer import StreamDecoder, Tokenizer

__version__ = "0.1.0"

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
