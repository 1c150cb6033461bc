"""No silent nonsense in schemes (``tokenweight weights`` and ``Scheme.parse``): negative
or constant weights are refused, valid schemes still give non-negative weights."""

from __future__ import annotations

import pytest
import torch

from helpers.safety import fails
from tokenweight.core.weighting import Scheme
from tokenweight.infra.errors import TokenWeightError


@pytest.mark.parametrize(
    "text",
    [
        "longce:-1",
        "longce:0",
        "custom:comparison=difference,transforms=minus+exp,truncation=-1",
        "custom:comparison=difference,transforms=absolute,truncation=0",
        "custom:comparison=difference",
        "custom:comparison=difference,normalization=l1",
        "custom:comparison=difference,transforms=absolute+shift(3)",
        "custom:comparison=difference,transforms=max+minus",
        "custom:comparison=difference,transforms=max+minus+max",
        "custom:comparison=quotient,transforms=minus,interpolation=0.5",
    ],
)
def test_schemes_with_negative_or_constant_weights_are_refused(text, capsys):
    with pytest.raises(TokenWeightError):
        Scheme.parse(text)
    fails(capsys, ["weights", "--scheme", text], "cannot read scheme")


@pytest.mark.parametrize(
    "text",
    [
        "longce:0.5",
        "dense:0",
        "dense:1",
        "rho1:0.5",
        "custom:comparison=difference,transforms=absolute",
        "custom:comparison=difference,normalization=softmax",
        "custom:comparison=quotient,transforms=minus,normalization=softmax",
    ],
)
def test_schemes_with_valid_weights_still_parse_and_give_non_negative_weights(text):
    from tokenweight.core.weighting import compute_weights

    scheme = Scheme.parse(text)
    g = torch.Generator().manual_seed(0)
    long, short = torch.rand(3, 50, generator=g) * 8, torch.rand(3, 50, generator=g) * 8
    w = compute_weights(long, short, scheme)
    assert bool((w >= 0).all()) and bool((w.sum(-1) > 0).all())
