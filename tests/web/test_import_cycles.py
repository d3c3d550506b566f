"""The web package's modules import each other without a cycle (issue 16): shared helpers live in
modules that import none of the ones using them (deps, rendering), so that any module can be
imported first and no import has to hide inside a function to break a loop."""

from __future__ import annotations

import ast
from importlib import resources

PACKAGE = "consentsync.web"


def web_imports() -> dict[str, set[str]]:
    """Each module of the package and the package's modules it imports, at any depth of its code."""
    folder = resources.files(PACKAGE)
    modules = {entry.name[:-3] for entry in folder.iterdir() if entry.name.endswith(".py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                found |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                found.add(str(node.module).removeprefix(PACKAGE + ".").split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {
                    alias.name.removeprefix(PACKAGE + ".").split(".")[0]
                    for alias in node.names
                    if alias.name.startswith(PACKAGE + ".")
                }
        graph[name] = found - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_web_modules_import_each_other_without_a_cycle() -> None:
    graph = web_imports()
    assert {"app", "pages", "api", "deps", "rendering", "console"} <= set(graph)
    assert "app" in graph and "pages" in graph["app"]  # the checker does see the package's imports
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_checker_finds_a_cycle() -> None:
    assert cycle({"app": {"pages"}, "pages": {"deps"}, "deps": {"app"}}) == ["app", "pages", "deps", "app"]
    assert cycle({"app": {"pages", "deps"}, "pages": {"deps"}, "deps": set()}) is None
