"""Imports point one way: the package's import graph, function-level imports included, has no cycle, and no
package imports one above it in the layers below (docs/layout.md)."""

import ast

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "oneforcing"


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("oneforcing", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oneforcing"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name.startswith("oneforcing")}
        graph[name] = deps
    return graph


# top to bottom; a package imports only packages on lower layers (its own excepted)
LAYERS = [
    {"cli"},
    {"commands"},
    {"lightning_cli", "serving", "lightning_modules"},
    {"toy"},
    {"callbacks", "data", "evaluation", "engines", "objectives"},
    {"sampling"},
    {"models", "video_io"},
]


def package_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: dict[str, set[str]], layers: list[set[str]] = LAYERS) -> list[str]:
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    found = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = package_of(module), package_of(dep)
            if a != b and a in rank and b in rank and rank[b] <= rank[a]:
                found.append(f"{module} -> {dep}")
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_has_a_layer():
    packages = {package_of(module) for module in import_graph() if "." in module}
    assert packages - set().union(*LAYERS) == set(), "add the new package to LAYERS (and to docs/layout.md)"


def test_no_package_imports_upward():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"oneforcing.models.wan": {"oneforcing.toy.world"}, "oneforcing.toy.world": {"oneforcing.models.wan"},
             "oneforcing.data.shards": {"oneforcing.evaluation.metrics"}}
    assert upward_imports(graph) == ["oneforcing.data.shards -> oneforcing.evaluation.metrics",
                                     "oneforcing.models.wan -> oneforcing.toy.world"]
