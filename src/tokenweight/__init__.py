"""tokenweight: token-weighted loss for long-context language model training.

The data flow is one way: text -> tokens -> sequences -> scores -> weights -> loss ->
checkpoint -> evaluation. The pure core lives in :mod:`tokenweight.core.weighting` (scores to
weights) and :mod:`tokenweight.core.losses` (memory-flat per-token NLL); everything else is a
thin adapter around it.

``import tokenweight`` is light: the names below and every submodule
(``tokenweight.training``, ...) load on first use, so torch is imported only when needed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from tokenweight.infra import submodule_on_first_use
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.moved import install as _install_moved_paths

_install_moved_paths()

if TYPE_CHECKING:
    from tokenweight.core.weighting import Scheme, compute_weights, weighted_nll_loss
    from tokenweight.training import make_compute_loss_func, token_weighted_loss

# public name -> the module defining it (imported on first use)
_LAZY: dict[str, str] = {
    "Scheme": "tokenweight.core.weighting",
    "compute_weights": "tokenweight.core.weighting",
    "weighted_nll_loss": "tokenweight.core.weighting",
    # bring-your-own-trainer helpers (load transformers on first use)
    "make_compute_loss_func": "tokenweight.training",
    "token_weighted_loss": "tokenweight.training",
}

__all__ = [
    "IGNORE_INDEX",
    "Scheme",
    "TokenWeightError",
    "__version__",
    "compute_weights",
    "make_compute_loss_func",
    "token_weighted_loss",
    "weighted_nll_loss",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenweight")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "__version__":
        value = _version()
    else:
        value = submodule_on_first_use(__name__, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})
