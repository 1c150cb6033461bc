"""Config schemas: validate plain mappings (read from YAML) into typed dataclasses.

A config section is a dataclass; :func:`build_dataclass` converts each value to the field's
type (numbers, booleans, text, lists, tuples, mappings, ``Literal``, optional and union
types, nested dataclasses, and types with a ``coerce`` classmethod such as
:class:`tokenweight.core.weighting.Scheme`) and applies the field's metadata:

- ``checked(fn)``: ``fn(value)`` returns a problem (``"must be > 0"``) or ``None``;
- ``one_of(*options)``: the value, lower-cased, must be one of the options;
- ``before``: ``fn(value, key)`` prepares the raw value before it is converted (used by
  :func:`tokenweight.infra.config_sections.section` for a section embedded in another config).

Every error is a :class:`TokenWeightError` naming the dotted key, e.g.
``train.learning_rate: expected a number, got 'abc'``. :func:`apply_overrides` applies
``key.sub=value`` command-line overrides to a mapping before it is validated. The training
config, the pipeline config and the study config all use this module.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import yaml

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "apply_overrides",
    "at_least_two",
    "build_dataclass",
    "checked",
    "non_negative",
    "one_of",
    "one_of_table",
    "positive",
    "probability",
    "require",
    "seed_range",
]


# ------------------------------------------------------------------ field checks
# Field metadata read by build_dataclass: ``checked(fn)`` (fn returns a problem or None)
# and ``one_of(*options)``.
def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def at_least_two(value: int) -> str | None:
    return None if value >= 2 else "must be >= 2"


def seed_range(value: int) -> str | None:
    """Random seeds: what numpy and torch accept, ``[0, 2**32 - 1]``."""
    return None if 0 <= value < 2**32 else "must be in [0, 4294967295]"


def probability(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def require(value: Any, rule: Callable[[Any], str | None], name: str) -> Any:
    """``value`` if ``rule`` finds no problem with it; else :class:`TokenWeightError`
    naming ``name`` (the flag or dotted key the user wrote), e.g.
    ``require(args.seed, seed_range, "--seed")``."""
    problem = rule(value)
    if problem:
        raise TokenWeightError(f"{name} {problem}, got {_describe(value)}")
    return value


def checked(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


def one_of(*options: str) -> dict[str, Any]:
    return {"choices": options}


def one_of_table(options: Mapping[str, Any] | Callable[[], Sequence[str]]) -> dict[str, Any]:
    """Like :func:`one_of`, the options being the keys of a table (or what a function
    returns) when a value is checked: a registry may grow after import."""
    return {"choices": options}


def _choices(meta: Mapping[str, Any]) -> Sequence[str]:
    options = meta["choices"]
    return tuple(options()) if callable(options) else tuple(options)


# ------------------------------------------------------------------ conversion
def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        inner = args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
        return inner, optional
    return tp, False


def _to_number(value: Any, key: str, kind: type) -> Any:
    if isinstance(value, bool):
        raise TokenWeightError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, str):
        # PyYAML reads '2e-5' and '15.3e6' as text (YAML 1.1); accept numeric text.
        try:
            value = float(value.replace("_", "")) if kind is float else int(value, 0)
        except ValueError:
            what = "a number" if kind is float else "a whole number"
            raise TokenWeightError(f"{key}: expected {what}, got {value!r}") from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise TokenWeightError(f"{key}: expected a whole number, got {_describe(value)}")
        return value
    if not isinstance(value, (int, float)):
        raise TokenWeightError(f"{key}: expected a number, got {_describe(value)}")
    if not math.isfinite(float(value)):
        raise TokenWeightError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _convert(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise TokenWeightError(f"{key}: must be set (got null)")
    coerce = getattr(inner, "coerce", None)
    if isinstance(inner, type) and callable(coerce):  # e.g. Scheme: text or a mapping
        try:
            return coerce(value)
        except TokenWeightError as exc:
            raise TokenWeightError(f"{key}: {exc}") from None
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        return build_dataclass(inner, value, key)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise TokenWeightError(f"{key}: expected true or false, got {_describe(value)}")
    if inner in (int, float):
        return _to_number(value, key, inner)
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TokenWeightError(f"{key}: expected text, got {_describe(value)}")
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. list[str] | str, str | dict
        errors = []
        for option in args:
            try:
                return _convert(value, option, key)
            except TokenWeightError as exc:
                errors.append(str(exc).removeprefix(f"{key}: "))
        raise TokenWeightError(f"{key}: {' or '.join(errors)}")
    if origin is list:
        if isinstance(value, str) and args and args[0] is str:
            return [value]  # report_to: wandb  ==  report_to: [wandb]
        if not isinstance(value, (list, tuple)):
            raise TokenWeightError(f"{key}: expected a list, got {_describe(value)}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TokenWeightError(
                f"{key}: expected a list of {len(args)} values, got {_describe(value)}"
            )
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise TokenWeightError(f"{key}: expected a mapping, got {_describe(value)}")
        return {str(k): v for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise TokenWeightError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a bug in this module


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """Validate a mapping into the dataclass ``cls`` (field types and ``choices`` /
    ``check`` metadata); errors name the dotted key under ``prefix``."""
    where = prefix or "config"
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TokenWeightError(f"{where}: expected a mapping of keys, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if str(k) not in known]
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise TokenWeightError(
            f"{name}: unknown key; allowed{' in ' + prefix if prefix else ''}: {', '.join(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        meta = known[name].metadata
        if "before" in meta:
            value = meta["before"](value, key)
        converted = _convert(value, hints[name], key)
        if converted is not None and "choices" in meta:
            text = str(converted).lower()
            choices = _choices(meta)
            if text not in choices:
                raise TokenWeightError(
                    f"{key}: expected one of {', '.join(choices)}, got {value!r}"
                )
            converted = text
        if converted is not None and "check" in meta:
            problem = meta["check"](converted)
            if problem:
                raise TokenWeightError(f"{key}: {problem}, got {value!r}")
        kwargs[str(name)] = converted
    return cls(**kwargs)


# ------------------------------------------------------------------ overrides
def apply_overrides(
    data: Mapping[str, Any],
    overrides: Sequence[str],
    rename: Callable[[list[str], Any], list[str]] | None = None,
) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are read as YAML (``3e-5``, ``null``).

    ``rename(parts, value)``, when given, maps the key's dotted parts to the ones to set
    (e.g. a shorthand ``max_steps`` to ``train.max_steps``)."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        key, eq, raw = text.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise TokenWeightError(
                f"override {text!r}: expected key.sub=value, e.g. train.learning_rate=3e-5"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # e.g. an unbalanced bracket; let validation judge the text
        parts = key.split(".")
        if rename is not None:
            parts = rename(parts, value)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise TokenWeightError(
                    f"override {text!r}: {where} is {child!r}, not a mapping; "
                    f"set {where}=... as a whole"
                )
            node = child
        node[parts[-1]] = value
    return out
