"""Scores to loss weights: every scheme of the paper, as pure tensor functions.

Notation (``docs/method.md#scores``). Per target ``i``: ``l_i = -log p_long(x_i)`` and
``s_i = -log p_short(x_i)``, natural-log NLL. A :class:`Scheme` turns ``(l, s)`` into
weights in fixed stages:

1. comparison: ``difference`` ``d = l - s`` or ``quotient`` ``d = (l + 1e-5) / (s + 1e-5)``
2. transforms, in the order given: ``absolute`` ``|d|``, ``minus`` ``-d``, ``exp`` ``e^d``,
   ``max`` ``max(d, 0)``, ``shift c`` ``d - log(c)``
3. truncation ``gamma``: ``min(d, gamma)``
4. sparsification ``kappa``: per sequence the ``floor(kappa * n)`` largest values become 1,
   the rest 0 (at least one kept when ``n > 0``; ties broken at random, reproducibly,
   per row: :func:`document_tie_seeds`)
5. normalization ``L1``: ``n * d / sum|d|``; ``softmax``: ``n * softmax(d)``; an all-zero
   sequence gets uniform weights
6. interpolation ``lambda``: ``lambda + (1 - lambda) * w``

``n`` is the number of valid targets of the sequence. Weights are detached float32; the
loss is ``sum_i w_i * l_i / n_valid`` (:func:`weighted_nll_loss`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "COMPARISONS",
    "NORMALIZATIONS",
    "PRESETS",
    "PRESET_EXAMPLES",
    "TRANSFORMS",
    "TRANSFORM_KINDS",
    "Preset",
    "Scheme",
    "Transform",
    "TransformKind",
    "compute_scores",
    "compute_weights",
    "document_tie_seeds",
    "draw_tie_seed",
    "first_nonfinite",
    "preset_examples",
    "register_preset",
    "weighted_nll_loss",
]

COMPARISONS = ("difference", "quotient")
NORMALIZATIONS = ("l1", "softmax")
QUOTIENT_EPS = 1e-5
DEFAULT_SEED = 0


Bounds = tuple[float, float]


@dataclass(frozen=True)
class TransformKind:
    """One entry of the transform table: how a transform acts on scores and on the range
    of scores (the range check of :class:`Scheme` follows it through the stages).

    ``apply(d, c)`` transforms a float32 tensor in place (``c`` is the constant, ``None``
    unless ``takes_constant``); ``bounds(lo, hi, c)`` maps the interval of possible
    values ``[lo, hi]`` to the interval after the transform.
    """

    name: str
    apply: Callable[[torch.Tensor, float | None], torch.Tensor]
    bounds: Callable[[float, float, float | None], Bounds]
    takes_constant: bool = False
    formula: str = ""
    may_overflow: bool = False

    @property
    def usage(self) -> str:
        """How the transform is written: ``absolute``, ``shift C``."""
        return f"{self.name} C" if self.takes_constant else self.name


def _abs_bounds(lo: float, hi: float, c: float | None) -> Bounds:
    if lo >= 0:
        return lo, hi
    return (-hi, -lo) if hi <= 0 else (0.0, max(-lo, hi))


def _const(c: float | None) -> float:
    assert c is not None  # Transform.__post_init__ requires it where takes_constant
    return c


# The transform table: every consumer (Transform's checks and messages, compute_scores,
# the weight-range check) reads it. Adding a transform is one entry here plus its tests.
TRANSFORM_KINDS: dict[str, TransformKind] = {
    t.name: t
    for t in (
        TransformKind("absolute", lambda d, c: d.abs_(), _abs_bounds, formula="|d|"),
        TransformKind("minus", lambda d, c: d.neg_(), lambda lo, hi, c: (-hi, -lo), formula="-d"),
        TransformKind(
            "exp",
            lambda d, c: d.exp_(),
            lambda lo, hi, c: (math.exp(min(lo, 700.0)), math.exp(min(hi, 700.0))),
            formula="e^d",
            may_overflow=True,
        ),
        TransformKind(
            "max",
            lambda d, c: d.clamp_(min=0),
            lambda lo, hi, c: (max(lo, 0.0), max(hi, 0.0)),
            formula="max(d, 0)",
        ),
        TransformKind(
            "shift",
            lambda d, c: d.sub_(math.log(_const(c))),
            lambda lo, hi, c: (lo - math.log(_const(c)), hi - math.log(_const(c))),
            takes_constant=True,
            formula="d - log(c)",
        ),
    )
}
TRANSFORMS = tuple(TRANSFORM_KINDS)  # the names, in table order


def _transform_usage() -> str:
    return ", ".join(t.usage for t in TRANSFORM_KINDS.values())


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise TokenWeightError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TokenWeightError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise TokenWeightError(f"{what} must be finite, got {value!r}")
    return number


def _choice(value: Any, allowed: tuple[str, ...], what: str, listed: str) -> str | None:
    """``value`` lower-cased and checked against ``allowed``; ``None``, ``"none"`` and
    ``""`` mean unset (``None``). ``listed`` is the allowed spellings shown to the user."""
    if value is None:
        return None
    choice = str(value).strip().lower()
    if choice in ("none", ""):
        return None
    if choice not in allowed:
        raise TokenWeightError(f"unknown {what} {value!r}; allowed: {listed}")
    return choice


def _transform_tuple(value: Any) -> tuple[Transform, ...]:
    """A tuple of :class:`Transform` from their text (``"absolute,exp"``), one transform
    (text, instance or dict) or a list of them."""
    transforms = value
    if isinstance(transforms, str):
        transforms = _split_transforms(transforms)
    elif isinstance(transforms, (Transform, Mapping)):
        transforms = [transforms]
    try:
        return tuple(Transform.parse(t) for t in transforms)
    except TypeError:
        raise TokenWeightError(
            f"transforms must be a list such as ['absolute'], got {value!r}"
        ) from None


def _fmt(x: float) -> str:
    """Shortest text that parses back to exactly ``x``."""
    return repr(float(x)).removesuffix(".0") if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Transform:
    """One element-wise transform of the comparison value.

    ``name`` is a key of :data:`TRANSFORM_KINDS` (``absolute``, ``minus``, ``exp``,
    ``max``, ``shift``); a transform that takes a constant (``shift``) carries ``c > 0``.
    """

    name: str
    c: float | None = None

    def __post_init__(self) -> None:
        name = str(self.name).strip().lower()
        kind = TRANSFORM_KINDS.get(name)
        if kind is None:
            raise TokenWeightError(
                f"unknown transform {self.name!r}; allowed: {_transform_usage()}"
            )
        object.__setattr__(self, "name", name)
        if kind.takes_constant:
            if self.c is None:
                raise TokenWeightError(
                    f"transform {name!r} needs a constant c > 0, e.g. '{name} 2'"
                )
            c = _number(self.c, f"{name} constant c")
            if c <= 0:
                raise TokenWeightError(f"{name} constant c must be > 0, got {self.c!r}")
            object.__setattr__(self, "c", c)
        elif self.c is not None:
            raise TokenWeightError(f"transform {name!r} takes no constant (got {self.c!r})")

    @classmethod
    def parse(cls, value: str | Transform | Mapping[str, Any]) -> Transform:
        """Accept ``"absolute"``, ``"shift 2"``, ``"shift=2"``, ``"shift(2)"``,
        ``{"shift": 2}`` or a :class:`Transform`."""
        if isinstance(value, Transform):
            return value
        if isinstance(value, Mapping):
            if len(value) != 1:
                raise TokenWeightError(
                    f"a transform given as a mapping needs exactly one key, got {dict(value)!r}"
                )
            ((name, c),) = value.items()
            return cls(str(name), c)
        if not isinstance(value, str):
            raise TokenWeightError(f"a transform must be text such as 'absolute', got {value!r}")
        match = re.fullmatch(r"\s*([A-Za-z_]+)\s*(?:[\s:=(]\s*([^\s)]+)\s*\)?)?\s*", value)
        if not match:
            raise TokenWeightError(
                f"cannot read transform {value!r}; allowed: {_transform_usage()}"
            )
        name, arg = match.groups()
        return cls(name, cast(Any, arg))  # text: __post_init__ reads and checks it

    def __str__(self) -> str:
        return f"{self.name}({_fmt(self.c)})" if self.c is not None else self.name


# Scheme field -> the paper's short names for it; the first is the name the presets'
# text form uses (``dense:lambda=0.75``). Both directions of the mapping derive from here.
_FIELD_ALIASES = {
    "truncation": ("gamma",),
    "sparsification": ("kappa",),
    "interpolation": ("lambda", "lam"),
    "normalization": ("norm",),
}
_FIELD_OF_ALIAS = {alias: name for name, aliases in _FIELD_ALIASES.items() for alias in aliases}


@dataclass(frozen=True)
class Scheme:
    """An immutable, validated token-weighting scheme (``docs/method.md#variants``).

    ``comparison=None`` means uniform weights (plain cross-entropy); every other field
    must then be unset. Use the presets (:meth:`dense`, :meth:`sparse`, ...) or
    :meth:`parse` rather than spelling out fields, unless you compose your own scheme.
    """

    comparison: str | None = None
    transforms: tuple[Transform, ...] = field(default=())
    truncation: float | None = None
    sparsification: float | None = None
    normalization: str | None = None
    interpolation: float | None = None

    def __post_init__(self) -> None:
        set_field = functools.partial(object.__setattr__, self)
        comparison = _choice(self.comparison, COMPARISONS, "comparison", "difference, quotient")
        set_field("comparison", comparison)
        set_field("transforms", _transform_tuple(self.transforms))
        if self.truncation is not None:
            set_field("truncation", _number(self.truncation, "truncation gamma"))
        if self.sparsification is not None:
            kappa = _number(self.sparsification, "sparsification kappa")
            if not 0 < kappa <= 1:
                raise TokenWeightError(
                    f"sparsification kappa must be in (0, 1], got {self.sparsification!r}"
                )
            set_field("sparsification", kappa)
        set_field(
            "normalization",
            _choice(self.normalization, NORMALIZATIONS, "normalization", "L1, softmax, none"),
        )
        if self.interpolation is not None:
            lam = _number(self.interpolation, "interpolation lambda")
            if not 0 <= lam <= 1:
                raise TokenWeightError(
                    f"interpolation lambda must be in [0, 1], got {self.interpolation!r}"
                )
            set_field("interpolation", lam)
        if comparison is None:
            self._check_uniform_is_bare()
        else:
            self._check_weight_range()

    def _check_uniform_is_bare(self) -> None:
        """A scheme without a comparison (uniform) takes no other field."""
        if (
            self.transforms
            or self.truncation is not None
            or self.sparsification is not None
            or self.normalization is not None
            or self.interpolation is not None
        ):
            raise TokenWeightError(
                "a scheme without a comparison is uniform and takes no other fields; "
                "set comparison to 'difference' or 'quotient'"
            )

    def _check_weight_range(self) -> None:
        """Follow the range of possible values through the stages (NLLs are >= 0, so
        anything is possible for ``difference``, ``(0, inf)`` for ``quotient``) and refuse
        a scheme whose weights could be negative, or are the same constant for every
        target by construction (a truncation at or below every possible score)."""
        inf = math.inf
        lo, hi = (-inf, inf) if self.comparison == "difference" else (0.0, inf)
        for t in self.transforms:
            lo, hi = TRANSFORM_KINDS[t.name].bounds(lo, hi, t.c)
        if self.truncation is not None:
            gamma = self.truncation
            if gamma <= lo:
                raise TokenWeightError(
                    f"truncation gamma {_fmt(gamma)} is at or below every score this scheme "
                    f"can produce (>= {_fmt(lo)}), so every weight would be {_fmt(gamma)}; "
                    "choose a gamma above that (LongCE uses 5)"
                )
            lo, hi = min(lo, gamma), min(hi, gamma)
        if self.sparsification is not None:
            lo, hi = 0.0, 1.0
        if self.normalization == "softmax":
            lo, hi = 0.0, inf
        elif self.normalization == "l1":
            lo, hi = (-inf if lo < 0 else 0.0), (inf if hi > 0 else 1.0)
        if self.interpolation is not None:
            lam = self.interpolation
            lo, hi = (
                lam + (1 - lam) * lo if lam < 1 else 1.0,
                lam + (1 - lam) * hi if lam < 1 else 1.0,
            )
        if lo < 0:
            raise TokenWeightError(
                f"weights of this scheme can be negative ({self._stages()}): a negative "
                "weight trains the model to make those tokens less likely; add a transform "
                "that keeps scores >= 0 (absolute, exp, max), sparsification, or a softmax "
                "normalization"
            )
        if hi <= 0:
            raise TokenWeightError(
                f"every weight of this scheme is 0 ({self._stages()}), so nothing would be "
                "trained; change its transforms or add a normalization"
            )

    def _stages(self) -> str:
        parts = [f"comparison {self.comparison}"]
        parts += [f"transform {t}" for t in self.transforms]
        if self.truncation is not None:
            parts.append(f"truncation {_fmt(self.truncation)}")
        if self.normalization is not None:
            parts.append(f"normalization {self.normalization}")
        return ", ".join(parts)

    # ----------------------------------------------------------------- presets
    @classmethod
    def uniform(cls) -> Scheme:
        """Weight 1 for every valid target: plain cross-entropy (the baseline)."""
        return cls()

    @classmethod
    def dense(cls, lam: float) -> Scheme:
        """Dense lambda: ``|l - s|``, L1-normalized, interpolated with uniform by ``lam``."""
        return cls("difference", (Transform("absolute"),), normalization="l1", interpolation=lam)

    @classmethod
    def sparse(cls, kappa: float) -> Scheme:
        """Sparse kappa: the top ``kappa`` fraction by ``|l - s|`` share the loss."""
        return cls("difference", (Transform("absolute"),), sparsification=kappa, normalization="l1")

    @classmethod
    def longce(cls, gamma: float = 5.0) -> Scheme:
        """LongCE (Fang et al. 2025): ``min(p_long / p_short, gamma)``."""
        return cls("difference", (Transform("minus"), Transform("exp")), truncation=gamma)

    @classmethod
    def ppmi(cls, c: float, kappa: float) -> Scheme:
        """PPMI c: ``max(s - l - log c, 0)``, top ``kappa`` kept, L1-normalized."""
        return cls(
            "difference",
            (Transform("minus"), Transform("shift", c), Transform("max")),
            sparsification=kappa,
            normalization="l1",
        )

    @classmethod
    def npmi(cls, c: float, kappa: float) -> Scheme:
        """NPMI c: ``max(l - s - log c, 0)``, top ``kappa`` kept, L1-normalized."""
        return cls(
            "difference",
            (Transform("shift", c), Transform("max")),
            sparsification=kappa,
            normalization="l1",
        )

    @classmethod
    def rho1(cls, kappa: float) -> Scheme:
        """Rho-1 style selection (Lin et al. 2024): top ``kappa`` by ``l - s_ref``, averaged.

        Use a reference model as the short-context scorer.
        """
        return cls("difference", (), sparsification=kappa, normalization="l1")

    # ----------------------------------------------------------------- text / dict
    @property
    def is_uniform(self) -> bool:
        return self.comparison is None

    def _preset_form(self) -> str | None:
        """The text of the first preset of :data:`PRESETS` that builds this scheme."""
        for preset in PRESETS.values():
            text = preset.form_of(self)
            if text is not None:
                return text
        return None

    def __str__(self) -> str:
        preset = self._preset_form()
        if preset is not None:
            return preset
        parts = [f"comparison={self.comparison}"]
        if self.transforms:
            parts.append("transforms=" + "+".join(str(t) for t in self.transforms))
        for name in ("truncation", "sparsification", "interpolation"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_fmt(value)}")
        if self.normalization is not None:
            parts.append(f"normalization={self.normalization}")
        return "custom:" + ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for YAML/JSON); :meth:`from_dict` reads it back."""
        return {
            "comparison": self.comparison,
            "transforms": [str(t) for t in self.transforms],
            "truncation": self.truncation,
            "sparsification": self.sparsification,
            "normalization": self.normalization,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scheme:
        """Build from a mapping of field names (aliases gamma, kappa, lambda accepted), or
        from ``{"preset": "dense:0.75"}`` / ``{"name": "dense", "lambda": 0.75}``."""
        if not isinstance(data, Mapping):
            raise TokenWeightError(f"a scheme must be a mapping or text, got {data!r}")
        data = dict(data)
        if "preset" in data:
            preset = data.pop("preset")
            if data:
                raise TokenWeightError(f"scheme 'preset' takes no other keys, got {sorted(data)}")
            return cls.parse(str(preset))
        if "name" in data:
            name = str(data.pop("name"))
            args = ",".join(f"{k}={v}" for k, v in data.items())
            return cls.parse(f"{name}:{args}" if args else name)
        valid = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = _FIELD_OF_ALIAS.get(str(key).lower(), str(key).lower())
            if name not in valid:
                raise TokenWeightError(
                    f"unknown scheme field {key!r}; allowed: {', '.join(sorted(valid))} "
                    "(or gamma, kappa, lambda)"
                )
            if name in kwargs:
                raise TokenWeightError(f"scheme field {name!r} given twice")
            kwargs[name] = value
        if isinstance(kwargs.get("transforms"), str):
            kwargs["transforms"] = _split_transforms(kwargs["transforms"])
        if kwargs.get("transforms") is None:
            kwargs.pop("transforms", None)
        return cls(**kwargs)

    @classmethod
    def coerce(cls, value: Scheme | str | Mapping[str, Any]) -> Scheme:
        """A :class:`Scheme` from a scheme, its text form or its dict form."""
        if isinstance(value, Scheme):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_dict(value)

    @classmethod
    def parse(cls, text: str) -> Scheme:
        """Read a scheme from text.

        Accepted: a preset of :data:`PRESETS` (``uniform``, ``dense:0.75``, ``sparse:0.25``,
        ``longce:5``, ``rho1:0.6``, ``ppmi:c=2,kappa=0.25``, ``npmi:c=2,kappa=0.25``) and the
        full form
        ``custom:comparison=difference,transforms=minus+shift(2)+max,truncation=5,
        sparsification=0.25,normalization=l1,interpolation=0.5`` (every field optional
        except comparison). ``str(scheme)`` always parses back to an equal scheme.
        """
        if not isinstance(text, str):
            raise TokenWeightError(f"a scheme must be text such as 'dense:0.75', got {text!r}")
        name, _, rest = text.strip().partition(":")
        name = name.strip().lower()
        rest = rest.strip()
        try:
            preset = PRESETS.get(name)
            if preset is not None:
                return preset.read(rest)
            if name in _CUSTOM_NAMES:
                args = _parse_args(rest, positional=None, allowed=None, numeric=False)
                return cls.from_dict(args)
        except TokenWeightError as exc:
            raise TokenWeightError(f"cannot read scheme {text!r}: {exc}") from None
        raise TokenWeightError(f"unknown scheme {text!r}; use one of {_scheme_usage()}")


# Text names of the fully spelled-out form (``custom:comparison=...``).
_CUSTOM_NAMES = ("custom", "scheme")
_CUSTOM_USAGE = (
    "custom:comparison=...,transforms=a+b,truncation=...,sparsification=...,"
    "normalization=...,interpolation=..."
)


@dataclass(frozen=True)
class Preset:
    """One named scheme of the preset table (``dense:0.75``).

    ``build`` takes the parameters as keywords named by ``params`` (the paper's short
    names: ``lambda``, ``kappa``, ``gamma``, ``c``) and returns a :class:`Scheme`.
    A preset with one parameter also reads it positionally (``dense:0.75``); ``defaults``
    fills parameters left out. ``example`` is a text form shown by ``tokenweight
    weights`` and the docs (``None``: not shown by default). ``recover`` reads a scheme's
    parameters back (for ``str(scheme)``); the default reads ``lambda``, ``kappa``,
    ``gamma`` and ``c`` from the scheme's fields.
    """

    name: str
    build: Callable[..., Scheme]
    params: tuple[str, ...] = ()
    defaults: Mapping[str, float] = field(default_factory=dict)
    example: str | None = None
    recover: Callable[[Scheme], dict[str, float | None]] | None = None

    @property
    def usage(self) -> str:
        """How the preset is written: ``dense:LAMBDA``, ``ppmi:c=C,kappa=K``."""
        if not self.params:
            return self.name
        if len(self.params) == 1:
            return f"{self.name}:{self.params[0].upper()}"
        return f"{self.name}:" + ",".join(f"{p}={p[0].upper()}" for p in self.params)

    def read(self, rest: str) -> Scheme:
        """The scheme of the parameter text after ``name:`` (``"0.75"``, ``"c=2,kappa=1"``)."""
        if not self.params:
            if rest:
                raise TokenWeightError(f"{self.name!r} takes no parameters")
            return self.build()
        positional = self.params[0] if len(self.params) == 1 else None
        args = {
            **self.defaults,
            **_parse_args(rest, positional=positional, allowed=set(self.params)),
        }
        missing = [p for p in self.params if p not in args]
        if missing:
            needs = " and ".join(self.params)
            example = f"{self.name}:0.5" if positional else self.example or self.usage
            raise TokenWeightError(f"{self.name!r} needs {needs}, e.g. {example!r}")
        return self.build(**{p: args[p] for p in self.params})

    def format(self, values: Mapping[str, float]) -> str:
        """The text form of this preset with ``values`` (``dense:0.75``)."""
        if not self.params:
            return self.name
        if len(self.params) == 1:
            return f"{self.name}:{_fmt(values[self.params[0]])}"
        return f"{self.name}:" + ",".join(f"{p}={_fmt(values[p])}" for p in self.params)

    def form_of(self, scheme: Scheme) -> str | None:
        """This preset's text for ``scheme`` if the preset builds exactly it, else ``None``."""
        found = (self.recover or _scheme_params)(scheme)
        values = {p: found.get(p) for p in self.params}
        if any(v is None for v in values.values()):
            return None
        known = cast(dict[str, float], values)
        try:
            built = self.build(**known)
        except TokenWeightError:
            return None
        return self.format(known) if built == scheme else None


def _scheme_params(scheme: Scheme) -> dict[str, float | None]:
    """The presets' short parameter names read from a scheme's fields (``c``: its one
    transform constant, if exactly one)."""
    constants = [t.c for t in scheme.transforms if t.c is not None]
    return {
        "lambda": scheme.interpolation,
        "kappa": scheme.sparsification,
        "gamma": scheme.truncation,
        "c": constants[0] if len(constants) == 1 else None,
    }


# The preset table: Scheme.parse, str(scheme), the error messages, PRESET_EXAMPLES and
# `tokenweight weights` all read it. Adding a preset is one entry (register_preset) plus
# its tests; a Scheme classmethod for it is optional.
PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to :data:`PRESETS` (a name already taken is an error)."""
    if preset.name in PRESETS or preset.name in _CUSTOM_NAMES:
        raise TokenWeightError(f"scheme preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


for _preset in (
    Preset("uniform", lambda: Scheme.uniform(), example="uniform"),
    Preset("dense", lambda **a: Scheme.dense(a["lambda"]), ("lambda",), example="dense:0.75"),
    Preset("sparse", lambda kappa: Scheme.sparse(kappa), ("kappa",), example="sparse:0.25"),
    Preset(
        "longce",
        lambda gamma: Scheme.longce(gamma),
        ("gamma",),
        defaults={"gamma": 5.0},
        example="longce:5",
    ),
    Preset(
        "ppmi",
        lambda c, kappa: Scheme.ppmi(c, kappa),
        ("c", "kappa"),
        example="ppmi:c=2,kappa=0.25",
    ),
    Preset(
        "npmi",
        lambda c, kappa: Scheme.npmi(c, kappa),
        ("c", "kappa"),
        example="npmi:c=2,kappa=0.25",
    ),
    # meant for a reference-model scorer, so not among the default examples
    Preset("rho1", lambda kappa: Scheme.rho1(kappa), ("kappa",)),
):
    register_preset(_preset)


def _scheme_usage() -> str:
    return ", ".join(p.usage for p in PRESETS.values()) + f", or {_CUSTOM_USAGE}"


def _preset_examples() -> tuple[str, ...]:
    return tuple(p.example for p in PRESETS.values() if p.example is not None)


# Example scheme texts, one per preset with an example: what `tokenweight weights` shows
# by default and `benchmarks/bench_weighting.py` times (a snapshot of the table at import;
# preset_examples() reads it as it is now).
PRESET_EXAMPLES = _preset_examples()


def preset_examples() -> tuple[str, ...]:
    """The example texts of the presets registered now (:data:`PRESET_EXAMPLES` plus any
    registered since import)."""
    return _preset_examples()


def _split_transforms(text: str) -> list[str]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    return [part for part in re.split(r"[+;|]", text) if part.strip()]


def _parse_args(
    text: str, *, positional: str | None, allowed: set[str] | None, numeric: bool = True
) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if not text:
        return args
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise TokenWeightError("empty parameter (stray comma)")
        key, eq, value = part.partition("=")
        if not eq:
            if positional is None or args:
                raise TokenWeightError(f"expected key=value, got {part!r}")
            key, value = positional, part
        key = key.strip().lower()
        if allowed is not None:
            # any spelling of a field (``lam``, ``interpolation``) -> its short name
            field_name = _FIELD_OF_ALIAS.get(key, key)
            key = _FIELD_ALIASES[field_name][0] if field_name in _FIELD_ALIASES else key
            if key not in allowed:
                raise TokenWeightError(
                    f"unknown parameter {key!r}; allowed: {', '.join(sorted(allowed))}"
                )
        if key in args:
            raise TokenWeightError(f"parameter {key!r} given twice")
        args[key] = _number(value.strip(), key) if numeric else value.strip()
    return args


# --------------------------------------------------------------------- tensor code
def _check_nll(
    name: str, x: torch.Tensor, shape: torch.Size | None, mask: torch.Tensor | None
) -> None:
    if not isinstance(x, torch.Tensor):
        raise TokenWeightError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TokenWeightError(f"{name} must be a float tensor, got {x.dtype}")
    if x.dim() != 2:
        raise TokenWeightError(f"{name} must have shape (batch, targets), got {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise TokenWeightError(
            f"{name} has shape {tuple(x.shape)} but long_nll has {tuple(shape)}; they must match"
        )
    where = first_nonfinite(x, mask)
    if where is None:
        return
    row, col, value = where
    bad = ~torch.isfinite(x.detach())
    count = int((bad if mask is None else bad & mask).sum())
    raise TokenWeightError(
        f"{name} is not finite ({value}) at row {row}, target {col} "
        f"({count} such value(s)); check the model's dtype and the input data"
    )


def first_nonfinite(
    x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[int, int, float] | None:
    """``(row, target, value)`` of the first NaN or infinite value of ``x`` ``(B, T)`` among
    valid targets (``mask`` True; all without a mask), or ``None`` when all are finite."""
    x = x.detach()
    if x.numel() == 0:
        return None
    valid = (
        x if mask is None else torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    )
    # Two cheap reductions (max/min propagate NaN) before the element-wise search.
    if bool(torch.isfinite(valid.amax())) and bool(torch.isfinite(valid.amin())):
        return None
    row, col = (int(i) for i in (~torch.isfinite(valid)).nonzero()[0])
    return row, col, float(x[row, col])


def _check_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Validate ``mask``; an all-True mask becomes ``None`` (the fast path)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TokenWeightError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != like.shape:
        raise TokenWeightError(
            f"mask has shape {tuple(mask.shape)} but long_nll has {tuple(like.shape)}"
        )
    if mask.device != like.device:
        raise TokenWeightError(f"mask is on {mask.device} but long_nll is on {like.device}")
    if mask.dtype != torch.bool:
        raise TokenWeightError(f"mask must be a bool tensor, got {mask.dtype}")
    return None if bool(mask.all()) else mask


def compute_scores(long_nll: torch.Tensor, short_nll: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Stages 1-3 (comparison, transforms, truncation) as float32, without validation.

    Shapes ``(batch, targets)``; units are nats (or nat ratios for ``quotient``).
    """
    long32, short32 = long_nll.detach().float(), short_nll.detach().float()
    if scheme.comparison == "quotient":
        d = (long32 + QUOTIENT_EPS) / (short32 + QUOTIENT_EPS)
    else:
        d = long32 - short32
    for t in scheme.transforms:
        d = TRANSFORM_KINDS[t.name].apply(d, t.c)
    if scheme.truncation is not None:
        d = d.clamp_(max=scheme.truncation)
    return d


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, element-wise, of int64 values in ``[0, 2**32)``. Both
    multipliers are below ``2**31``, so no product leaves int64; the same on every
    device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _MASK32
    return x ^ (x >> 16)


def _fold32(seed: torch.Tensor | int) -> torch.Tensor:
    """Any int64 seed(s) folded into ``[0, 2**32)``."""
    seed = torch.as_tensor(seed, dtype=torch.int64)
    return (seed & _MASK32) ^ ((seed >> 32) & _MASK32)


def document_tie_seeds(
    input_ids: torch.Tensor, valid: torch.Tensor | None, base: int = DEFAULT_SEED
) -> torch.Tensor:
    """Tie-breaking seeds ``(batch,)`` int64 for rows that each hold one document.

    A row's seed is a hash of ``base`` and its real tokens (``valid`` ``(batch, N)``
    True; all of them when ``None``) in order, so it does not depend on the padding,
    the row's place in the batch or the other rows: with the same ``base``, a document
    gets the same seed alone, padded or unpacked from a packed row.
    """
    ids = input_ids.to(torch.int64)
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    valid = valid.bool()
    position = valid.long().cumsum(dim=-1) - 1  # rank among the row's real tokens
    token = _mix32((ids & _MASK32) ^ _mix32(position & _MASK32))
    digest = torch.where(valid, token, torch.zeros_like(token)).sum(dim=-1) & _MASK32
    count = valid.sum(dim=-1)
    base32 = _fold32(base).to(ids.device)
    return _mix32(digest ^ _mix32((count & _MASK32) ^ base32))


def _tie_keys(seeds: torch.Tensor, cols: int) -> torch.Tensor:
    """``(rows, cols)`` int64 random keys in ``[0, 2**63)``: a hash of each row's seed and
    the target index only, so a row's keys do not depend on its width or the other rows."""
    seeds = _fold32(seeds)[:, None]
    t = torch.arange(cols, dtype=torch.int64, device=seeds.device)[None, :]
    high = _mix32(seeds ^ _mix32(t)) & 0x7FFFFFFF
    low = _mix32(_mix32(seeds ^ 0x5BD1E995) ^ t)
    return (high << 32) | low


def _top_fraction(
    d: torch.Tensor,
    mask: torch.Tensor | None,
    n: torch.Tensor,
    kappa: float,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """1.0 for the ``floor(kappa * n)`` largest valid values of each row (>= 1 if n > 0).

    One partial sort (``topk``) finds each row's threshold value; everything above it is
    kept. Among the targets equal to the threshold, the ones still needed are those with
    the smallest random keys of :func:`_tie_keys` (row seed ``seeds[r]``, target index):
    a row's choice depends on its own values and seed only.
    """
    rows, cols = d.shape
    keep = torch.floor(n.double() * kappa).long()
    keep = torch.where(n > 0, keep.clamp(min=1), keep)
    k_max = int(keep.max()) if rows else 0
    if k_max == 0:
        return torch.zeros_like(d)
    keyed = d.nan_to_num(posinf=torch.finfo(d.dtype).max, neginf=torch.finfo(d.dtype).min)
    if mask is not None:
        keyed = torch.where(mask, keyed, torch.full_like(d, -math.inf))
    top = torch.topk(keyed, k_max, dim=-1, sorted=True).values
    threshold = top.gather(-1, (keep - 1).clamp(min=0))
    threshold = torch.where(keep > 0, threshold, torch.full_like(threshold, math.inf))
    above = keyed > threshold
    tied = keyed == threshold
    need = keep - above.sum(dim=-1, keepdim=True)
    if bool((tied.sum(dim=-1, keepdim=True) == need).all()):
        return (above | tied).to(d.dtype)
    keys = _tie_keys(seeds.to(d.device), cols)
    keys = torch.where(tied, keys, torch.full_like(keys, torch.iinfo(torch.int64).max))
    need_max = int(need.max())
    picked = torch.topk(keys, need_max, dim=-1, largest=False, sorted=True).indices
    chosen = torch.zeros_like(d)
    rank = torch.arange(need_max, device=d.device).expand(rows, need_max)
    chosen.scatter_(-1, picked, (rank < need).to(d.dtype))
    return (above.to(d.dtype) + chosen).clamp_(max=1)


def _row_seeds(
    rows: int, generator: torch.Generator | None, tie_seeds: torch.Tensor | None
) -> torch.Tensor:
    """``(rows,)`` tie-breaking seeds: ``tie_seeds`` as given, or one seed for every row
    (drawn from ``generator``; ``DEFAULT_SEED`` without one)."""
    if tie_seeds is not None:
        seeds = torch.as_tensor(tie_seeds)
        if seeds.shape != (rows,) or seeds.is_floating_point():
            raise TokenWeightError(
                f"tie_seeds must be {rows} integers (one per row), got "
                f"{tuple(seeds.shape)} {seeds.dtype}"
            )
        return seeds.to(torch.int64)
    return torch.full((rows,), draw_tie_seed(generator), dtype=torch.int64)


def draw_tie_seed(generator: torch.Generator | None) -> int:
    """One tie-breaking seed drawn from ``generator`` (``DEFAULT_SEED`` without one)."""
    if generator is None:
        return DEFAULT_SEED
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def compute_weights(
    long_nll: torch.Tensor,
    short_nll: torch.Tensor | None,
    scheme: Scheme | str,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tie_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-target loss weights.

    Args:
        long_nll: ``(batch, targets)`` NLL in nats under the long context.
        short_nll: ``(batch, targets)`` NLL in nats under the short context (may be
            ``None`` for the uniform scheme).
        scheme: a :class:`Scheme` or its text form (``"dense:0.75"``).
        mask: ``(batch, targets)`` bool, True for valid targets. Invalid targets get
            weight 0 and do not count in ``n``. Values at invalid positions are ignored
            (they may be NaN).
        generator: random source for breaking ties in sparsification: one seed is drawn
            from it for every row; ``None`` uses a fixed seed, so results are
            reproducible either way.
        tie_seeds: ``(batch,)`` int64, one tie-breaking seed per row instead (for
            example :func:`document_tie_seeds`, a hash of each row's document). Which
            tied targets a row keeps depends only on its own scores, its seed and the
            target index -- never on padding or on the other rows of the batch.

    Returns:
        Detached float32 weights, shape ``(batch, targets)``, 0 at invalid targets. For
        normalized schemes they average exactly 1 over each row's valid targets (before
        interpolation, which keeps the average at 1).
    """
    scheme = Scheme.coerce(scheme)
    mask = _check_weight_inputs(long_nll, short_nll, scheme, mask)
    if scheme.is_uniform:
        return torch.ones_like(long_nll, dtype=torch.float32) if mask is None else mask.float()
    assert short_nll is not None  # _check_weight_inputs refused a missing one
    with torch.no_grad():
        d = _masked(compute_scores(long_nll, short_nll, scheme), mask)
        n = _valid_count(d, mask)
        if scheme.sparsification is not None:
            seeds = _row_seeds(d.shape[0], generator, tie_seeds)
            d = _top_fraction(d, mask, n, scheme.sparsification, seeds)
        if scheme.normalization == "l1":
            d = _l1_normalize(d, n)
        elif scheme.normalization == "softmax":
            d = _softmax_normalize(d, mask, n)
        if scheme.interpolation is not None:
            lam = scheme.interpolation
            d = d.mul_(1.0 - lam).add_(lam)
        d = _masked(d, mask)
    _check_overflow(d, scheme)
    return d.float()


def _check_weight_inputs(
    long_nll: Any, short_nll: Any, scheme: Scheme, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Validate :func:`compute_weights`' inputs; the checked mask (or ``None``)."""
    if not isinstance(long_nll, torch.Tensor):
        raise TokenWeightError(f"long_nll must be a torch.Tensor, got {type(long_nll).__name__}")
    mask = _check_mask(mask, long_nll)
    _check_nll("long_nll", long_nll, None, mask)
    if scheme.is_uniform:
        return mask
    if short_nll is None:
        raise TokenWeightError(f"scheme {scheme} needs short_nll, got None")
    if isinstance(short_nll, torch.Tensor) and short_nll.device != long_nll.device:
        raise TokenWeightError(
            f"short_nll is on {short_nll.device} but long_nll is on {long_nll.device}"
        )
    _check_nll("short_nll", short_nll, long_nll.shape, mask)
    return mask


def _masked(d: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``d`` with 0 at invalid targets (``mask`` False)."""
    if mask is None:
        return d
    return torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device))


def _valid_count(d: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``n``: valid targets per row, ``(batch, 1)``."""
    if mask is not None:
        return mask.sum(dim=-1, keepdim=True)
    return torch.full((d.shape[0], 1), d.shape[1], dtype=torch.long, device=d.device)


def _l1_normalize(d: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``n * d / sum |d|`` per row (in place); an all-zero row becomes all ones."""
    denom = d.abs().sum(dim=-1, keepdim=True)
    scale = torch.where(denom > 0, n / denom.clamp(min=torch.finfo(d.dtype).tiny), 0.0)
    # All-zero rows (scale 0) become 1; a row-wise add beats a broadcast where().
    return d.mul_(scale).add_((denom == 0).to(d.dtype))


def _softmax_normalize(d: torch.Tensor, mask: torch.Tensor | None, n: torch.Tensor) -> torch.Tensor:
    """``n * softmax(d)`` over each row's valid targets; an all-zero row becomes all ones."""
    logits = d if mask is None else torch.where(mask, d, -math.inf)
    all_zero = (logits == 0).logical_or_(logits == -math.inf).all(dim=-1, keepdim=True)
    soft = torch.softmax(logits, dim=-1).nan_to_num_(0.0)  # n == 0 rows: all -inf
    d = soft.mul_(n)
    if bool(all_zero.any()):
        d = torch.where(all_zero.expand_as(d), torch.ones_like(d), d)
    return d


def _check_overflow(d: torch.Tensor, scheme: Scheme) -> None:
    """Refuse non-finite weights from a transform that may overflow (``exp``) without a
    bound after it."""
    risky = [t.name for t in scheme.transforms if TRANSFORM_KINDS[t.name].may_overflow]
    overflow = bool(risky) and d.numel() > 0
    if overflow and not (bool(torch.isfinite(d.amax())) and bool(torch.isfinite(d.amin()))):
        raise TokenWeightError(
            f"scheme {scheme} produced non-finite weights (overflow in {risky[0]!r}); "
            "add a truncation gamma or a normalization"
        )


def weighted_nll_loss(
    long_nll: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor | None = None,
    num_items: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i w_i * l_i / count``: the token-weighted loss (a scalar).

    ``count`` is the number of valid targets (``mask.sum()``, or all targets without a
    mask) unless ``num_items`` is given: pass the global number of valid targets when
    gradients are accumulated over micro-batches or summed over processes, so that every
    target counts the same. Weights are detached; the gradient flows through
    ``long_nll`` only. Invalid targets contribute nothing, whatever their NLL.
    """
    if long_nll.shape != weights.shape:
        raise TokenWeightError(
            f"weights have shape {tuple(weights.shape)} but long_nll has {tuple(long_nll.shape)}"
        )
    if weights.device != long_nll.device:
        raise TokenWeightError(f"weights are on {weights.device} but long_nll on {long_nll.device}")
    weights = weights.detach().to(long_nll.dtype)
    mask = _check_mask(mask, long_nll)
    if mask is not None:
        terms = torch.where(mask, weights * long_nll, torch.zeros_like(long_nll))
        count: int | float | torch.Tensor = mask.sum()
    else:
        terms = weights * long_nll
        count = long_nll.numel()
    if num_items is not None:
        count = num_items
    if isinstance(count, torch.Tensor):
        count = count.to(device=long_nll.device, dtype=terms.dtype)
        return terms.sum() / count.clamp(min=1)
    return terms.sum() / max(float(count), 1.0)
