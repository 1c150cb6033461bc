"""Evaluation: perplexity by position, LongPPL, offline retrieval probes, plots, report.

Modules, one job each: :mod:`.metrics` (pure functions on NLL tensors),
:mod:`.probes` (prompt generation and exact-match scoring), :mod:`.generate` (batched
greedy decoding), :mod:`.sequences` (evaluation data), :mod:`.perplexity` (long / short
context NLL of a model), :mod:`.plots` (PNG figures), :mod:`.report` (results.md /
results.json) and :mod:`.runner` (:func:`evaluate_models`, which ties them together).
"""

from __future__ import annotations

from tokenweight.evaluation.metrics import (
    BucketStat,
    LongPPLResult,
    key_token_mask,
    longppl,
    position_bucket_nll,
    position_curve,
)
from tokenweight.evaluation.probes import (
    TASKS,
    Probe,
    make_probe,
    make_probes,
    match_all,
    match_first,
)
from tokenweight.evaluation.runner import ALL_TASKS, EvalConfig, ModelSpec, evaluate_models

__all__ = [
    "ALL_TASKS",
    "TASKS",
    "BucketStat",
    "EvalConfig",
    "LongPPLResult",
    "ModelSpec",
    "Probe",
    "evaluate_models",
    "key_token_mask",
    "longppl",
    "make_probe",
    "make_probes",
    "match_all",
    "match_first",
    "position_bucket_nll",
    "position_curve",
]
