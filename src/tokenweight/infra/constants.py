"""Constants shared across the package (one definition each)."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "LONGPPL_ALPHA", "LONGPPL_BETA"]

#: Label value of a target that has no loss, no gradient and no weight (padding, targets a
#: window does not own). The value PyTorch's ``cross_entropy`` and Hugging Face use.
IGNORE_INDEX = -100

#: LongPPL's key-token thresholds (nats): a key token gains more than ``LONGPPL_ALPHA``
#: from the long context and its long-context NLL is below ``LONGPPL_BETA`` (the paper's 2
#: and 2; :func:`tokenweight.evaluation.metrics.is_key_token` applies them).
LONGPPL_ALPHA = 2.0
LONGPPL_BETA = 2.0
