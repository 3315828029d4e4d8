from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.synth import write_gguf

REPO = Path(__file__).resolve().parents[1]


def build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], capture_output=True, text=True,
                          cwd=REPO)


def test_build_validates_a_local_model_and_prints_its_path(tmp_path):
    from tests.test_tokenizer import bpe_metadata

    path = tmp_path / "tiny.gguf"
    md = bpe_metadata()
    write_gguf(path, {"token_embd.weight": ("Q8_0", (4, 32))}, metadata={
        "tokenizer.ggml.model": ("string", md["tokenizer.ggml.model"]),
        "tokenizer.ggml.pre": ("string", md["tokenizer.ggml.pre"]),
        "tokenizer.ggml.tokens": ("array", md["tokenizer.ggml.tokens"]),
        "tokenizer.ggml.merges": ("array", md["tokenizer.ggml.merges"]),
    })
    result = build("--model", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(path)
    assert "gpt2 tokenizer" in result.stderr


def test_build_refuses_an_unknown_model_with_a_hint():
    result = build("--model", "no-such-model")
    assert result.returncode == 1
    assert result.stderr.startswith("error: 'no-such-model' is neither")
    assert "hint:" in result.stderr and "Traceback" not in result.stderr
