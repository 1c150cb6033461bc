"""Weighting core: presets against hand computations, properties, parsing, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenweight import TokenWeightError
from tokenweight.core.weighting import Scheme, Transform, compute_weights, weighted_nll_loss

LONG = torch.tensor([[0.5, 3.0, 1.2, 0.1, 6.0, 2.0, 0.8, 4.1]])
SHORT = torch.tensor([[0.6, 7.5, 1.1, 0.1, 6.2, 5.5, 0.7, 4.0]])


def _close(a: torch.Tensor, b: list[float] | torch.Tensor, tol: float = 1e-5) -> None:
    b = torch.as_tensor(b, dtype=torch.float32)
    assert torch.allclose(a, b.reshape(a.shape), atol=tol, rtol=tol), (a, b)


# ----------------------------------------------------------------- presets by hand
def test_uniform_is_ones_and_zero_on_padding():
    mask = torch.tensor([[True] * 6 + [False] * 2])
    w = compute_weights(LONG, SHORT, Scheme.uniform(), mask=mask)
    _close(w, [1, 1, 1, 1, 1, 1, 0, 0])
    assert w.dtype == torch.float32


def test_dense_by_hand():
    lam = 0.75
    d = [abs(a - b) for a, b in zip(LONG[0].tolist(), SHORT[0].tolist())]
    n, total = len(d), sum(d)
    expected = [lam + (1 - lam) * n * x / total for x in d]
    _close(compute_weights(LONG, SHORT, Scheme.dense(lam)), expected)


def test_sparse_by_hand_picks_largest_abs_differences():
    # |d| = .1 4.5 .1 0 .2 3.5 .1 .1 -> top floor(.25 * 8) = 2 are targets 1 and 5
    w = compute_weights(LONG, SHORT, Scheme.sparse(0.25))
    _close(w, [0, 4, 0, 0, 0, 4, 0, 0])


def test_longce_by_hand():
    gamma = 5.0
    expected = [min(math.exp(b - a), gamma) for a, b in zip(LONG[0].tolist(), SHORT[0].tolist())]
    _close(compute_weights(LONG, SHORT, Scheme.longce(gamma)), expected)


def test_ppmi_by_hand():
    c, kappa = 2.0, 0.25
    # PPMI: max(s - l - log c, 0): long context gained more than log 2 nats
    d = [max(b - a - math.log(c), 0.0) for a, b in zip(LONG[0].tolist(), SHORT[0].tolist())]
    top = sorted(range(8), key=lambda i: -d[i])[:2]
    expected = [4.0 if i in top else 0.0 for i in range(8)]
    _close(compute_weights(LONG, SHORT, Scheme.ppmi(c, kappa)), expected)


def test_npmi_by_hand_with_clear_winners():
    long = torch.tensor([[5.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    short = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    # NPMI: max(l - s - log c, 0): long context hurt; targets 0 and 2
    _close(compute_weights(long, short, Scheme.npmi(2.0, 0.25)), [4, 0, 4, 0, 0, 0, 0, 0])


def test_quotient_and_softmax_by_hand():
    scheme = Scheme("quotient", normalization="softmax")
    d = [(a + 1e-5) / (b + 1e-5) for a, b in zip(LONG[0].tolist(), SHORT[0].tolist())]
    z = sum(math.exp(x) for x in d)
    _close(compute_weights(LONG, SHORT, scheme), [8 * math.exp(x) / z for x in d])


def test_rho1_selects_top_excess_loss():
    w = compute_weights(LONG, SHORT, Scheme.rho1(0.25))
    # l - s = -.1 -4.5 .1 0 -.2 -3.5 .1 .1: the positive ties .1 at 2, 6, 7 -> pick 2 of 3
    assert w.sum().item() == pytest.approx(8.0)
    assert set(w[0].nonzero().flatten().tolist()) <= {2, 6, 7}
    assert int((w > 0).sum()) == 2


def test_all_zero_row_normalizes_to_uniform():
    x = torch.full((2, 5), 1.5)
    for scheme in (
        Scheme.dense(0.5),
        Scheme("difference", ("absolute",), normalization="l1"),
        Scheme("difference", ("absolute",), normalization="softmax"),
    ):
        _close(compute_weights(x, x, scheme), torch.ones(2, 5))


def test_weights_carry_no_gradient():
    long = LONG.clone().requires_grad_(True)
    w = compute_weights(long, SHORT, Scheme.dense(0.5))
    assert not w.requires_grad
    loss = weighted_nll_loss(long, w)
    loss.backward()
    _close(long.grad, w / w.numel())


def test_weighted_loss_mean_and_num_items():
    mask = torch.tensor([[True] * 6 + [False] * 2])
    long = LONG.clone()
    long[0, 6:] = 1e6  # garbage at padding must not leak
    w = torch.ones_like(long)
    expected = LONG[0, :6].mean()
    assert weighted_nll_loss(long, w, mask=mask).item() == pytest.approx(expected.item())
    assert weighted_nll_loss(long, w, mask=mask, num_items=12).item() == pytest.approx(
        LONG[0, :6].sum().item() / 12
    )
    assert weighted_nll_loss(long, w, mask=mask, num_items=torch.tensor(3)).item() == (
        pytest.approx(LONG[0, :6].sum().item() / 3)
    )


def test_invalid_positions_may_hold_nan():
    long = torch.tensor([[1.0, 2.0, float("nan")]])
    short = torch.tensor([[2.0, 1.0, float("inf")]])
    mask = torch.tensor([[True, True, False]])
    w = compute_weights(long, short, Scheme.dense(0.0), mask=mask)
    _close(w, [1, 1, 0])


def test_sparse_rows_without_valid_targets_are_zero():
    mask = torch.tensor([[False, False, False], [True, True, True]])
    w = compute_weights(torch.rand(2, 3), torch.rand(2, 3), Scheme.sparse(0.1), mask=mask)
    assert w[0].sum() == 0
    assert int((w[1] > 0).sum()) == 1  # floor(0.3) = 0 -> at least one


# ----------------------------------------------------------------- properties
PRESETS = st.one_of(
    st.just(Scheme.uniform()),
    st.floats(0, 1).map(Scheme.dense),
    st.floats(0.01, 1).map(Scheme.sparse),
    st.floats(0.5, 20).map(Scheme.longce),
    st.tuples(st.floats(0.1, 10), st.floats(0.01, 1)).map(lambda a: Scheme.ppmi(*a)),
    st.tuples(st.floats(0.1, 10), st.floats(0.01, 1)).map(lambda a: Scheme.npmi(*a)),
)


@st.composite
def nll_batches(draw):
    rows = draw(st.integers(1, 4))
    cols = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    long = torch.rand(rows, cols, generator=g) * 8
    short = torch.rand(rows, cols, generator=g) * 8
    if draw(st.booleans()):  # many exact ties
        short = torch.where(torch.rand(rows, cols, generator=g) < 0.5, long, short)
    lengths = torch.randint(0, cols + 1, (rows,), generator=g)
    mask = torch.arange(cols)[None, :] < lengths[:, None]
    return long, short, mask


@settings(max_examples=150, deadline=None)
@given(PRESETS, nll_batches())
def test_weights_finite_nonnegative_zero_on_invalid(scheme, batch):
    long, short, mask = batch
    w = compute_weights(long, short, scheme, mask=mask)
    assert w.dtype == torch.float32 and w.shape == long.shape
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w[~mask] == 0).all()


@settings(max_examples=150, deadline=None)
@given(PRESETS, nll_batches())
def test_normalized_schemes_average_one(scheme, batch):
    long, short, mask = batch
    if scheme.normalization is None and not scheme.is_uniform:
        return
    w = compute_weights(long, short, scheme, mask=mask)
    n = mask.sum(-1)
    for row in range(len(n)):
        if n[row] > 0:
            assert w[row].sum().item() == pytest.approx(float(n[row]), rel=1e-4)


@settings(max_examples=80, deadline=None)
@given(nll_batches(), st.sampled_from(["sparse", "dense", "ppmi", "npmi"]))
def test_kappa_one_and_lambda_one_give_ones(batch, kind):
    long, short, mask = batch
    scheme = {
        "sparse": Scheme.sparse(1.0),
        "dense": Scheme.dense(1.0),
        "ppmi": Scheme.ppmi(1.0, 1.0),
        "npmi": Scheme.npmi(3.0, 1.0),
    }[kind]
    w = compute_weights(long, short, scheme, mask=mask)
    _close(w, mask.float())


@settings(max_examples=100, deadline=None)
@given(PRESETS, nll_batches(), st.integers(1, 10))
def test_padding_never_changes_valid_weights(scheme, batch, extra):
    long, short, mask = batch
    g = torch.Generator().manual_seed(1)
    pad_l = torch.cat([long, torch.rand(long.shape[0], extra) * 100], dim=1)
    pad_s = torch.cat([short, torch.rand(long.shape[0], extra) * 100], dim=1)
    pad_m = torch.cat([mask, torch.zeros(long.shape[0], extra, dtype=torch.bool)], dim=1)
    w = compute_weights(long, short, scheme, mask=mask, generator=g)
    g.manual_seed(1)  # same tie-breaking stream: padding must not change the selection
    wp = compute_weights(pad_l, pad_s, scheme, mask=pad_m, generator=g)
    assert torch.allclose(wp[:, : long.shape[1]], w, atol=1e-5)
    assert (wp[:, long.shape[1] :] == 0).all()


@settings(max_examples=100, deadline=None)
@given(nll_batches(), st.floats(0.01, 1.0), st.integers(0, 1000))
def test_sparse_exact_count_and_reproducible(batch, kappa, seed):
    long, short, mask = batch
    scheme = Scheme.sparse(kappa)
    w1 = compute_weights(
        long, short, scheme, mask=mask, generator=torch.Generator().manual_seed(seed)
    )
    w2 = compute_weights(
        long, short, scheme, mask=mask, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(w1, w2)
    n = mask.sum(-1)
    expected = torch.where(n > 0, torch.clamp(torch.floor(n.double() * kappa), min=1), 0)
    assert torch.equal((w1 > 0).sum(-1), expected.long())
    # selected values are never smaller than unselected ones (same row, valid targets)
    d = (long - short).abs()
    for row in range(long.shape[0]):
        sel, rest = (w1[row] > 0) & mask[row], (w1[row] == 0) & mask[row]
        if sel.any() and rest.any():
            assert d[row][sel].min() >= d[row][rest].max()


def test_ties_broken_differently_by_different_seeds():
    long = torch.ones(1, 200)
    short = torch.zeros(1, 200)  # every |d| equal: pure tie
    picks = {
        tuple(
            compute_weights(
                long, short, Scheme.sparse(0.1), generator=torch.Generator().manual_seed(s)
            )[0]
            .nonzero()
            .flatten()
            .tolist()
        )
        for s in range(5)
    }
    assert len(picks) > 1
    # default (no generator) is reproducible
    a = compute_weights(long, short, Scheme.sparse(0.1))
    b = compute_weights(long, short, Scheme.sparse(0.1))
    assert torch.equal(a, b)


# ----------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uniform", Scheme.uniform()),
        ("dense:0.75", Scheme.dense(0.75)),
        ("sparse:0.25", Scheme.sparse(0.25)),
        ("longce:5", Scheme.longce(5)),
        ("longce", Scheme.longce(5)),
        ("ppmi:c=2,kappa=0.25", Scheme.ppmi(2, 0.25)),
        ("npmi:c=2,kappa=0.25", Scheme.npmi(2, 0.25)),
        ("rho1:0.6", Scheme.rho1(0.6)),
        (" Dense : lambda=0.5 ", Scheme.dense(0.5)),
        # any spelling of a field in a preset's parameters, and short names in custom
        ("dense:lam=0.5", Scheme.dense(0.5)),
        ("dense:interpolation=0.5", Scheme.dense(0.5)),
        ("sparse:sparsification=0.25", Scheme.sparse(0.25)),
        ("longce:truncation=3", Scheme.longce(3)),
        ("ppmi:c=2,sparsification=0.25", Scheme.ppmi(2, 0.25)),
        (
            "custom:comparison=difference,transforms=absolute,norm=l1,lam=0.75",
            Scheme.dense(0.75),
        ),
        (
            "custom:comparison=difference,transforms=minus+exp,gamma=5",
            Scheme.longce(5),
        ),
        (
            "custom:comparison=difference,transforms=absolute,kappa=0.25,normalization=l1",
            Scheme.sparse(0.25),
        ),
        (
            "custom:comparison=difference,transforms=minus+shift(2)+max,sparsification=0.25,"
            "normalization=L1",
            Scheme.ppmi(2, 0.25),
        ),
        (
            "custom:comparison=quotient,transforms=exp,truncation=3,normalization=softmax,"
            "interpolation=0.1",
            Scheme("quotient", ("exp",), truncation=3, normalization="softmax", interpolation=0.1),
        ),
    ],
)
def test_parse(text, expected):
    assert Scheme.parse(text) == expected


def test_presets_match_the_variant_table():
    assert Scheme.dense(0.75) == Scheme(
        "difference", ["absolute"], normalization="l1", interpolation=0.75
    )
    assert Scheme.sparse(0.1) == Scheme(
        "difference", ["absolute"], sparsification=0.1, normalization="l1"
    )
    assert Scheme.longce(5) == Scheme("difference", ["minus", "exp"], truncation=5)
    assert Scheme.ppmi(2, 0.1).transforms == (
        Transform("minus"),
        Transform("shift", 2),
        Transform("max"),
    )
    assert Scheme.npmi(2, 0.1).transforms == (Transform("shift", 2), Transform("max"))


def test_str_of_presets_is_short():
    assert str(Scheme.dense(0.75)) == "dense:0.75"
    assert str(Scheme.ppmi(2, 0.25)) == "ppmi:c=2,kappa=0.25"
    assert str(Scheme.uniform()) == "uniform"


def _scheme_or_none(*args, **kwargs) -> Scheme | None:
    """A scheme, or None for field combinations refused at construction (weights that
    could be negative or are constant by construction)."""
    try:
        return Scheme(*args, **kwargs)
    except TokenWeightError:
        return None


SCHEMES = (
    st.builds(
        _scheme_or_none,
        comparison=st.sampled_from(["difference", "quotient"]),
        transforms=st.lists(
            st.one_of(
                st.sampled_from(["absolute", "minus", "exp", "max"]),
                st.floats(1e-3, 1e3).map(lambda c: Transform("shift", c)),
            ),
            max_size=4,
        ),
        truncation=st.none() | st.floats(-10, 10),
        sparsification=st.none() | st.floats(1e-3, 1.0),
        normalization=st.sampled_from([None, "l1", "softmax"]),
        interpolation=st.none() | st.floats(0, 1),
    ).filter(lambda s: s is not None)
    | PRESETS
)


@settings(max_examples=300, deadline=None)
@given(SCHEMES)
def test_str_parse_round_trip(scheme):
    assert Scheme.parse(str(scheme)) == scheme
    assert Scheme.from_dict(scheme.to_dict()) == scheme


def test_from_dict_forms():
    assert Scheme.from_dict({"preset": "dense:0.75"}) == Scheme.dense(0.75)
    assert Scheme.from_dict({"name": "ppmi", "c": 2, "kappa": 0.25}) == Scheme.ppmi(2, 0.25)
    assert Scheme.from_dict(
        {
            "comparison": "difference",
            "transforms": ["absolute"],
            "kappa": 0.5,
            "normalization": "L1",
        }
    ) == Scheme.sparse(0.5)
    assert Scheme.from_dict(
        {"comparison": "difference", "transforms": [{"shift": 3}, "max"]}
    ) == Scheme("difference", ["shift 3", "max"])


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: Scheme.sparse(0), "kappa must be in (0, 1]"),
        (lambda: Scheme.sparse(1.5), "kappa must be in (0, 1]"),
        (lambda: Scheme.dense(-0.1), "lambda must be in [0, 1]"),
        (lambda: Scheme.dense(float("nan")), "must be finite"),
        (lambda: Scheme.ppmi(0, 0.5), "c must be > 0"),
        (lambda: Scheme.npmi(-1, 0.5), "c must be > 0"),
        (lambda: Scheme("difference", ["square"]), "unknown transform 'square'"),
        (lambda: Scheme("ratio"), "unknown comparison 'ratio'"),
        (lambda: Scheme("difference", normalization="l2"), "unknown normalization"),
        (lambda: Scheme(None, ["absolute"]), "uniform and takes no other fields"),
        (lambda: Scheme.parse("dense"), "needs lambda"),
        (lambda: Scheme.parse("dense:abc"), "must be a number"),
        (lambda: Scheme.parse("ppmi:c=2"), "needs c and kappa"),
        (lambda: Scheme.parse("ppmi:c=2,kappa=0.2,zeta=1"), "unknown parameter 'zeta'"),
        (lambda: Scheme.parse("sparse:0.2,"), "stray comma"),
        (lambda: Scheme.parse("magic:1"), "unknown scheme 'magic:1'"),
        (lambda: Scheme.parse("uniform:3"), "takes no parameters"),
        (lambda: Scheme.from_dict({"kapa": 0.2}), "unknown scheme field 'kapa'"),
        (lambda: Scheme("difference", ["shift"]), "needs a constant"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, needle):
    with pytest.raises(TokenWeightError) as info:
        make()
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_tensors_raise_clear_errors():
    good = torch.rand(2, 3)
    with pytest.raises(TokenWeightError, match=r"short_nll has shape \(2, 4\)"):
        compute_weights(good, torch.rand(2, 4), Scheme.dense(0.5))
    bad = good.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(TokenWeightError, match=r"long_nll is not finite.*row 1, target 2"):
        compute_weights(bad, good, Scheme.dense(0.5))
    with pytest.raises(TokenWeightError, match="short_nll is not finite"):
        compute_weights(good, bad.clone().fill_(float("inf")), Scheme.sparse(0.5))
    with pytest.raises(TokenWeightError, match=r"shape \(batch, targets\)"):
        compute_weights(torch.rand(3), torch.rand(3), Scheme.dense(0.5))
    with pytest.raises(TokenWeightError, match="mask must be a bool"):
        compute_weights(good, good, Scheme.dense(0.5), mask=torch.ones(2, 3))
    with pytest.raises(TokenWeightError, match="needs short_nll"):
        compute_weights(good, None, Scheme.dense(0.5))
    with pytest.raises(TokenWeightError, match="float tensor"):
        compute_weights(torch.ones(2, 3, dtype=torch.long), good, Scheme.dense(0.5))
    with pytest.raises(TokenWeightError, match="weights have shape"):
        weighted_nll_loss(good, torch.rand(3, 2))


def test_half_precision_inputs_give_float32():
    w = compute_weights(LONG.bfloat16(), SHORT.half().bfloat16(), Scheme.dense(0.75))
    assert w.dtype == torch.float32
