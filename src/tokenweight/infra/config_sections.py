"""Sections of one config embedded in another: a workflow's config holding the training
config's own sections.

A workflow that trains (``tokenweight demo``'s pipeline) does not restate the training
settings; its config has fields whose types are the training config's section dataclasses
(:class:`tokenweight.training.config.TrainConfig`, ...), declared with :func:`section`::

    @dataclass
    class PipelineConfig:
        train: TrainConfig = section(
            TrainConfig,
            defaults={"max_steps": 8, "learning_rate": 5e-5},  # the workflow's own
            shorthand=("max_steps", "learning_rate"),  # max_steps=50 == train.max_steps=50
            fixed={"output_dir": "each run goes to work_dir/runs/<scheme>"},
        )

        def __post_init__(self) -> None:
            coerce_sections(self)

Each field of the section keeps its type, checks and default; ``defaults`` replaces some
defaults for this workflow, and a section the user writes in part is merged onto them.
``shorthand`` names fields that may also be written at the top level of the workflow's
config (in a file or as a ``key=value`` override); giving both spellings in one file is an
error. ``scalar`` names the field that a plain value of the whole section sets
(``model: smollm2`` is ``model: {source: smollm2}``). ``fixed`` names the fields the
workflow sets itself, with what decides them; a user giving one gets an error naming it.

:func:`expand_config` turns a mapping read from YAML plus overrides into the nested form
:func:`tokenweight.infra.schema.build_dataclass` validates; :func:`plain_config` is the reverse
(without the fixed fields: what ``--print-config`` prints, and reads back equal);
:func:`flat_settings` lists ``(dotted key, value)`` rows for reports. The training config
is then built from the sections by
:func:`tokenweight.training.config.config_from_sections`, so its own checks run on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import apply_overrides, build_dataclass

__all__ = [
    "Section",
    "coerce_sections",
    "expand_config",
    "flat_settings",
    "plain_config",
    "section",
    "sections_of",
    "shorthand_of",
]


@dataclass(frozen=True)
class Section:
    """How a workflow's config embeds the section dataclass ``cls`` (see the module
    docstring for ``defaults``, ``shorthand``, ``scalar`` and ``fixed``)."""

    cls: type
    defaults: Mapping[str, Any] = field(default_factory=dict)
    shorthand: tuple[str, ...] = ()
    scalar: str | None = None
    fixed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self.cls)}
        named = [*self.defaults, *self.shorthand, *self.fixed]
        if self.scalar is not None:
            named.append(self.scalar)
        stray = [n for n in named if n not in names]
        if stray:  # a mistake in the declaring module, not in a user's config
            raise TypeError(f"{self.cls.__name__} has no field(s) {stray}")
        both = set(self.fixed) & (set(self.defaults) | set(self.shorthand))
        if both:
            raise TypeError(f"fixed fields cannot have defaults or shorthand: {sorted(both)}")

    def prepare(self, value: Any, key: str) -> Any:
        """The raw value of the section (from YAML or an override) with the workflow's
        defaults under it; a fixed field is a :class:`TokenWeightError` naming it."""
        if isinstance(value, self.cls):
            return value
        if self.scalar is not None and value is not None and not isinstance(value, Mapping):
            value = {self.scalar: value}
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            return value  # build_dataclass says what was expected
        for name in value:
            if str(name) in self.fixed:
                raise TokenWeightError(f"{key}.{name}: {self.fixed[str(name)]}; remove it")
        return {**self.defaults, **value}

    def default(self) -> Any:
        """The section with the workflow's defaults."""
        return build_dataclass(self.cls, dict(self.defaults), self.cls.__name__)


def section(
    cls: type,
    *,
    defaults: Mapping[str, Any] | None = None,
    shorthand: Sequence[str] = (),
    scalar: str | None = None,
    fixed: Mapping[str, str] | None = None,
) -> Any:
    """A dataclass field holding the section ``cls`` embedded in a larger config (see the
    module docstring). Returns what :func:`dataclasses.field` returns."""
    spec = Section(cls, dict(defaults or {}), tuple(shorthand), scalar, dict(fixed or {}))
    return field(default_factory=spec.default, metadata={"section": spec, "before": spec.prepare})


