"""tokenweight: token-weighted loss for long-context language model training.

The data flow is one way: text -> tokens -> sequences -> scores -> weights -> loss ->
checkpoint -> evaluation. The pure core lives in :mod:`tokenweight.weighting` (scores to
weights) and :mod:`tokenweight.losses` (memory-flat per-token NLL); everything else is a
thin adapter around it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tokenweight.constants import IGNORE_INDEX
from tokenweight.errors import TokenWeightError
from tokenweight.weighting import Scheme, compute_weights, weighted_nll_loss

try:
    __version__ = version("tokenweight")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

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


def __getattr__(name: str) -> object:
    # bring-your-own-trainer helpers load transformers on first use only
    if name in ("make_compute_loss_func", "token_weighted_loss"):
        from tokenweight import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
