"""The README is a front door and every relative link of the documentation resolves.

``make docs`` (MkDocs, strict) checks the links between the pages of ``docs/``; the README
and the changelog live outside the site, so their links are checked here.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import tokenweight

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
GENERATED = ROOT / "docs" / "api.md"  # written by docs/hooks.py at build time


def relative_links(path: Path) -> list[str]:
    """Targets of the Markdown links of a file that are not URLs or in-page anchors."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_short_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text


def test_every_relative_link_of_readme_changelog_and_docs_exists():
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for path in files:
        for target in relative_links(path):
            file = path.parent / target.split("#")[0]
            if not file.exists() and file != GENERATED:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken
    assert len(relative_links(ROOT / "README.md")) >= 10  # the check has something to check


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in text


def test_api_reference_lists_every_module():
    """The generated API page covers what pkgutil finds, the command line excepted."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    found = {"tokenweight"} | {
        m.name for m in pkgutil.walk_packages(tokenweight.__path__, "tokenweight.")
    }
    wanted = {n for n in found if not n.startswith(("tokenweight.commands", "tokenweight.cli"))} - {
        "tokenweight.__main__"
    }
    assert set(hooks.module_names(ROOT / "src")) == wanted
    page = hooks.api_markdown()
    assert all(f"::: {name}\n" in page for name in wanted)


def test_eval_help_example_names_the_folders_the_demo_writes(capsys):
    """The model folders in ``eval --help`` are ones ``make demo`` writes: its work_dir,
    ``runs/``, and the folder name of each default scheme."""
    from tokenweight.cli import main
    from tokenweight.workflows.pipeline import PipelineConfig
    from tokenweight.workflows.steps import run_dir_name

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    defaults = PipelineConfig()
    named = re.findall(r"=(runs/\S+?)\"?(?:\s|$)", text)
    expected = [f"{defaults.work_dir}/runs/{run_dir_name(s)}" for s in defaults.schemes]
    assert named == expected, named


def test_the_layout_section_of_developing_names_every_module():
    """Every module of the package is named in docs/DEVELOPING.md's layout section: by its
    dotted name (``tokenweight.infra.files``), by its file name in its package's row, by
    the commands' row, or (a layer's ``__init__``, ``__main__``) by its path in the layer
    table."""
    text = (ROOT / "docs" / "DEVELOPING.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout") : text.index("Outside the package:")]
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| \w[\w ]* \| `([\w.*/]+)` \|.*$", section, re.M)
    }
    assert len(rows) > 30, "the module table was not found"
    src = Path(tokenweight.__file__).resolve().parent
    missing = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name, package = ".".join(parts), ".".join(parts[:-1])
        named = (
            f"`{name}`" in section
            or f"{package}.*" in rows
            or (package in rows and f"`{path.name}`" in rows[package])
            or (path.name == "__init__.py" and f"`{rel.parent.as_posix()}/`" in section)
            or f"`{rel.as_posix()}`" in section
            or (f"`{path.name}`" in section and path.name == "__main__.py")
        )
        if not named:
            missing.append(name)
    assert missing == [], missing
