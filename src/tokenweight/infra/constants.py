"""Constants shared across the package (one definition each)."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

#: Label value of a target that has no loss, no gradient and no weight (padding, targets a
#: window does not own). The value PyTorch's ``cross_entropy`` and Hugging Face use.
IGNORE_INDEX = -100
