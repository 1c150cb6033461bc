"""The config-schema helpers (tokenweight.infra.schema) on a small dataclass of their own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tokenweight import TokenWeightError
from tokenweight.core.weighting import Scheme
from tokenweight.infra.schema import (
    apply_overrides,
    at_least_two,
    build_dataclass,
    checked,
    one_of,
    positive,
    probability,
)


@dataclass
class Inner:
    rate: float = field(default=0.1, metadata=checked(probability))


@dataclass
class Settings:
    steps: int = field(default=2, metadata=checked(at_least_two))
    scale: float = field(default=1.0, metadata=checked(positive))
    device: str = field(default="auto", metadata=one_of("auto", "cpu", "cuda"))
    scheme: Scheme | None = None
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_values_are_converted_to_the_field_types():
    s = build_dataclass(
        Settings,
        {
            "steps": "0x10",
            "scale": "2e-5",
            "device": "CPU",
            "scheme": "dense:0.75",
            "names": "one",
            "inner": {"rate": 0.5},
        },
    )
    assert s.steps == 16 and s.scale == pytest.approx(2e-5)
    assert s.device == "cpu"  # choices are matched lower-cased
    assert isinstance(s.scheme, Scheme) and s.scheme == Scheme.coerce("dense:0.75")
    assert s.names == ["one"]
    assert s.inner == Inner(rate=0.5)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": 1}, "steps: must be >= 2, got 1"),
        ({"scale": 0}, "scale: must be > 0, got 0"),
        ({"scale": True}, "scale: expected a number, got True"),
        ({"device": "tpu"}, "device: expected one of auto, cpu, cuda, got 'tpu'"),
        ({"inner": {"rate": 1.0}}, "inner.rate: must be in [0, 1), got 1.0"),
        ({"inner": {"size": 1}}, "inner.size: unknown key; allowed in inner: rate"),
        ({"scheme": "nonsense"}, "scheme: "),
        ({"steps": None}, "steps: must be set (got null)"),
    ],
)
def test_bad_values_name_the_dotted_key(data, message):
    with pytest.raises(TokenWeightError) as exc:
        build_dataclass(Settings, data)
    assert str(exc.value).startswith(message)


def test_overrides_then_validation():
    data = apply_overrides({"inner": {"rate": 0.1}}, ["inner.rate=0.25", "steps=3"])
    assert data == {"inner": {"rate": 0.25}, "steps": 3}
    assert build_dataclass(Settings, data) == Settings(steps=3, inner=Inner(rate=0.25))
    with pytest.raises(TokenWeightError, match=r"expected key\.sub=value"):
        apply_overrides({}, ["steps"])
