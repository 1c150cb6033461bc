"""The method as tensor functions: weighting (scores to weights), scorers (short-context
NLL), losses (memory-flat per-token NLL) and packed-batch bookkeeping. Imports only
:mod:`tokenweight.infra`."""

from types import ModuleType

from tokenweight.infra import submodule_on_first_use


def __getattr__(name: str) -> ModuleType:
    return submodule_on_first_use(__name__, name)
