"""Whole jobs built on the layers below: the pipeline (``tokenweight demo``), the study,
selection, synthetic data, token inspection, and the named steps they are made of."""

from types import ModuleType

from tokenweight.infra import submodule_on_first_use


def __getattr__(name: str) -> ModuleType:
    return submodule_on_first_use(__name__, name)
