"""The record of a training run: which settings trained which steps.

A run may be stopped and continued (``tokenweight train CONFIG --resume``). Every
checkpoint's marker file records the run's *segments* up to that checkpoint: step ranges,
each with the settings that trained them. A resume continues the last segment when the
settings that shape the result are unchanged; when they differ it is refused, listing the
differences, unless the user allows it (``--allow-changed-settings``), and the resumed
steps form a new segment. ``train_summary.json`` ends with every segment.

*Settings that shape the result* are every config field except those in
:data:`FREE_SETTINGS` (raising ``train.max_steps``, logging, checkpoint cadence, reporting,
output-only and speed-only options), plus what the data holds: ``data.fingerprint`` (the
prepared manifest's content fingerprint, see :mod:`tokenweight.data.manifest`) and
``data.seq_len`` instead of ``data.path`` (moving the data folder changes nothing).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "FREE_SETTINGS",
    "changed_settings",
    "close_segments",
    "describe_changes",
    "describe_segments",
    "next_segments",
    "run_settings",
]

FREE_SETTINGS: tuple[str, ...] = (
    "train.max_steps",
    "train.output_dir",
    "train.save_steps",
    "train.save_total_limit",
    "train.logging_steps",
    "train.report_to",
    "train.run_name",
    "train.dataloader_num_workers",
    "train.training_arguments.disable_tqdm",
    "train.training_arguments.logging_dir",
    "train.training_arguments.logging_first_step",
    "train.training_arguments.logging_nan_inf_filter",
    "model.cache_dir",
    "model.gradient_checkpointing",
    "scorer.windows_per_batch",
    "scorer.device",
    "data.path",
)
"""Dotted config keys that may change between a run and its resume without
``--allow-changed-settings``: they change how long it runs, what is logged or saved and
where, or its speed and memory, not what a step computes."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, tuple):
        data = list(data)
    return {prefix: data}


def run_settings(config_dict: Mapping[str, Any], fingerprint: str, seq_len: int) -> dict[str, Any]:
    """The settings that shape a run, flat by dotted key: ``config_dict`` (a
    :meth:`~tokenweight.training.config.Config.to_dict`) without :data:`FREE_SETTINGS`,
    plus ``data.fingerprint`` and ``data.seq_len`` (of the data actually loaded)."""
    flat = _flatten(dict(config_dict))
    kept = {k: v for k, v in flat.items() if k not in FREE_SETTINGS}
    kept["data.fingerprint"] = fingerprint
    kept["data.seq_len"] = int(seq_len)
    return dict(sorted(kept.items()))


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose value differs (or exists on one side only), sorted."""
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def _short(value: Any, limit: int = 60) -> str:
    text = "(unset)" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """``scheme: dense:0.75 -> uniform; data.seq_len: 32 -> 64`` for the changed keys."""
    return "; ".join(
        f"{k}: {_short(before.get(k))} -> {_short(now.get(k))}"
        for k in changed_settings(before, now)
    )


def next_segments(
    earlier: Sequence[Mapping[str, Any]], first_step: int, settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The run's segments once steps ``first_step`` on run with ``settings``: the
    ``earlier`` ones cut to end before ``first_step`` (steps trained after the resumed
    checkpoint were lost and are trained again), the last one extended when its settings
    are the same, else a new one. Each segment: ``{"steps": [first, last], "settings":
    {...}}``; the open one's last step is ``None`` until a checkpoint or the end."""
    out: list[dict[str, Any]] = []
    for seg in earlier:
        lo, hi = seg["steps"]
        if lo >= first_step:
            break
        out.append({"steps": [lo, min(hi, first_step - 1)], "settings": dict(seg["settings"])})
    if out and out[-1]["settings"] == dict(settings):
        out[-1]["steps"] = [out[-1]["steps"][0], None]
    else:
        out.append({"steps": [first_step, None], "settings": dict(settings)})
    return out


def close_segments(segments: Sequence[Mapping[str, Any]], last_step: int) -> list[dict[str, Any]]:
    """``segments`` with the open one ending at ``last_step``."""
    out: list[dict[str, Any]] = [
        {"steps": list(s["steps"]), "settings": dict(s["settings"])} for s in segments
    ]
    if out:
        out[-1]["steps"] = [out[-1]["steps"][0], last_step]
    return out


def describe_segments(segments: Sequence[Mapping[str, Any]]) -> str:
    """``steps 1-2 and 3-4 ran with different settings (step 3: scheme: dense:0.75 ->
    uniform)``; empty for a run whose steps all ran with the same settings."""
    if len(segments) < 2:
        return ""
    ranges = ", ".join(f"{s['steps'][0]}-{s['steps'][1]}" for s in segments)
    changes = "; ".join(
        f"from step {b['steps'][0]}: {describe_changes(a['settings'], b['settings'])}"
        for a, b in itertools.pairwise(segments)
    )
    return f"steps {ranges} ran with different settings ({changes})"
