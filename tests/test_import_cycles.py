"""consentsync's modules import each other without a cycle: the core (src/consentsync) and the
connector plugins (connectors/consentsync_*). Shared pieces live in modules that import none of
the modules using them (the CLI's in cli_base, the web console's in web.deps and web.rendering),
so any module can be imported first and no import has to hide inside a function to break a loop.

The graph is read from the source with ast, not by importing it: an import inside a function
counts as much as one at the top, since hiding an import in a function is how a cycle is usually
papered over."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = (ROOT / "src" / "consentsync", *sorted((ROOT / "connectors").glob("consentsync_*")))


def module_files() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, for __init__.py)."""
    found: dict[str, Path] = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _known(name: str, modules: set[str]) -> str | None:
    """The module an import of ``name`` runs: ``name`` itself, else the nearest package holding it
    (``import a.b.missing`` runs a.b), else None (not one of ours)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``module`` imports, at any depth of its code. ``from a import b``
    imports the module a.b when there is one, else a itself."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {known for alias in node.names if (known := _known(alias.name, modules))}
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, module, path.name == "__init__.py")
            for alias in node.names:
                known = _known(f"{base}.{alias.name}", modules) if alias.name != "*" else None
                if known != f"{base}.{alias.name}":
                    known = _known(base, modules)
                if known:
                    found.add(known)
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


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


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    # The checker does see the packages and their imports, at the top and inside functions.
    assert {"consentsync.cli", "consentsync.web.app", "consentsync.sync.engine"} <= set(graph)
    assert any(name.startswith("consentsync_") for name in graph), "the connector plugins are checked too"
    assert "consentsync.web.pages" in graph["consentsync.web.app"]
    assert "consentsync.sync.runs" in graph["consentsync.sync.engine"]
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_the_checker_reads_every_form_of_import(tmp_path: Path) -> None:
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.sub.d"}
    source = tmp_path / "d.py"
    source.write_text(
        "import os\n"
        "import pkg.a\n"
        "from pkg import b, helper\n"
        "from . import c\n"
        "def later():\n"
        "    from ..a import name\n"
        "    from pkg.sub.missing import thing\n",
        encoding="utf-8",
    )
    assert imports_of("pkg.sub.d", source, modules) == {"pkg.a", "pkg.b", "pkg", "pkg.sub.c", "pkg.sub"}


def test_the_checker_finds_a_cycle() -> None:
    assert cycle({"app": {"pages"}, "pages": {"deps"}, "deps": {"app"}}) == ["app", "pages", "deps", "app"]
    assert cycle({"app": {"pages", "deps"}, "pages": {"deps"}, "deps": set()}) is None
