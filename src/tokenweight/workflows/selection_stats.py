"""Long-range statistics of scored sequences and the choice of units to keep (pure numpy).

Per target ``t`` the *gain* is ``g = s - l`` (short-context minus long-context NLL,
nats). Statistics over the valid targets of a sequence (or of all sequences of a
document):

- ``key_share``: share of *key tokens* as in LongPPL, ``g > 2`` and ``l < 2``;
- ``mean_gain``: mean positive gain, ``mean(max(g, 0))``;
- gain by distance: mean ``g`` of the targets in each position bucket
  ``[k * bucket, (k + 1) * bucket)`` (the context a target has in the long pass).

:func:`target_stats` sums them per row, :func:`aggregate` per unit (row or document),
:func:`choose` picks the units to keep. ``tokenweight select``
(:func:`tokenweight.workflows.selection.select_dataset`) applies them to a scored dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenweight.evaluation.metrics import LONGPPL_ALPHA, LONGPPL_BETA, is_key_token
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "KEY_GAIN",
    "KEY_LONG",
    "STATISTICS",
    "TargetStats",
    "aggregate",
    "check_fractions",
    "choose",
    "target_stats",
]

# LongPPL's thresholds on s - l and on l (nats), defined in tokenweight.evaluation.metrics
KEY_GAIN = LONGPPL_ALPHA
KEY_LONG = LONGPPL_BETA
STATISTICS = ("key_share", "mean_gain")


@dataclass
class TargetStats:
    """Per-row sums over valid targets; ``(rows,)`` arrays except ``bucket_*``
    ``(rows, buckets)``."""

    targets: np.ndarray
    key: np.ndarray
    positive_gain: np.ndarray
    bucket_targets: np.ndarray
    bucket_gain: np.ndarray


def target_stats(
    short_nll: np.ndarray,
    long_nll: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    bucket: int,
) -> TargetStats:
    """Sums of the key-token, positive-gain and bucketed-gain statistics per row.

    ``short_nll``, ``long_nll``: ``(rows, N - 1)`` nats, column ``j`` is target ``j + 1``;
    ``mask``: ``(rows, N)`` attention mask (1 = real token) or ``None``; ``bucket``: width
    of the position buckets in tokens (target ``t`` falls in bucket ``t // bucket``).
    """
    s = np.asarray(short_nll, dtype=np.float64)
    lo = np.asarray(long_nll, dtype=np.float64)
    if s.shape != lo.shape or s.ndim != 2:
        raise TokenWeightError(f"short_nll {s.shape} and long_nll {lo.shape} must match")
    if bucket < 1:
        raise TokenWeightError(f"bucket must be at least 1 token, got {bucket}")
    valid = np.ones_like(s, dtype=bool) if mask is None else np.asarray(mask)[:, 1:] != 0
    g = np.where(valid, s - lo, 0.0)
    key = valid & is_key_token(lo, s)
    t = np.arange(1, s.shape[1] + 1)
    nb = int(t[-1] // bucket) + 1 if t.size else 1
    onehot = (t[:, None] // bucket) == np.arange(nb)[None, :]  # (N - 1, buckets)
    return TargetStats(
        targets=valid.sum(axis=1),
        key=key.sum(axis=1),
        positive_gain=np.clip(g, 0, None).sum(axis=1),
        bucket_targets=valid.astype(np.float64) @ onehot,
        bucket_gain=g @ onehot,
    )


def aggregate(stats: TargetStats, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-unit statistics: rows (``groups=None``) or groups of rows (documents).

    Returns ``unit`` (row index or group id, sorted), ``rows`` (rows per unit),
    ``targets``, ``key_share``, ``mean_gain`` and ``bucket_gain`` (``(units, buckets)``,
    NaN where a unit has no target in a bucket). Shares are over targets, so a document's
    value is its token-weighted mean over its sequences.
    """
    n = len(stats.targets)
    if groups is None:
        units, inverse = np.arange(n), np.arange(n)
    else:
        units, inverse = np.unique(np.asarray(groups), return_inverse=True)

    def total(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(units), *x.shape[1:]))
        np.add.at(out, inverse, x)
        return out

    targets = total(stats.targets.astype(np.float64))
    bt = total(stats.bucket_targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.maximum(targets, 1)
        return {
            "unit": units,
            "rows": np.bincount(inverse, minlength=len(units)),
            "targets": targets.astype(np.int64),
            "key_share": total(stats.key.astype(np.float64)) / denom,
            "mean_gain": total(stats.positive_gain) / denom,
            "bucket_gain": np.where(
                bt > 0, total(stats.bucket_gain) / np.where(bt > 0, bt, 1), np.nan
            ),
        }


def choose(
    values: np.ndarray,
    *,
    top: float | None = None,
    threshold: float | None = None,
    keep_short: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Which units to keep: ``(selected, extra)`` boolean arrays over ``values``.

    ``selected``: the ``ceil(top * n)`` highest values (ties: earlier unit first) or those
    ``>= threshold`` (exactly one of the two); ``extra``: a random ``keep_short`` fraction
    (rounded half up) of the others, kept so the result still holds short-range data.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    check_fractions(top, threshold, keep_short)
    selected = np.zeros(n, dtype=bool)
    if top is not None:
        order = np.argsort(-values, kind="stable")
        selected[order[: int(np.ceil(top * n - 1e-9))]] = True
    else:
        selected = values >= threshold
    extra = np.zeros(n, dtype=bool)
    rest = np.nonzero(~selected)[0]
    k = int(np.floor(keep_short * len(rest) + 0.5))
    if k:
        extra[np.random.default_rng(seed).choice(rest, size=k, replace=False)] = True
    return selected, extra


def check_fractions(top: float | None, threshold: float | None, keep_short: float) -> None:
    """``--top`` or ``--threshold`` (one of them), ``--keep-short``: in range."""
    if (top is None) == (threshold is None):
        raise TokenWeightError("choose one of --top FRACTION or --threshold VALUE")
    if top is not None and not 0 < top <= 1:
        raise TokenWeightError(f"--top must be a fraction in (0, 1], got {top}")
    if not 0 <= keep_short <= 1:
        raise TokenWeightError(f"--keep-short must be a fraction in [0, 1], got {keep_short}")
