"""Paired differences with bootstrap confidence intervals (the statistics of a study).

A study evaluates every run on the same held-out sequences, and repeats every run with
the same seeds. For one metric (e.g. mean NLL of the targets in one position bucket) each
run ``r`` gives, per seed ``k`` and held-out sequence ``i``, the *sum* of the NLL over the
chosen targets, ``S[r][k, i]``, and the chosen targets are the same for every run and seed,
``C[i]`` of them. The metric of a run is the pooled mean ``sum S / (seeds * sum C)``, and
the paired difference against the baseline uses the same tokens and seeds:

    diff = sum_k,i (S_run - S_base)[k, i] / (seeds * sum_i C[i])

The interval resamples seeds and held-out sequences independently, with replacement
(a two-way bootstrap), recomputing the pooled difference each time; the ``confidence``
interval is the percentile range. A difference whose interval contains 0 is *inside the
noise* of this study.

Each difference also carries a two-sided p-value for "no difference" from the bootstrap's
standard error (normal approximation, ``z = diff / se``). A study reads many differences at
once (metrics x runs); :func:`holm` adjusts their p-values for that (Holm's step-down
method: the chance of *any* false "better" or "worse" among them stays below the level,
whatever their dependence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tokenweight.infra.errors import TokenWeightError

__all__ = ["PairedDiff", "holm", "normal_p_value", "paired_difference"]


@dataclass(frozen=True)
class PairedDiff:
    """Pooled means of baseline and run, their difference (run - baseline) and its
    interval; ``targets`` counts the chosen targets of one evaluation pass; ``se`` is the
    bootstrap standard error of ``diff`` and ``p`` the two-sided p-value of no difference
    (normal approximation)."""

    baseline: float
    run: float
    diff: float
    low: float
    high: float
    targets: int
    se: float = float("nan")
    p: float = float("nan")

    @property
    def inside_noise(self) -> bool:
        return self.low <= 0.0 <= self.high

    def verdict(self, lower_is_better: bool = True) -> str:
        if self.targets == 0:
            return "no targets"
        if self.inside_noise:
            return "inside the noise"
        better = (self.diff < 0) == lower_is_better
        return "better than baseline" if better else "worse than baseline"

    def to_dict(self) -> dict[str, float | int | bool | str]:
        return {
            "baseline": self.baseline,
            "run": self.run,
            "diff": self.diff,
            "low": self.low,
            "high": self.high,
            "targets": self.targets,
            "se": self.se,
            "p": self.p,
            "inside_noise": self.inside_noise,
            "verdict": self.verdict(),
        }


def paired_difference(
    run: np.ndarray,
    base: np.ndarray,
    counts: np.ndarray,
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDiff:
    """Pooled paired difference of ``run`` against ``base`` with a two-way bootstrap.

    ``run``, ``base``: ``(seeds, sequences)`` sums of the metric over the chosen targets;
    ``counts``: ``(sequences,)`` chosen targets per sequence (the same for both).
    """
    run = np.asarray(run, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if run.shape != base.shape or run.ndim != 2 or counts.shape != (run.shape[1],):
        raise TokenWeightError(
            f"paired_difference: run {run.shape} and base {base.shape} must be (seeds, "
            f"sequences) and counts {counts.shape} (sequences,)"
        )
    if not 0 < confidence < 1:
        raise TokenWeightError(f"confidence must be in (0, 1), got {confidence}")
    seeds, seqs = run.shape
    total = counts.sum()
    if total == 0:
        nan = float("nan")
        return PairedDiff(nan, nan, nan, nan, nan, 0)
    d = run - base
    mean = float(d.sum() / (seeds * total))
    rng = np.random.default_rng(seed)
    ks = rng.integers(0, seeds, size=(samples, seeds))
    js = rng.integers(0, seqs, size=(samples, seqs))
    # sum over the resampled seeds of the per-seed sums over the resampled sequences
    per_seed = np.take_along_axis(d.T[None, :, :], js[:, :, None], axis=1).sum(axis=1)
    numer = np.take_along_axis(per_seed, ks, axis=1).sum(axis=1)
    denom = seeds * counts[js].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = numer / denom
    boot = boot[np.isfinite(boot)]
    alpha = (1 - confidence) / 2
    low, high = (float(np.quantile(boot, q)) for q in (alpha, 1 - alpha))
    se = float(boot.std(ddof=1)) if boot.size > 1 else float("nan")
    return PairedDiff(
        baseline=float(base.sum() / (seeds * total)),
        run=float(run.sum() / (seeds * total)),
        diff=mean,
        low=low,
        high=high,
        targets=int(total),
        se=se,
        p=normal_p_value(mean, se),
    )


def normal_p_value(diff: float, se: float) -> float:
    """Two-sided p-value of ``diff`` under "no difference" with standard error ``se``
    (normal approximation): ``erfc(|diff / se| / sqrt 2)``. A zero ``se`` gives 0 for a
    nonzero ``diff`` (every resample agrees) and 1 for a zero one."""
    if not (math.isfinite(diff) and math.isfinite(se)):
        return float("nan")
    if se == 0:
        return 0.0 if diff != 0 else 1.0
    return math.erfc(abs(diff / se) / math.sqrt(2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (NaN entries stay NaN and do not count).

    With ``m`` p-values sorted ascending, the ``k``-th (from 0) is multiplied by ``m - k``,
    a running maximum keeps the order, and values are capped at 1. Rejecting where the
    adjusted value is below ``alpha`` keeps the family-wise error rate at ``alpha``.
    """
    ps = [float(p) for p in p_values]
    order = sorted((i for i, p in enumerate(ps) if math.isfinite(p)), key=lambda i: ps[i])
    m = len(order)
    out = [float("nan")] * len(ps)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * ps[i]))
        out[i] = running
    return out
