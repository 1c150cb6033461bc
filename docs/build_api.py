"""Build the API reference from the docstrings with pdoc: ``make docs`` (offline).

Usage: ``python docs/build_api.py OUT_DIR``. Every module of the ``tokenweight`` package
gets a page; names that packages load lazily (``tokenweight.Scheme``, ...) are resolved
first so that pdoc documents them where users import them from.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from pathlib import Path


def modules() -> list[str]:
    """``tokenweight`` and all its submodules (``__main__`` excepted), imported."""
    import tokenweight

    names = ["tokenweight"]
    names += [
        m.name
        for m in pkgutil.walk_packages(tokenweight.__path__, "tokenweight.")
        if not m.name.endswith("__main__")
    ]
    for name in names:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            if attr not in vars(module):
                setattr(module, attr, getattr(module, attr))
    return names


def main(out: str) -> int:
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="restructuredtext", footer_text="tokenweight API")
    with warnings.catch_warnings():
        # a package without __all__ already brings its submodules along
        warnings.filterwarnings("ignore", message="The module specification")
        pdoc.pdoc(*modules(), output_directory=Path(out))
    print(f"API reference: {Path(out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/api"))
