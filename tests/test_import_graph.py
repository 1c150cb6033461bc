"""No import cycles inside the ``tokenweight`` package, and layers imported only downward.

The graph is read from the source by an AST scan: every ``import`` / ``from ... import``
of a ``tokenweight`` module is an edge, at module level and inside functions alike (a late
import inside a function hides a cycle from the interpreter, not from the reader); only
``if TYPE_CHECKING:`` blocks are left out. ``from package import name`` is an edge to the
package (its ``__init__`` runs and is read) and, when ``package.name`` is a module, to that
module too, so a module that imports its own package's ``__init__`` is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tokenweight

ROOT = Path(tokenweight.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at the top level or inside functions, except
    those under ``if TYPE_CHECKING:`` (never executed)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _resolve(name: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = name.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node.level, node.module)
                # ``from package import x`` runs and reads the package's ``__init__``, and
                # also imports ``package.x`` when that is a module.
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_scan_sees_the_package_and_its_imports():
    graph = import_graph()
    # a few edges that must exist, so that an empty or broken scan cannot pass
    assert "tokenweight.infra.errors" in graph["tokenweight"]  # the rest loads lazily
    assert "tokenweight.infra.config_files" in graph["tokenweight.training.config"]
    assert "tokenweight.infra.errors" in graph["tokenweight.core.weighting"]
    assert "tokenweight.core.losses.chunked" in graph["tokenweight.core.losses"]
    assert len(graph) > 30


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_tokenweight():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


# The layers, bottom first. A module may import its own layer and the layers below it;
# layers of the same rank (evaluation, training) may not import each other. The package
# root belongs to infra (it imports only infra and loads the rest lazily); the command
# line (``cli``, ``__main__``, ``commands``) is the interface layer. docs/DEVELOPING.md
# shows the same table.
LAYERS: dict[str, int] = {
    "infra": 0,
    "core": 1,
    "data": 2,
    "evaluation": 3,
    "training": 3,
    "workflows": 4,
    "interface": 5,
}
INTERFACE = ("cli", "__main__", "commands")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of the package, or None when it has none."""
    parts = module.split(".")
    if parts[0] != "tokenweight":
        return None
    if len(parts) == 1:
        return "infra"
    if parts[1] in INTERFACE:
        return "interface"
    # a layer is a folder: a loose module directly under tokenweight/ has none
    if parts[1] in LAYERS and (ROOT / parts[1]).is_dir():
        return parts[1]
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every module without a layer and every import that goes up a layer or sideways
    between two layers of the same rank."""
    found = [f"{m}: in no layer" for m in sorted(graph) if layer_of(m) is None]
    for module in sorted(graph):
        here = layer_of(module)
        for target in sorted(graph[module]):
            there = layer_of(target)
            if here is None or there is None or here == there:
                continue
            if LAYERS[there] >= LAYERS[here]:
                found.append(f"{module} ({here}) imports {target} ({there})")
    return found


def test_every_module_is_in_one_layer_and_imports_only_downward():
    assert layer_violations(import_graph()) == []


def test_the_layer_check_catches_planted_violations(tmp_path, monkeypatch):
    # on the real graph: a core module importing a workflow (up), a training module
    # importing evaluation (sideways), and a loose top-level module (no layer)
    graph = {k: set(v) for k, v in import_graph().items()}
    graph["tokenweight.core.weighting"].add("tokenweight.workflows.study")
    graph["tokenweight.training.card"].add("tokenweight.evaluation.report")
    graph["tokenweight.helpers"] = {"tokenweight.infra.errors"}
    assert layer_violations(graph) == [
        "tokenweight.helpers: in no layer",
        "tokenweight.core.weighting (core) imports tokenweight.workflows.study (workflows)",
        "tokenweight.training.card (training) imports tokenweight.evaluation.report (evaluation)",
    ]


def test_a_late_upward_import_in_a_source_file_is_seen(tmp_path, monkeypatch):
    """The scan itself, on a copy of the package with an import planted inside a
    function body of a core module."""
    import shutil
    import sys

    scan = sys.modules[__name__]

    copy = tmp_path / "tokenweight"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    target = copy / "core" / "weighting.py"
    target.write_text(
        target.read_text(encoding="utf-8")
        + "\n\ndef _planted():\n    from tokenweight.workflows import pipeline\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(scan, "ROOT", copy)
    assert layer_violations(scan.import_graph()) == [
        "tokenweight.core.weighting (core) imports tokenweight.workflows (workflows)",
        "tokenweight.core.weighting (core) imports tokenweight.workflows.pipeline (workflows)",
    ]
