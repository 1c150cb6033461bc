"""The scorer kinds: one table of what each kind needs and how it is built.

A scorer gives the short-context NLL ``s`` of every target (``docs/method.md#scorers``).
Each kind is a :class:`ScorerKind` entry of :data:`SCORERS`: whether it uses short
windows (``scorer.window``), a model of its own (``scorer.model``: unused, optional or
required), scores stored with the data by ``tokenweight score``, and a forward pass per
training step. Every consumer reads the table: training config validation, ``train``,
``study``, ``pipeline``, their reports and the CLI help. Adding a kind is one entry here
(:func:`register_scorer_kind`) plus the code that builds it.

This module imports no torch: the builders are named as ``"module:function"`` and loaded
on use, so ``--help`` and config checks stay fast.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "DEFAULT_SCORER",
    "SCORERS",
    "SCORER_KINDS",
    "ScorerInputs",
    "ScorerKind",
    "build_scorer",
    "one_model_kinds",
    "register_scorer_kind",
    "scorer_kind",
    "scorer_kinds",
    "stored_scores_kind",
    "uniform_kind",
]

#: What ``scorer.model`` means for a kind.
MODEL_USES = ("unused", "optional", "required")


@dataclass(frozen=True)
class ScorerInputs:
    """What a builder may use: the window settings (tokens), the scorer's own model (a
    loaded model; ``None`` when the kind uses none) and ``model_kwargs`` for
    :class:`tokenweight.core.scoring.ModelScorer` (``tokenizer``, ``reference``,
    ``reference_tokenizer``, ``device``)."""

    window: int | None = None
    stride: int | None = None
    bos_token_id: int | None = None
    windows_per_batch: int | None = None
    scorer_model: Any = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScorerKind:
    """One scorer kind.

    Attributes:
        name: what configs write (``scorer.kind``).
        summary: one line for help texts and docs.
        builder: the function that takes :class:`ScorerInputs` and returns the scorer,
            or its ``"module:function"`` name (loaded on first use). ``None``: no
            scorer (uniform loss only).
        window: needs ``scorer.window`` (short windows over the sequence).
        model: ``scorer.model`` is ``unused``, ``optional`` (default: ``model.source`` at
            its original RoPE settings) or ``required``; a kind that uses a model has it
            loaded, frozen, by ``train``.
        stored_scores: reads ``short_nll`` stored by ``tokenweight score``.
        forward_per_step: costs a forward pass without gradient every training step.
        describe: how reports say where ``s`` came from (after "Short-context NLL came
            from").
        card: how a model card states the scorer; ``{model}`` is ``scorer.model`` (or
            "the start model") and ``{windows}`` the window settings (", window 8192").
        aliases: older spellings still accepted, with a deprecation message.
    """

    name: str
    summary: str
    builder: str | Callable[[ScorerInputs], Any] | None
    window: bool = False
    model: str = "unused"
    stored_scores: bool = False
    forward_per_step: bool = False
    describe: str = ""
    card: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model not in MODEL_USES:
            raise TokenWeightError(f"scorer kind {self.name!r}: model must be one of {MODEL_USES}")

    @property
    def uniform_only(self) -> bool:
        """No scorer at all: only the uniform scheme trains with it."""
        return self.builder is None

    @property
    def uses_model(self) -> bool:
        return self.model != "unused"

    def build(self, inputs: ScorerInputs) -> Any:
        """The scorer (``None`` for a uniform-only kind)."""
        if self.builder is None:
            return None
        if callable(self.builder):
            return self.builder(inputs)
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(inputs)


#: The table: name -> kind, in the order help texts list them.
SCORERS: dict[str, ScorerKind] = {}
_ALIASES: dict[str, str] = {}


def register_scorer_kind(kind: ScorerKind) -> ScorerKind:
    """Add ``kind`` to :data:`SCORERS` (a name or alias already taken is an error)."""
    for name in (kind.name, *kind.aliases):
        if name in SCORERS or name in _ALIASES:
            raise TokenWeightError(f"scorer kind {name!r} is already registered")
    SCORERS[kind.name] = kind
    _ALIASES.update(dict.fromkeys(kind.aliases, kind.name))
    return kind


for _kind in (
    ScorerKind(
        "self",
        "the model being trained, short windows without gradient every step",
        "tokenweight.core.scoring:build_self_scorer",
        window=True,
        forward_per_step=True,
        describe="the model being trained, at every step",
        card="self: the model being trained{windows}",
    ),
    ScorerKind(
        "model",
        "a frozen model (scorer.model; default: model.source), short windows every step",
        "tokenweight.core.scoring:build_model_scorer",
        window=True,
        model="optional",
        forward_per_step=True,
        describe="a frozen model, at every step",
        card="model: frozen model {model}{windows}",
    ),
    ScorerKind(
        "reference",
        "a frozen reference model (scorer.model) over the full sequence, Rho-1 style",
        "tokenweight.core.reference_scorer:build_reference_scorer",
        model="required",
        forward_per_step=True,
        describe="a frozen reference model over the full sequence, at every step",
        card="reference model {model} over the full sequence",
    ),
    ScorerKind(
        "precomputed",
        "short_nll stored with the data by `tokenweight score` (the paper's frozen scorer)",
        "tokenweight.core.scoring:build_precomputed_scorer",
        stored_scores=True,
        describe="the frozen start model, computed once ahead of training",
        card="precomputed (short-context NLL stored with the data by `tokenweight score`)",
        aliases=("frozen",),
    ),
    ScorerKind(
        "none",
        "no scorer: the uniform scheme only (plain cross-entropy)",
        None,
        card="none (uniform weights: plain cross-entropy)",
    ),
):
    register_scorer_kind(_kind)


def scorer_kinds() -> tuple[str, ...]:
    """The names of the kinds registered now, in table order."""
    return tuple(SCORERS)


#: The kind ``scorer.kind`` defaults to.
DEFAULT_SCORER = "self"

#: The names at import (``scorer_kinds()`` also sees kinds registered later).
SCORER_KINDS = scorer_kinds()


def scorer_kind(name: str, what: str = "scorer.kind") -> ScorerKind:
    """The kind called ``name`` (case-insensitive; an alias warns and resolves). ``what``
    names the config key in the error message."""
    text = str(name).strip().lower()
    if text in _ALIASES:
        new = _ALIASES[text]
        warnings.warn(
            f"{what}: {text!r} is now called {new!r}; the old name will be removed",
            FutureWarning,
            stacklevel=3,
        )
        text = new
    kind = SCORERS.get(text)
    if kind is None:
        raise TokenWeightError(f"{what}: unknown scorer {name!r}; allowed: {', '.join(SCORERS)}")
    return kind


def uniform_kind() -> ScorerKind:
    """The kind without a scorer (``none``): what the uniform scheme trains with."""
    return next(k for k in SCORERS.values() if k.uniform_only)


def stored_scores_kind() -> ScorerKind:
    """The first kind that reads scores stored by ``tokenweight score``."""
    return next(k for k in SCORERS.values() if k.stored_scores)


def one_model_kinds() -> tuple[str, ...]:
    """The kinds that weight a scheme with no model beyond the one trained (or its
    start): what a workflow with a single model (``tokenweight pipeline``) can offer."""
    return tuple(k.name for k in SCORERS.values() if not k.uniform_only and not k.uses_model)


def build_scorer(name: str, inputs: ScorerInputs) -> Any:
    """The scorer of kind ``name`` from ``inputs`` (``None`` for ``none``)."""
    return scorer_kind(name).build(inputs)
