"""MkDocs hook of ``make docs``: the API reference page, generated at build time.

``api.md`` gets one mkdocstrings block per module of the ``tokenweight`` package (the
command-line modules excepted: the pages document the commands), found on disk, so a new
module appears without editing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SRC = Path(__file__).resolve().parent.parent / "src"
SKIP = ("tokenweight.commands", "tokenweight.cli", "tokenweight.__main__")

INTRO = """# API reference

Generated from the docstrings of every module of the `tokenweight` package. The names most
code needs are importable from `tokenweight` itself (`Scheme`, `compute_weights`,
`weighted_nll_loss`, `make_compute_loss_func`, `token_weighted_loss`, `TokenWeightError`,
`IGNORE_INDEX`); how they fit together: [Python API](python-api.md). The command line is
documented on the command pages, e.g. [training](train.md).
"""


def module_names(src: Path = SRC) -> list[str]:
    """Dotted names of the package's modules, packages first, sorted; command line excepted."""
    names = []
    for path in sorted((src / "tokenweight").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if not name.startswith(SKIP):
            names.append(name)
    return sorted(names)


def api_markdown() -> str:
    """The page: the introduction, then ``::: module`` for every module."""
    blocks = [f"::: {name}\n" for name in module_names()]
    return INTRO + "\n" + "\n".join(blocks)


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "api.md", content=api_markdown()))
    return files
