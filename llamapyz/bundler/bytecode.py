"""Bytecode for the archive's Python side, so a first run imports instead of compiling ~800 modules (~1.3 s).

Each `.py` under site-packages/ gets the `.pyc` Python would write beside it (`__pycache__/NAME.cpython-311.pyc`),
in the hash-checked form (PEP 552): valid whatever the extracted files' times, checked against the source's
hash on import, and the same bytes for the same source (no timestamp inside; the file name recorded in the
code object is relative, and Python replaces it with the real path on import). Only the running Python's
version can be compiled: an archive's targets for other versions get none and write their own on first import.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib._bootstrap_external import _code_to_hash_pyc  # PEP 552's writer, as py_compile uses it
from pathlib import PurePosixPath

CACHE_TAG = sys.implementation.cache_tag  # "cpython-311"


def pyc_name(arcname: str) -> str:
    """site-packages/a/b.py -> site-packages/a/__pycache__/b.cpython-311.pyc"""
    path = PurePosixPath(arcname)
    return str(path.parent / "__pycache__" / f"{path.stem}.{CACHE_TAG}.pyc")


def compile_source(arcname: str, source: bytes) -> bytes | None:
    """The checked-hash .pyc of one module, or None when this Python cannot compile it (a Python 2 leftover
    in some wheel: Python would fail to import it too)."""
    try:
        code = compile(source, arcname.removeprefix("site-packages/"), "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return bytes(_code_to_hash_pyc(code, importlib.util.source_hash(source), checked=True))
