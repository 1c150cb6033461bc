"""Facts defined once: shared values are imported from the module that owns them, never
restated or imported through a module that merely uses them."""

from __future__ import annotations

import ast
from pathlib import Path

import tokenweight

ROOT = Path(tokenweight.__file__).resolve().parent


def _sources() -> dict[str, ast.Module]:
    return {
        path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(ROOT.rglob("*.py"))
    }


def test_ignore_index_comes_from_constants_and_is_never_written_out():
    imported_from, literals = [], []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(
                a.name == "IGNORE_INDEX" for a in node.names
            ):
                imported_from.append((name, node.module))
            if (
                isinstance(node, ast.UnaryOp)
                and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant)
                and node.operand.value == 100
            ):
                literals.append(f"{name}:{node.lineno}")
    assert imported_from and {m for _, m in imported_from} == {"tokenweight.constants"}, [
        x for x in imported_from if x[1] != "tokenweight.constants"
    ]
    assert [x.split(":")[0] for x in literals] == ["constants.py"], literals
