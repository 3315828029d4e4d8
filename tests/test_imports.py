"""The shape of the `llamapyz` package: a folder (or module) per layer, each importing only the layers below it,
no import cycle between modules, and no module name used in two layers. Read from the sources (`ast`), so an
import inside a function counts as much as one at the top; only imports made for type checkers
(`if TYPE_CHECKING:`) do not, as they never run."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llamapyz"

# lowest first; a module's layer is its first name under llamapyz ("" for the package itself, the public API)
LAYERS = ["version", "errors", "machine", "gguf", "kernels", "tokenizer", "decode", "chat", "model", "gpu",
          "loader", "server", "scale", "archive", "cli", "", "bundler", "__main__"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(module: str) -> list[tuple[str, int]]:
    """The llamapyz modules `module` imports (a name from a package counts as the package, a submodule as
    itself), with the line, leaving out imports under `if TYPE_CHECKING:`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for sub in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
            target = ".".join(base + [node.module]) if node.level and node.module else (
                ".".join(base) if node.level else node.module or "")
            if target == "llamapyz" or target.startswith("llamapyz."):
                found += [(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target, node.lineno)
                          for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "llamapyz"]
    return [(target, line) for target, line in found if target != module]


def test_every_module_is_in_a_layer():
    assert {layer(m) for m in MODULES} <= set(LAYERS), {layer(m) for m in MODULES} - set(LAYERS)


def test_each_layer_imports_only_the_layers_below_it():
    upward = []
    for module in MODULES:
        for target, line in imports(module):
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target} "
                              f"({layer(module) or 'llamapyz'} -> {layer(target) or 'llamapyz'})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {module: {target for target, _ in imports(module) if target in MODULES} for module in MODULES}
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not cycles, cycles


def test_no_module_name_in_two_layers():
    layers_of = defaultdict(set)
    for module in MODULES:
        name = module.rpartition(".")[2]
        if not MODULES[module].name == "__init__.py":
            layers_of[name].add(layer(module))
    assert {name: where for name, where in layers_of.items() if len(where) > 1} == {}


def test_the_model_imports_neither_sampling_nor_the_gpu():
    model = {target for module in MODULES if layer(module) == "model" for target, _ in imports(module)}
    assert not {t for t in model if layer(t) in ("gpu", "decode")}, model


IMPORT_JS = re.compile(r'^import [^;]*? from "\./([\w.-]+\.js)";', re.MULTILINE | re.DOTALL)


def test_the_web_pages_modules_import_no_cycle():
    graph = {path.name: set(IMPORT_JS.findall(path.read_text())) for path in (PACKAGE.parent / "webui").glob("*.js")}
    assert graph["reply.js"] and graph["messages.js"]  # the pattern reads them
    assert [c for c in strongly_connected(graph) if len(c) > 1] == []


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """The checks themselves, on a made-up graph: they must be able to fail."""
    assert [sorted(c) for c in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
            if len(c) > 1] == [["a", "b", "c"]]
    assert LAYERS.index("gguf") < LAYERS.index("model")  # model -> gguf is down; gguf -> model would be up


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of `graph`, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components
