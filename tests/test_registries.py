"""The extension tables: a dummy scheme preset and transform registered in a test show up
in parsing, ``str``, error messages and the ``weights`` command; no name of a table appears
as a string literal outside the table's module (except the listed config defaults)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tokenweight import TokenWeightError
from tokenweight.cli import main
from tokenweight.weighting import (
    PRESETS,
    TRANSFORM_KINDS,
    Preset,
    Scheme,
    TransformKind,
    compute_weights,
    register_preset,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "tokenweight"
LONG = torch.tensor([[0.5, 3.0, 1.2, 0.1, 6.0, 2.0]])
SHORT = torch.tensor([[0.6, 7.5, 1.1, 0.1, 6.2, 5.5]])


def string_literals(names: set[str]) -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of every string constant in ``src/tokenweight`` equal to one
    of ``names`` (docstrings never are: they are longer than a name)."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.strip().lower() in names:
                hits.append((str(path.relative_to(SRC)), node.lineno, text))
    return hits


# ----------------------------------------------------------------- scheme presets
@pytest.fixture
def softcap(monkeypatch):
    """A dummy preset ``softcap:GAMMA``: ``min(|l - s|, gamma)``, softmax-normalized."""
    preset = Preset(
        "softcap",
        lambda gamma: Scheme(
            "difference", ("absolute",), truncation=gamma, normalization="softmax"
        ),
        ("gamma",),
        example="softcap:3",
    )
    monkeypatch.setattr("tokenweight.weighting.PRESETS", dict(PRESETS))
    register_preset(preset)
    return preset


def test_dummy_preset_parses_prints_and_computes(softcap):
    scheme = Scheme.parse("softcap:3")
    assert scheme == Scheme.parse("softcap:gamma=3")
    assert str(scheme) == "softcap:3" and Scheme.parse(str(scheme)) == scheme
    d = (LONG - SHORT).abs().clamp(max=3.0)
    expected = d.shape[1] * torch.softmax(d, dim=-1)  # independent: n * softmax(min(|d|, 3))
    assert torch.allclose(compute_weights(LONG, SHORT, scheme), expected, atol=1e-6)


def test_dummy_preset_in_error_messages(softcap):
    with pytest.raises(TokenWeightError, match=r"unknown scheme 'magic'.*softcap:GAMMA"):
        Scheme.parse("magic")
    with pytest.raises(TokenWeightError, match="'softcap' needs gamma"):
        Scheme.parse("softcap")
    with pytest.raises(TokenWeightError, match="already registered"):
        register_preset(softcap)


def test_dummy_preset_shown_by_weights_command(softcap, capsys):
    assert main(["weights"]) == 0
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line}
    assert {"softcap:3", "uniform", "dense:0.75", "npmi:c=2,kappa=0.25"} <= rows


def test_paper_presets_are_the_table():
    assert list(PRESETS) == ["uniform", "dense", "sparse", "longce", "ppmi", "npmi", "rho1"]
    with pytest.raises(TokenWeightError) as info:
        Scheme.parse("nope:1")
    message = str(info.value)
    for preset in PRESETS.values():
        assert preset.usage in message


def test_dummy_transform_registered(monkeypatch):
    """A ``square`` transform: ``d * d``, range ``[0, max(lo^2, hi^2)]``."""

    def bounds(lo: float, hi: float, c: float | None) -> tuple[float, float]:
        low = 0.0 if lo <= 0 <= hi else min(lo * lo, hi * hi)
        return low, max(lo * lo, hi * hi)

    monkeypatch.setitem(
        TRANSFORM_KINDS, "square", TransformKind("square", lambda d, c: d.mul_(d), bounds)
    )
    scheme = Scheme.parse("custom:comparison=difference,transforms=square,normalization=l1")
    d = (LONG - SHORT) ** 2
    assert torch.allclose(compute_weights(LONG, SHORT, scheme), d.shape[1] * d / d.sum(), atol=1e-5)
    # without a non-negative transform the same scheme is refused (the range check reads it)
    with pytest.raises(TokenWeightError, match="can be negative"):
        Scheme.parse("custom:comparison=difference,transforms=minus,normalization=l1")
    monkeypatch.delitem(TRANSFORM_KINDS, "square")
    with pytest.raises(TokenWeightError, match=r"unknown transform 'square'; allowed: .*shift C"):
        Scheme("difference", ("square",))


def test_preset_and_transform_names_only_in_weighting():
    names = set(PRESETS) | set(TRANSFORM_KINDS)
    # Config defaults that name the baseline scheme (a value a user could write too), and
    # selection's unrelated "max" (a summary statistic of its report).
    allowed = {
        ("pipeline.py", "uniform"),
        ("study.py", "uniform"),
        ("selection.py", "max"),
        ("selection.py", " max "),
    }
    hits = [
        (f, line, text)
        for f, line, text in string_literals(names)
        if f != "weighting.py" and (f, text) not in allowed
    ]
    assert hits == []
