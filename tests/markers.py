"""Markers from what a test uses, so that a new test gets its marker without anyone remembering it.

A test is marked with each heavy kind it reaches: through the fixtures in its closure (by name, and by what
each fixture's function refers to), or through what its own body refers to. "Refers to" follows the names a
function's code uses (`co_names`, nested functions and comprehensions included) to the objects they name in
its module (or in a module it refers to, `live_server.ServerProcess`), and on through the functions and
classes of `tests/` those names reach (`derived_path` -> `derive` -> `Donor` -> `fetch_model`).

- `real_model`: one of the real models (the fixtures `smollm2_path`, `gemma3_path`, `real_model`,
  `smollm2_server`; `fetch_model` of a name the registry knows; tests/dress.py's models derived from them), or
  llama.cpp's vocabularies (tests/llama_cpp_vocabs.py `sources_dir`): what is fetched from PyPI.
- `browser`: chromium through Playwright (the `browser` fixture, tests/browser.py).
- `archive`: builds or runs an archive (`build.py`: through tests/live_server.py `build` or a path to it; the
  `bare` Python).
- `ray`: `serve --ray` (tests/live_server.py `RayServer`).
- `server_process`: `llamapyz serve` in a child process (tests/live_server.py `ServerProcess`).
- `fast`: none of these and not `slow`: the fast loop, `pytest -m fast` (docs/development.md).
"""

from __future__ import annotations

import builtins
import dis
import importlib
import inspect
import sys
import types
from collections.abc import Iterator
from itertools import pairwise

import pytest

HEAVY = ("real_model", "browser", "archive", "ray", "server_process")
FIXTURES = {"smollm2_path": "real_model", "gemma3_path": "real_model", "real_model": "real_model",
            "smollm2_server": "real_model", "browser": "browser", "bare": "archive"}
LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_METHOD"}
PASSED = {"PUSH_NULL", "PRECALL"}  # between a function and its first argument
BUILD = "build.py"  # a path built from it (`REPO / "build.py"`) runs the archive builder


def sentinels() -> dict[int, str]:
    """id(object) -> the kind a reference to it makes a test."""
    from llamapyz.bundler.registry import fetch_model
    from tests import browser, dress, live_server, llama_cpp_vocabs

    kinds = {fetch_model: "real_model", dress.derived_path: "real_model", dress.derive: "real_model",
             llama_cpp_vocabs.sources_dir: "real_model",
             browser.headless_chromium: "browser", live_server.build: "archive",
             live_server.bare_python: "archive", live_server.RayServer: "ray",
             live_server.ServerProcess: "server_process"}
    return {id(obj): kind for obj, kind in kinds.items()}


def codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """A code object and those nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from codes(const)


def names(code: types.CodeType) -> set[str]:
    """The global, attribute and imported names a code object uses, less `fetch_model` where every use of it
    is a call with a literal name the registry does not know (tests/test_registry.py's fake "demo" model)."""
    from llamapyz.bundler.registry import REGISTRY

    used = set(code.co_names)
    if "fetch_model" in used and all(isinstance(name, str) and name not in REGISTRY
                                     for name in first_arguments(code, "fetch_model")):
        used.discard("fetch_model")
    return used


def first_arguments(code: types.CodeType, function: str) -> Iterator[object]:
    """The literal first argument of each call of `function` in a code object; None where it is not a literal.
    pytest's assertion rewriting (`assert f("x")`) stores the literal in a temporary first, `@py_assert1`,
    and may store the function in one before its argument is loaded."""
    instructions = [ins for ins in dis.get_instructions(code) if ins.opname not in PASSED]
    temporaries = {ins.argval: previous.argval for previous, ins in pairwise(instructions)
                   if previous.opname == "LOAD_CONST" and ins.opname == "STORE_FAST"
                   and ins.argval.startswith("@py_assert")}
    instructions = [ins for ins in instructions if ins.opname != "STORE_FAST"]
    for i, ins in enumerate(instructions):
        if i and instructions[i - 1].argval in ("_should_repr_global_name", "_saferepr"):
            continue  # the rewritten assert's explanation, naming the function, not calling it
        if ins.opname in LOADS and ins.argval == function:
            argument = instructions[i + 1] if i + 1 < len(instructions) else None
            if argument is not None and argument.opname == "LOAD_CONST":
                yield argument.argval
            elif argument is not None and argument.opname == "LOAD_FAST" and argument.argval in temporaries:
                yield temporaries[argument.argval]
            else:
                yield None


class Scanner:
    """The heavy kinds each function reaches, computed once per function."""

    def __init__(self) -> None:
        self.kinds_of = sentinels()
        self.seen: dict[int, frozenset[str]] = {}

    def function(self, func: object) -> frozenset[str]:
        func = inspect.unwrap(func) if callable(func) else func
        code = getattr(func, "__code__", None)
        if code is None or id(func) in self.seen:
            return self.seen.get(id(func), frozenset())
        self.seen[id(func)] = frozenset()  # a recursion ends here
        module_globals = getattr(func, "__globals__", {})
        used = set().union(*(names(c) for c in codes(code)))
        spaces = [module_globals, vars(builtins)]
        spaces += [vars(v) for v in module_globals.values() if isinstance(v, types.ModuleType)]
        spaces += [vars(sys.modules[n]) for n in used if n in sys.modules]  # `from tests.x import y` in a body
        found = {"archive"} if any(BUILD in c.co_consts for c in codes(code)) else set()
        for name in used:
            for space in spaces:
                if name in space:
                    found |= self.object(space[name])
        self.seen[id(func)] = frozenset(found)
        return self.seen[id(func)]

    def object(self, obj: object) -> frozenset[str]:
        if id(obj) in self.kinds_of:
            return frozenset({self.kinds_of[id(obj)]})
        if not str(getattr(obj, "__module__", "") or "").startswith("tests."):
            return frozenset()  # the package and libraries are what tests test, not how they are run
        if isinstance(obj, type):
            return frozenset().union(*(self.function(getattr(m, "__func__", m)) for m in vars(obj).values()
                                       if isinstance(m, (types.FunctionType, staticmethod, classmethod))))
        if isinstance(obj, types.FunctionType):
            return self.function(obj)
        return frozenset()


def mark(items: list[pytest.Item]) -> None:
    """Adds each heavy kind's marker to the tests that reach it, and `fast` to the others that are not slow."""
    importlib.import_module("tests.dress")  # tests/dress.py's functions are sentinels whether or not collected
    scanner = Scanner()
    for item in items:
        kinds = {FIXTURES[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURES}
        kinds |= scanner.function(getattr(item, "function", None))
        info = getattr(item, "_fixtureinfo", None)
        for definitions in (info.name2fixturedefs.values() if info else ()):
            for definition in definitions:
                kinds |= scanner.function(definition.func)
        for kind in sorted(kinds - {m.name for m in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, kind))
        if not {m.name for m in item.iter_markers()} & {*HEAVY, "slow"}:
            item.add_marker(pytest.mark.fast)
