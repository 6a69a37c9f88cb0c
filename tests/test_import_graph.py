"""The package's import graph: no cycles, and no layer imports a layer above it.

Every ``import`` statement of ``wan/`` counts, also those inside functions (a lazy import hides a cycle
from the interpreter, not from a reader). Importing a package's ``__init__`` implicitly is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wan"

# Lowest first; a module may import its own layer (without cycles) and the layers below it.
LAYERS = (
    ("wan.constants", "wan.errors", "wan.configs"),
    ("wan.audio", "wan.utils", "wan.data", "wan.preprocess"),
    ("wan.models",),
    ("wan.pipelines", "wan.runtime", "wan.distributed"),
    ("wan.training", "wan.testing", "wan.golden"),
    ("wan.cli", "wan.app"),
)


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    mods = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the ``wan`` modules it imports (a name is resolved to the longest module that exists)."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        resolved = {resolve(t) for t in targets if t.split(".")[0] == "wan"}
        graph[mod] = {t for t in resolved if t and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            return rank
    return None


# None left. The last one was wan.cli.batch <-> wan.cli.inference (main hands --batch_file to batch, which
# reused inference's load/generate); the single-video code now lives below both, in wan.cli.generation.
# Keep this empty: a new cycle fails the equality below.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles():
    assert cycles(import_graph()) == KNOWN_CYCLES


def test_no_layer_imports_a_layer_above_it():
    graph = import_graph()
    upward = [f"{m} -> {t}" for m, ts in graph.items() for t in ts if (layer_of(m) or 0) < (layer_of(t) or 0)]
    assert upward == [], "imports that reach up a layer: " + ", ".join(sorted(upward))
    unplaced = sorted(m for m in graph if m != "wan" and layer_of(m) is None)
    assert unplaced == [], f"put these modules in a layer of LAYERS: {unplaced}"


def test_errors_import_nothing_from_the_package_and_keep_their_old_homes():
    from wan import errors
    from wan.models import loading
    from wan.runtime import memory, resume

    assert import_graph()["wan.errors"] == set()
    assert loading.CheckpointError is errors.CheckpointError and loading.download_hint is errors.download_hint
    assert resume.ResumeMismatchError is errors.ResumeMismatchError and memory.GPUOutOfMemoryError is errors.GPUOutOfMemoryError


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"a.py": "from wan import b", "b.py": "def f():\n    from wan.a import x"}, [["wan.a", "wan.b"]]),
        ({"a.py": "from . import b", "b.py": "from .a import x"}, [["wan.a", "wan.b"]]),
        ({"a.py": "from wan import b", "b.py": "import os"}, []),
    ],
)
def test_the_checker_finds_lazy_and_relative_cycles(tmp_path, files, expected):
    root = tmp_path / "wan"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text + "\n")
    assert cycles(import_graph(root)) == expected
