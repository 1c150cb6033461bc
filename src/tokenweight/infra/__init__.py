"""Infrastructure: errors, constants, files and folders, config files, schemas and model
loading — what every other layer builds on. Imports nothing from the layers above."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def submodule_on_first_use(package: str, name: str) -> ModuleType:
    """``package.name`` imported when first read as an attribute (a layer's
    ``__getattr__``), so ``tokenweight.infra.files`` works after ``import tokenweight``;
    ``AttributeError`` when there is no such submodule."""
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def __getattr__(name: str) -> ModuleType:
    return submodule_on_first_use(__name__, name)
