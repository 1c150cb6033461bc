"""Evaluation: perplexity by position, LongPPL, offline retrieval probes, plots, report.

Modules, one job each: :mod:`.tasks` (the task table :data:`.tasks.EVAL_TASKS`, no
torch), :mod:`.metrics` (pure functions on NLL tensors), :mod:`.text_tasks` (the text
tasks' code), :mod:`.probes` (prompt generation and exact-match scoring),
:mod:`.generate` (batched greedy decoding), :mod:`.sequences` (evaluation data),
:mod:`.perplexity` (long / short context NLL of a model), :mod:`.plots` (PNG figures),
:mod:`.report` (results.md / results.json), :mod:`.config` (:class:`EvalConfig`,
:class:`ModelSpec`, no torch) and :mod:`.runner` (:func:`evaluate_models`, the recipe that
ties them together, its steps in :mod:`.preflight`, :mod:`.loading`, :mod:`.text_run` and
:mod:`.probe_run`).

``import tokenweight.evaluation`` is light: the names below load from their module on
first use, so the task table (no torch) serves help texts and config checks without
importing torch. The task name lists (``ALL_TASKS``, ``PROBE_TASKS``, ``TASKS``, the
old name of ``PROBE_TASKS``) are read from the table at every use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenweight.evaluation.config import EvalConfig, ModelSpec
    from tokenweight.evaluation.metrics import (
        BucketStat,
        LongPPLResult,
        key_token_mask,
        longppl,
        position_bucket_nll,
        position_curve,
    )
    from tokenweight.evaluation.probes import (
        PROBE_TASKS,
        TASKS,
        Probe,
        make_probe,
        make_probes,
        match_all,
        match_first,
    )
    from tokenweight.evaluation.runner import ALL_TASKS, evaluate_models
    from tokenweight.evaluation.tasks import EVAL_TASKS, EvalTask, TaskSetting, register_eval_task

# public name -> the module defining it (imported on first use)
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "BucketStat",
            "LongPPLResult",
            "key_token_mask",
            "longppl",
            "position_bucket_nll",
            "position_curve",
        ),
        "tokenweight.evaluation.metrics",
    ),
    **dict.fromkeys(
        ("PROBE_TASKS", "TASKS", "Probe", "make_probe", "make_probes", "match_all", "match_first"),
        "tokenweight.evaluation.probes",
    ),
    **dict.fromkeys(("EvalConfig", "ModelSpec"), "tokenweight.evaluation.config"),
    **dict.fromkeys(("ALL_TASKS", "evaluate_models"), "tokenweight.evaluation.runner"),
    **dict.fromkeys(
        ("EVAL_TASKS", "EvalTask", "TaskSetting", "register_eval_task"),
        "tokenweight.evaluation.tasks",
    ),
}
# names computed from the task table at every use (never cached here)
_LIVE = {"ALL_TASKS", "PROBE_TASKS", "TASKS"}

__all__ = [
    "ALL_TASKS",
    "EVAL_TASKS",
    "PROBE_TASKS",
    "TASKS",
    "BucketStat",
    "EvalConfig",
    "EvalTask",
    "LongPPLResult",
    "ModelSpec",
    "Probe",
    "TaskSetting",
    "evaluate_models",
    "key_token_mask",
    "longppl",
    "make_probe",
    "make_probes",
    "match_all",
    "match_first",
    "position_bucket_nll",
    "position_curve",
    "register_eval_task",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    if name not in _LIVE:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
