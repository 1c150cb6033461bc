"""Paired bootstrap differences on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tokenweight.evaluation.paired import paired_difference
from tokenweight.infra.errors import TokenWeightError


def test_a_constant_per_token_shift_is_exact_with_a_zero_width_interval():
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 50, size=12)
    base = rng.normal(3.0, 1.0, size=(3, 12)) * counts
    run = base - 0.25 * counts  # every target 0.25 nats better, every seed and sequence
    r = paired_difference(run, base, counts)
    assert r.diff == pytest.approx(-0.25) and r.low == pytest.approx(-0.25)
    assert r.high == pytest.approx(-0.25) and r.targets == counts.sum()
    assert r.baseline == pytest.approx(base.sum() / (3 * counts.sum()))
    assert r.verdict() == "better than baseline" and not r.inside_noise


def test_two_seeds_one_sequence_gives_the_exact_bootstrap_distribution():
    # differences 1 and 3: resampled seed pairs average 1 (1/4), 2 (1/2) or 3 (1/4)
    r = paired_difference(np.array([[1.0], [3.0]]), np.zeros((2, 1)), np.array([1]))
    assert r.diff == 2.0 and (r.low, r.high) == (1.0, 3.0)


def test_opposite_seeds_are_inside_the_noise():
    counts = np.full(10, 4)
    base = np.full((2, 10), 8.0)
    run = base + np.array([[1.0], [-1.0]]) * counts
    r = paired_difference(run, base, counts)
    assert r.diff == pytest.approx(0.0) and r.low < 0 < r.high
    assert r.inside_noise and r.verdict() == "inside the noise"


def test_interval_matches_the_normal_approximation_for_many_sequences():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, size=(1, 900))
    r = paired_difference(d, np.zeros_like(d), np.ones(900), samples=4000)
    half = 1.96 * d.std() / np.sqrt(900)
    assert r.diff == pytest.approx(d.mean())
    assert r.low == pytest.approx(d.mean() - half, abs=0.2 * half)
    assert r.high == pytest.approx(d.mean() + half, abs=0.2 * half)


def test_bad_shapes_and_empty_metrics():
    with pytest.raises(TokenWeightError):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 4)), np.ones(3))
    r = paired_difference(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))
    assert r.targets == 0 and r.verdict() == "no targets"
