"""Position-bucket perplexity and LongPPL against hand computations on fixed NLL values."""

from __future__ import annotations

import math

import pytest
import torch

from tokenweight import TokenWeightError
from tokenweight.evaluation.metrics import (
    key_token_mask,
    longppl,
    position_bucket_nll,
    position_curve,
)

# Two sequences of N = 8 tokens -> 7 targets each (column j = target position j + 1).
NLL = [
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    [0.5, 0.5, 1.5, 2.5, 0.25, 4.0, 9.0],
]
MASK = [
    [True, True, True, True, True, True, True],
    [True, True, True, False, True, True, False],
]


def _hand_buckets(nll, mask, size):
    """Pure-Python reference: bucket k holds targets at positions k*size .. (k+1)*size-1."""
    sums, counts = {}, {}
    for row, row_mask in zip(nll, mask):
        for j, (x, ok) in enumerate(zip(row, row_mask)):
            position = j + 1
            k = position // size
            sums.setdefault(k, 0.0)
            counts.setdefault(k, 0)
            if ok:
                sums[k] += x
                counts[k] += 1
    return sums, counts


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8, 100])
def test_position_buckets_equal_hand_computation(size):
    stats = position_bucket_nll(torch.tensor(NLL), torch.tensor(MASK), bucket_size=size)
    sums, counts = _hand_buckets(NLL, MASK, size)
    # every bucket from 0 up to the last target's, empty ones included
    assert [s.start for s in stats] == [k * size for k in range(max(sums) + 1)]
    for s in stats:
        k = s.start // size
        assert s.end == s.start + size
        assert s.tokens == counts.get(k, 0)
        if counts.get(k, 0):
            assert s.mean_nll == pytest.approx(sums[k] / counts[k], abs=1e-12)
            assert s.perplexity == pytest.approx(math.exp(sums[k] / counts[k]))
        else:
            assert math.isnan(s.mean_nll)


def test_bucket_values_written_out():
    # size 4: bucket [0,4) = positions 1..3 -> columns 0..2; [4,8) = columns 3..6.
    stats = position_bucket_nll(torch.tensor(NLL), torch.tensor(MASK), bucket_size=4)
    assert len(stats) == 2
    assert stats[0].tokens == 6
    assert stats[0].mean_nll == pytest.approx((1 + 2 + 3 + 0.5 + 0.5 + 1.5) / 6)
    assert stats[1].tokens == 6  # (4 from seq 0) + (0.25, 4.0 from seq 1)
    assert stats[1].mean_nll == pytest.approx((4 + 5 + 6 + 7 + 0.25 + 4.0) / 6)


def test_masked_values_are_ignored_even_if_huge_or_nan():
    nll = torch.tensor(NLL)
    nll[1, 3] = float("nan")
    nll[1, 6] = 1e9
    stats = position_bucket_nll(nll, torch.tensor(MASK), bucket_size=4)
    assert stats[1].mean_nll == pytest.approx((4 + 5 + 6 + 7 + 0.25 + 4.0) / 6)


def test_nan_in_valid_target_is_an_error():
    nll = torch.tensor(NLL)
    nll[0, 2] = float("inf")
    with pytest.raises(TokenWeightError, match="NaN or infinite"):
        position_bucket_nll(nll, bucket_size=2)


@pytest.mark.parametrize("size", [0, -3, 1.5, True])
def test_bad_bucket_size(size):
    with pytest.raises(TokenWeightError, match="bucket_size"):
        position_bucket_nll(torch.tensor(NLL), bucket_size=size)


def test_mask_shape_mismatch():
    with pytest.raises(TokenWeightError, match="mask"):
        position_bucket_nll(torch.tensor(NLL), torch.ones(2, 6, dtype=torch.bool), bucket_size=2)


def test_position_curve_covers_all_targets_once():
    nll = torch.arange(1, 101, dtype=torch.float32).reshape(1, 100)  # targets 1..100
    centers, means = position_curve(nll, points=10)
    assert len(centers) == len(means)
    assert centers == sorted(centers)
    # every bucket's mean is the mean of its positions since NLL == position here
    for c, m in zip(centers, means):
        assert m == pytest.approx(c)


LONG = [
    [0.5, 1.0, 1.9, 2.5, 0.1, 3.0],
    [1.5, 0.2, 0.0, 1.99, 4.0, 0.3],
]
SHORT = [
    [2.6, 3.5, 4.0, 6.0, 2.0, 5.1],
    [3.6, 2.2, 2.0, 4.5, 7.0, 0.3],
]


def _t(values):
    # float64, so that the tensor code and the Python reference round alike at the
    # thresholds (2.2 - 0.2 is exactly 2.0 in float64 but not in float32)
    return torch.tensor(values, dtype=torch.float64)


