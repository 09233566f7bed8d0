"""The package map holds: no import cycle anywhere (imports inside functions included; imports for type
annotations only excluded, they never run), and each layer imports only what is below it
(docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

PACKAGES = ("core", "pipelines", "serving", "monitoring", "demo", "benchmarks")
# package -> packages of the project it must never import (at any depth, in any function).
FORBIDDEN = {
    "core": {"pipelines", "serving", "monitoring", "demo", "benchmarks"},
    "serving": {"pipelines", "monitoring", "demo", "benchmarks"},
    "monitoring": {"pipelines", "serving", "demo", "benchmarks"},
    "pipelines": {"serving", "benchmarks"},
    "demo": {"benchmarks"},
}
# The only places outside demo/ that may reach into it, each guarded so that deleting demo/ leaves
# them working (tests/e2e/test_fork_guide.py runs the fork walk-through without it).
DEMO_ENTRY_POINTS = {"pipelines.cli", "pipelines.collect"}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if ".work" in path.parts:
                continue
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, wherever the import statement sits."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    # Imports for type annotations only (`if TYPE_CHECKING:`) never run: they cannot make a cycle.
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            module = target
            while module and module not in known:
                module = module.rpartition(".")[0]
            if module and module != name:
                found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # A package importing its own submodules (core.registry -> core.registry.x) is not a cycle.
            if len(component) > 1 and not _package_and_children(component):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _package_and_children(component: list[str]) -> bool:
    shortest = min(component, key=len)
    return all(c == shortest or c.startswith(shortest + ".") for c in component)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(layer: str) -> None:
    bad = []
    for name, targets in graph().items():
        if name.split(".")[0] != layer:
            continue
        for t in targets:
            top = t.split(".")[0]
            if top in FORBIDDEN[layer]:
                bad.append(f"{name} -> {t}")
            if top == "demo" and layer != "demo" and name not in DEMO_ENTRY_POINTS:
                bad.append(f"{name} -> {t} (only {sorted(DEMO_ENTRY_POINTS)} may reach into demo/)")
    assert not bad, "\n".join(sorted(bad))


def test_the_graph_sees_function_level_imports() -> None:
    # The walker must see an import hidden inside a function, or a cycle could hide there.
    edges = graph()
    assert "demo.simulator" in edges["pipelines.collect"]