def sections_of(cls: type) -> dict[str, Section]:
    """The embedded sections of the config dataclass ``cls``, by field name."""
    return {
        f.name: f.metadata["section"]
        for f in dataclasses.fields(cls)
        if isinstance(f.metadata.get("section"), Section)
    }


def shorthand_of(cls: type) -> dict[str, str]:
    """Top-level shorthand key -> the section that holds it (``max_steps`` -> ``train``)."""
    out: dict[str, str] = {}
    for name, spec in sections_of(cls).items():
        for key in spec.shorthand:
            out[key] = name
    return out


def coerce_sections(config: Any) -> None:
    """Validate, in place, every section of ``config`` not already of its type (for a
    ``__post_init__``: ``Config(scorer="self")`` or ``Config(train={"max_steps": 3})``)."""
    for name, spec in sections_of(type(config)).items():
        value = getattr(config, name)
        if not isinstance(value, spec.cls):
            setattr(config, name, build_dataclass(spec.cls, spec.prepare(value, name), name))


# ------------------------------------------------------------------ reading
def _nest(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with shorthand keys moved into their sections and plain section values
    given to the section's scalar field; unknown top-level keys refused."""
    specs = sections_of(cls)
    short = shorthand_of(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    out = dict(data)
    for key in out:
        if str(key) not in known and str(key) not in short:
            shorthand = ", ".join(f"{k} ({s}.{k})" for k, s in short.items())
            raise TokenWeightError(
                f"{key}: unknown key; allowed: {', '.join(known)}; and, short for a "
                f"section's key: {shorthand}"
            )
    for name, spec in specs.items():
        value = out.get(name)
        if spec.scalar is not None and value is not None and not isinstance(value, Mapping):
            out[name] = {spec.scalar: value}
    for key, name in short.items():
        if key not in out:
            continue
        value = out.pop(key)
        node = out.get(name)
        if node is None:
            node = {}
        if not isinstance(node, Mapping):
            raise TokenWeightError(f"{name}: expected a mapping of keys, got {node!r}")
        if key in node:
            raise TokenWeightError(
                f"{key} and {name}.{key}: the same setting given twice; keep one"
            )
        out[name] = {**node, key: value}
    return out


def expand_config(
    cls: type, data: Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The nested mapping for :func:`~tokenweight.infra.schema.build_dataclass` from ``data`` (as
    read from YAML) and ``key=value`` overrides (applied last), shorthand and plain section
    values resolved in both."""
    specs = sections_of(cls)
    short = shorthand_of(cls)

    def rename(parts: list[str], value: Any) -> list[str]:
        if parts[0] in short:
            return [short[parts[0]], *parts]
        spec = specs.get(parts[0])
        plain = value is not None and not isinstance(value, Mapping)
        if len(parts) == 1 and spec is not None and spec.scalar is not None and plain:
            return [parts[0], spec.scalar]
        return parts

    return apply_overrides(_nest(cls, data), overrides, rename=rename)


# ------------------------------------------------------------------ writing
def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def plain_config(config: Any) -> dict[str, Any]:
    """``config`` as plain nested data (lists, mappings, numbers, text), without the fixed
    fields of its sections: the mapping that reads back to an equal config."""
    specs = sections_of(type(config))
    out = {}
    for f in dataclasses.fields(config):
        value = _plain(getattr(config, f.name))
        spec = specs.get(f.name)
        if spec is not None:
            value = {k: v for k, v in value.items() if k not in spec.fixed}
        out[f.name] = value
    return out


def flat_settings(config: Any) -> list[tuple[str, Any]]:
    """``(key, value)`` rows of :func:`plain_config`, a section's fields as
    ``section.field`` rows."""
    rows: list[tuple[str, Any]] = []
    specs = sections_of(type(config))
    for name, value in plain_config(config).items():
        if name in specs:
            rows += [(f"{name}.{k}", v) for k, v in value.items()]
        else:
            rows.append((name, value))
    return rows