def _hand_keys(long, short, mask, alpha, beta):
    return [
        [ok and (s - x) > alpha and x < beta for x, s, ok in zip(lr, sr, mr)]
        for lr, sr, mr in zip(long, short, mask)
    ]


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 2.0), (1.0, 3.0), (0.0, 100.0), (5.0, 2.0)])
def test_key_tokens_equal_hand_computation(alpha, beta):
    mask = [[True] * 6, [True, True, True, True, False, True]]
    got = key_token_mask(_t(LONG), _t(SHORT), torch.tensor(mask), alpha=alpha, beta=beta)
    assert got.tolist() == _hand_keys(LONG, SHORT, mask, alpha, beta)


def test_key_tokens_default_thresholds_written_out():
    # s - l > 2 and l < 2, strictly: (0.5, 2.6) gap 2.1 yes; (1.0, 3.5) yes; (1.9, 4.0)
    # gap 2.1 yes; (2.5, 6.0) l too high; (0.1, 2.0) gap 1.9 no; (3.0, 5.1) l too high;
    # (1.5, 3.6) gap 2.1 yes; (0.2, 2.2) gap exactly 2.0 no; (0.0, 2.0) gap 2.0 no;
    # (1.99, 4.5) yes; (4.0, 7.0) no; (0.3, 0.3) no.
    got = key_token_mask(_t(LONG), _t(SHORT))
    assert got.tolist() == [
        [True, True, True, False, False, False],
        [True, False, False, True, False, False],
    ]


def test_key_token_thresholds_are_defined_once_for_eval_select_and_study():
    """The rule behind ``eval``'s LongPPL, ``select``'s key share and ``study``'s key-token
    metric is one function with one pair of thresholds: the paper's 2 and 2 nats,
    everywhere, on tensors and on numpy arrays."""
    import argparse

    import numpy as np

    from tokenweight.commands.evaluate import add_arguments
    from tokenweight.evaluation import EvalConfig
    from tokenweight.evaluation.metrics import LONGPPL_ALPHA, LONGPPL_BETA, is_key_token
    from tokenweight.workflows import selection

    assert (LONGPPL_ALPHA, LONGPPL_BETA) == (2.0, 2.0)
    config = EvalConfig()
    assert (config.longppl_alpha, config.longppl_beta) == (LONGPPL_ALPHA, LONGPPL_BETA)
    assert (selection.KEY_GAIN, selection.KEY_LONG) == (LONGPPL_ALPHA, LONGPPL_BETA)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["model", "--out", "o"])
    assert (args.longppl_alpha, args.longppl_beta) == (LONGPPL_ALPHA, LONGPPL_BETA)

    hand = _hand_keys(LONG, SHORT, [[True] * 6] * 2, 2.0, 2.0)
    assert is_key_token(_t(LONG), _t(SHORT)).tolist() == hand
    assert is_key_token(np.array(LONG), np.array(SHORT)).tolist() == hand
    stats = selection.target_stats(np.array(SHORT), np.array(LONG), bucket=4)
    assert stats.key.tolist() == [sum(row) for row in hand]


def test_longppl_equals_hand_computation():
    mask = [[True] * 6, [True, True, True, True, False, True]]
    keys = _hand_keys(LONG, SHORT, mask, 2.0, 2.0)
    evaluated = [[0.7, 1.1, 2.2, 0.4, 3.3, 0.9], [1.0, 2.0, 3.0, 0.6, 50.0, 0.8]]
    result = longppl(_t(evaluated), torch.tensor(keys), torch.tensor(mask))
    key_values = [x for row, kr in zip(evaluated, keys) for x, k in zip(row, kr) if k]
    valid_values = [x for row, mr in zip(evaluated, mask) for x, ok in zip(row, mr) if ok]
    assert result.key_tokens == len(key_values) == 5
    assert result.tokens == len(valid_values) == 11
    assert result.longppl == pytest.approx(math.exp(sum(key_values) / len(key_values)))
    assert result.perplexity == pytest.approx(math.exp(sum(valid_values) / len(valid_values)))
    d = result.as_dict()
    assert d["key_tokens"] == 5 and d["key_fraction"] == pytest.approx(5 / 11)


def test_longppl_without_key_tokens_is_nan_and_null_in_json():
    result = longppl(_t(LONG), torch.zeros(2, 6, dtype=torch.bool))
    assert result.key_tokens == 0
    assert math.isnan(result.longppl)
    assert result.as_dict()["longppl"] is None
    assert result.perplexity == pytest.approx(math.exp(sum(map(sum, LONG)) / 12))


def test_key_mask_outside_valid_targets_is_ignored():
    keys = torch.ones(2, 6, dtype=torch.bool)
    mask = torch.tensor([[True] * 6, [False] * 6])
    result = longppl(_t(LONG), keys, mask)
    assert result.key_tokens == 6
    assert result.longppl == pytest.approx(math.exp(sum(LONG[0]) / 6))


def test_long_short_shape_mismatch():
    with pytest.raises(TokenWeightError, match="shape"):
        key_token_mask(torch.zeros(2, 6), torch.zeros(2, 5))


def test_bad_alpha():
    with pytest.raises(TokenWeightError, match="alpha"):
        key_token_mask(torch.zeros(1, 3), torch.zeros(1, 3), alpha=float("nan"))
