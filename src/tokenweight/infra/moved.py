"""Old import paths of modules that moved into the layer folders, kept working.

``import tokenweight.weighting`` (or ``from tokenweight.losses.chunked import ...``) still
works: a finder installed by ``import tokenweight`` maps the old dotted name to the new one
(:data:`MOVED`), imports the new module and hands back that very module object, with a
``FutureWarning`` naming the new path. The old name and the new name are the same module,
so attributes set through one are seen through the other.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

# old dotted path -> new dotted path (a package entry also covers its submodules)
MOVED: dict[str, str] = {
    "tokenweight.config_files": "tokenweight.infra.config_files",
    "tokenweight.constants": "tokenweight.infra.constants",
    "tokenweight.errors": "tokenweight.infra.errors",
    "tokenweight.files": "tokenweight.infra.files",
    "tokenweight.folder_lock": "tokenweight.infra.folder_lock",
    "tokenweight.models": "tokenweight.infra.models",
    "tokenweight.schema": "tokenweight.infra.schema",
    "tokenweight.losses": "tokenweight.core.losses",
    "tokenweight.packed_batches": "tokenweight.core.packed_batches",
    "tokenweight.reference_scorer": "tokenweight.core.reference_scorer",
    "tokenweight.scorer_kinds": "tokenweight.core.scorer_kinds",
    "tokenweight.scoring": "tokenweight.core.scoring",
    "tokenweight.weighting": "tokenweight.core.weighting",
    "tokenweight.corpora": "tokenweight.data.corpora",
    "tokenweight.paired": "tokenweight.evaluation.paired",
    "tokenweight.memory": "tokenweight.training.memory",
    "tokenweight.inspection": "tokenweight.workflows.inspection",
    "tokenweight.pipeline": "tokenweight.workflows.pipeline",
    "tokenweight.pipeline_report": "tokenweight.workflows.pipeline_report",
    "tokenweight.selection": "tokenweight.workflows.selection",
    "tokenweight.steps": "tokenweight.workflows.steps",
    "tokenweight.study": "tokenweight.workflows.study",
    "tokenweight.study_cost": "tokenweight.workflows.study.cost",
    "tokenweight.study_verdict": "tokenweight.workflows.study.verdict",
    "tokenweight.synth": "tokenweight.workflows.synth",
}


def new_name(old: str) -> str | None:
    """The current dotted path of ``old`` (a moved module or a submodule of a moved
    package), or ``None`` when ``old`` did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix) :]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"`{self.old}` moved to `{self.new}`; import it from there "
            "(the old path will be removed in a later release)",
            FutureWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias spec on the shared module: give it back
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(fullname, new))


def install() -> None:
    """Put the finder of old paths on ``sys.meta_path`` (once)."""
    # first on the path: the standard finder would otherwise load a second copy of a
    # submodule of a moved package (``tokenweight.losses.chunked``) from the new folder
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
