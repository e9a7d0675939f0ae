"""No import cycle among the modules of vqnqs, counting every import: module-level, function-level, type-only.

The graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for each vqnqs module
``b`` that ``a`` imports anywhere. Importing ``x.y.z`` runs the ``__init__`` of ``x.y`` first, so it is an edge
to ``x.y`` as well, unless ``x.y`` is a package that ``a`` itself lies in (those load before ``a`` anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

import vqnqs

PACKAGE = Path(vqnqs.__file__).parent
ROOT = "vqnqs"


def module_files() -> dict[str, Path]:
    """``{dotted name: file}`` of every module and package of vqnqs."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = (ROOT, *path.relative_to(PACKAGE).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def ancestors(name: str) -> list[str]:
    """The packages ``name`` lies in, outermost first: ``a.b.c`` -> ``[a, a.b]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name an import statement of the module ``name`` (at ``path``) asks for, anywhere in it; for
    ``from m import x`` both ``m`` and ``m.x`` (``x`` may be a submodule)."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """``{module: the vqnqs modules it imports}`` (module docstring)."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_names(name, path):
            if imported in files:
                targets.update([imported, *ancestors(imported)])
        graph[name] = {t for t in targets if t in files and t != name and t not in ancestors(name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "vqnqs.dedup.incremental_attention" in graph["vqnqs.dedup.incremental"]  # module level
    assert "vqnqs.stages.train" in graph["vqnqs.cli"]  # inside a function
    assert "vqnqs.models" in graph["vqnqs.dedup.incremental"]  # the package of a submodule imported
    assert "vqnqs.models" not in graph["vqnqs.models.transformer"]  # not the module's own package


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
