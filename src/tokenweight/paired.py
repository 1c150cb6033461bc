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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenweight.errors import TokenWeightError

__all__ = ["PairedDiff", "paired_difference"]


@dataclass(frozen=True)
class PairedDiff:
    """Pooled means of baseline and run, their difference (run - baseline) and its
    interval; ``targets`` counts the chosen targets of one evaluation pass."""

    baseline: float
    run: float
    diff: float
    low: float
    high: float
    targets: int

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
    return PairedDiff(
        baseline=float(base.sum() / (seeds * total)),
        run=float(run.sum() / (seeds * total)),
        diff=mean,
        low=low,
        high=high,
        targets=int(total),
    )
