"""tests/markers.py: the markers a test gets from what it uses, on known tests of each kind (collected in a child
pytest, as `pytest -m fast` collects them) and on small functions here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamapyz.bundler.registry import fetch_model
from tests.live_server import ServerProcess, ServerThread
from tests.llama_cpp_vocabs import vocab_names
from tests.markers import HEAVY, Scanner

REPO = Path(__file__).resolve().parents[1]
OURS = {*HEAVY, "slow", "fast"}

# node id -> the markers of OURS it must have, no more and no fewer
EXPECTED = {
    "tests/test_architectures.py::test_engine_matches_reference[gemma2-Q8_0]": {"fast"},
    "tests/test_blockdot.py::test_matrices_sharing_an_input_in_one_pass_give_the_same_bits": {"fast"},
    "tests/test_server.py::test_api_key": {"fast"},  # a ServerThread in this process, on the tiny llama
    # the registry's fake "demo" model, called inside a rewritten assert too
    "tests/test_registry.py::test_parts_are_concatenated_verified_and_cached": {"fast"},
    "tests/test_registry.py::test_real_models_match_their_registry_checksums[smollm2]": {"real_model"},
    "tests/test_constraint.py::test_sampled_outputs_validate_too": {"real_model"},  # a fixture's fixture
    "tests/test_tools.py::test_the_real_model_forced_to_call_writes_schema_valid_arguments": {"real_model"},
    # a module fixture serving tests/dress.py's qwen2, derived from a real model
    "tests/test_server_tools.py::test_tool_round_trip_qwen_template[False]": {"real_model", "server_process",
                                                                             "slow"},
    "tests/test_portable.py::test_each_distinct_file_is_stored_once": {"archive", "slow"},  # REPO / "build.py"
    "tests/test_build.py::test_it_serves_from_a_bare_python_with_the_weights_mapped_in_place": {
        "archive", "real_model", "server_process", "slow"},
    "tests/test_scale_ray.py::test_the_openai_clients_calls_and_the_models_list": {"ray", "real_model", "slow"},
    "tests/test_webui_features.py::test_the_page_works_where_storage_is_blocked": {"browser", "slow"},
    "tests/test_server_security.py::test_306_stalled_sockets_against_a_256_descriptor_limit": {"server_process"},
}


class Report:
    """A plugin printing each collected test's markers as one JSON object."""

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        print(json.dumps({item.nodeid: sorted({m.name for m in item.iter_markers()}) for item in session.items}))


def test_known_tests_get_their_markers():
    result = subprocess.run([sys.executable, "-m", "tests.test_markers", *EXPECTED], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert {node: set(markers) & OURS for node, markers in collected.items()} == EXPECTED


def uses_the_real_model() -> None:
    fetch_model("smollm2")


def uses_a_fake_model() -> None:
    assert fetch_model("demo") is not None  # the registry knows no "demo": a test registers it


def serves_in_a_child_process(model: Path) -> None:
    with ServerProcess(model):
        pass


def serves_in_this_process(model: Path) -> None:
    with ServerThread(model):
        pass


def reads_llama_cpps_vocabularies() -> None:
    vocab_names()  # through sources_dir(): llama.cpp's sources, fetched from PyPI


def calls_a_helper() -> None:
    [uses_the_real_model() for _ in range(2)]


def test_what_a_function_reaches_through_names_helpers_and_comprehensions():
    scanner = Scanner()
    assert scanner.function(uses_the_real_model) == {"real_model"}
    assert scanner.function(uses_a_fake_model) == set()
    assert scanner.function(serves_in_a_child_process) == {"server_process"}
    assert scanner.function(serves_in_this_process) == set()
    assert scanner.function(reads_llama_cpps_vocabularies) == {"real_model"}
    assert scanner.function(calls_a_helper) == {"real_model"}


if __name__ == "__main__":  # the child of test_known_tests_get_their_markers
    sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[Report()]))
