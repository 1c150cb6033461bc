"""Training: config, the token-weighted ``Trainer``, collator, callbacks, entry point.

Heavy modules (transformers) load on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Config",
    "LossParts",
    "TokenWeightCollator",
    "TokenWeightTrainer",
    "TrainResult",
    "count_valid_targets",
    "load_config",
    "make_compute_loss_func",
    "to_training_arguments",
    "token_weighted_loss",
    "train",
]

_WHERE = {
    "Config": "config",
    "load_config": "config",
    "to_training_arguments": "config",
    "TokenWeightCollator": "collator",
    "LossParts": "loss",
    "token_weighted_loss": "loss",
    "make_compute_loss_func": "loss_func",
    "TokenWeightTrainer": "trainer",
    "count_valid_targets": "trainer",
    "TrainResult": "run",
    "train": "run",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
