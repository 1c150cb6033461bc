"""Evaluate one or more models side by side; write results.json, results.md and PNGs.

The tasks are the table :data:`~tokenweight.evaluation.tasks.EVAL_TASKS`:

- text tasks, on evaluation sequences (``data``): the runner computes each model's
  long-context NLL once and hands it to every text task's code
  (:mod:`tokenweight.evaluation.text_tasks`: perplexity by position, LongPPL). LongPPL's
  key tokens are judged by an *evaluator*: by default each model itself (its long NLL
  against its own short-window NLL), or with ``evaluator`` one fixed model for all (its
  long and short NLL), so that every model is measured on the same key tokens, as in Fang
  et al. (``docs/method.md#evaluation``);
- probes: greedy answers to offline retrieval prompts
  (:mod:`tokenweight.evaluation.probes`) at every ``length x depth x trial``, exact-match
  scored.

Models are loaded one at a time and released before the next is loaded.

This module is the recipe, its steps named functions of their own modules: the settings
(:mod:`tokenweight.evaluation.config`), the checks before any model call
(:mod:`tokenweight.evaluation.preflight`), loading and releasing each model
(:mod:`tokenweight.evaluation.loading`), its text tasks
(:mod:`tokenweight.evaluation.text_run`) and its probes
(:mod:`tokenweight.evaluation.probe_run`); the recipe then writes the results
(:mod:`tokenweight.evaluation.report`). ``EvalConfig`` and ``ModelSpec`` stay importable
from here.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenweight.evaluation.config import EvalConfig, ModelSpec, as_spec
from tokenweight.evaluation.loading import LoadedModel
from tokenweight.evaluation.preflight import check_before_computing
from tokenweight.evaluation.probe_run import run_probes
from tokenweight.evaluation.probes import Probe
from tokenweight.evaluation.tasks import TEXT, task_names
from tokenweight.evaluation.text_run import (
    load_evaluator_key_tokens,
    run_text_tasks,
    uses_evaluator,
)
from tokenweight.evaluation.text_tasks import KeyTokens
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.models import rope_theta

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_TASKS",  # noqa: F822 (module __getattr__: read from the task table)
    "EvalConfig",
    "ModelSpec",
    "evaluate_models",
    "run_evaluation",
]


def __getattr__(name: str) -> Any:
    """The task names of the table, read when asked (tasks registered later included):
    ``ALL_TASKS`` (every task) and ``TEXT_TASKS`` (those that need ``data``)."""
    if name == "ALL_TASKS":
        return task_names()
    if name == "TEXT_TASKS":
        return task_names(TEXT)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _same_model(spec: ModelSpec, evaluator: ModelSpec | None) -> bool:
    """Whether ``spec`` loads exactly the LongPPL evaluator (same source, or same object)."""
    if evaluator is None:
        return False
    if spec.model is not None or evaluator.model is not None:
        return spec.model is not None and spec.model is evaluator.model
    return spec.source is not None and spec.source == evaluator.source


def _model_entry(spec: ModelSpec, model: Any, load_s: float) -> dict[str, Any]:
    """The start of a model's results: what it is and how long it took to load."""
    config = getattr(model, "config", None)
    return {
        "label": spec.label,
        "source": spec.source,
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "rope_theta": rope_theta(config),
        "timing": {"load_s": load_s},
    }


def _evaluate_one(
    spec: ModelSpec,
    cfg: EvalConfig,
    load_kwargs: dict[str, Any],
    progress: bool,
    key_tokens: KeyTokens | None,
    probe_cache: dict[tuple, list[Probe]],
    is_evaluator: bool = False,
) -> dict[str, Any]:
    """Load one model, run every task on it, release it; its entry of ``results.json``."""
    with LoadedModel(spec, load_kwargs) as (model, tokenizer, load_s):
        entry = _model_entry(spec, model, load_s)
        if cfg.text_tasks:
            args = (cfg, key_tokens, is_evaluator, progress)
            run_text_tasks(entry, spec, model, tokenizer, *args)
        if cfg.probe_tasks:
            run_probes(entry, spec, model, tokenizer, cfg, probe_cache, progress)
    return entry


def _check_out_dir(out_dir: str | Path | None) -> None:
    """Step: refuse an output folder holding files this command did not write."""
    if out_dir is None:
        return
    from tokenweight.evaluation.report import EVAL_FILES
    from tokenweight.infra.files import check_output_dir

    check_output_dir(out_dir, "tokenweight eval output", markers=EVAL_FILES[:1], known=EVAL_FILES)


def _model_specs(models: Sequence[ModelSpec | str | tuple[str, Any, Any]]) -> list[ModelSpec]:
    """Step: the models to evaluate, with distinct labels."""
    specs = [as_spec(m) for m in models]
    if not specs:
        raise TokenWeightError("give at least one model to evaluate")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise TokenWeightError(
            f"model labels must differ, got {', '.join(labels)}; name them LABEL=SOURCE"
        )
    return specs


def _results_header(cfg: EvalConfig, evaluator: ModelSpec | str | None) -> dict[str, Any]:
    """The start of ``results.json``: version and settings (with the LongPPL evaluator's
    label), no models yet."""
    from tokenweight import __version__

    settings = cfg.as_dict()
    label = None if evaluator is None else str(getattr(evaluator, "label", evaluator))
    settings["longppl_evaluator"] = label
    return {"tokenweight_version": __version__, "settings": settings, "models": []}


def _evaluator_argument(
    evaluator: ModelSpec | str | None, scorer: ModelSpec | str | None
) -> ModelSpec | str | None:
    """``evaluator``, or ``scorer``, its old name (with a deprecation message)."""
    if scorer is None:
        return evaluator
    warnings.warn(
        "the scorer argument is now called evaluator (the LongPPL evaluator); the old name "
        "will be removed",
        FutureWarning,
        stacklevel=3,
    )
    if evaluator is not None:
        raise TokenWeightError(
            "give the LongPPL evaluator once, as evaluator (scorer is its old name)"
        )
    return scorer


def _write_results(results: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
    """Step: the JSON-safe results, written with the report and figures to ``out_dir``."""
    results = _clean(results)
    if out_dir is not None:
        from tokenweight.evaluation.report import write_outputs

        results["files"] = write_outputs(results, out_dir)
    return results


def run_evaluation(
    models: Sequence[ModelSpec | str | tuple[str, Any, Any]],
    cfg: EvalConfig,
    *,
    out_dir: str | Path | None,
    evaluator: ModelSpec | str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    scorer: ModelSpec | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` with the settings ``cfg``; the recipe behind
    :func:`evaluate_models` (which documents the arguments and the result; ``scorer`` is
    the old name of ``evaluator``)."""
    evaluator = _evaluator_argument(evaluator, scorer)
    _check_out_dir(out_dir)
    specs = _model_specs(models)
    load_kwargs = {"device": "auto", **(load_kwargs or {})}
    key_tokens, evaluator_spec = None, None
    if evaluator is not None and uses_evaluator(cfg):
        evaluator_spec = as_spec(evaluator)
    probe_cache: dict[tuple, list[Probe]] = {}
    check_before_computing(specs, evaluator_spec, cfg, load_kwargs, probe_cache)
    if evaluator_spec is not None:
        key_tokens = load_evaluator_key_tokens(evaluator_spec, cfg, load_kwargs, progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results = _results_header(cfg, evaluator)
    for spec in specs:
        is_evaluator = _same_model(spec, evaluator_spec)
        entry = _evaluate_one(
            spec, cfg, load_kwargs, progress, key_tokens, probe_cache, is_evaluator
        )
        results["models"].append(entry)
    return _write_results(results, out_dir)


def evaluate_models(
    models: Sequence[ModelSpec | str | tuple[str, Any, Any]],
    *,
    out_dir: str | Path | None,
    config: EvalConfig | None = None,
    evaluator: ModelSpec | str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    scorer: ModelSpec | str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``models`` side by side and (with ``out_dir``) write every output file.

    Args:
        models: ``ModelSpec``, ``"LABEL=SOURCE"`` text, or ``(label, model, tokenizer)``.
        out_dir: folder for ``results.json``, ``results.md`` and PNGs (``None``: no files).
        config: the evaluation settings as an :class:`EvalConfig`; or, instead, give them
            as keyword ``settings`` named as its settings (not both):
        tasks: names of the task table
            (:data:`~tokenweight.evaluation.tasks.EVAL_TASKS`, :data:`ALL_TASKS`); default
            the table's default probes (``passkey``, ``needle``), plus its default text
            tasks (``ppl``, ``longppl``) when ``data`` is given.
        lengths / depths / trials: probe prompt lengths (tokens), needle depths
            (fractions) and prompts per (length, depth) cell.
        seed: selects the probe values and positions (same seed, same prompts).
        batch_size: prompts decoded together / sequences per forward pass.
        distractors / hops: multikey distractor needles / vartrack chain links.
        data: prepared dataset folder or corpus files for ``ppl`` / ``longppl``.
        glob / encoding_errors / hf_split / text_field: how corpus ``data`` is read, the
            options of ``tokenweight prepare`` (files taken from folders, undecodable
            bytes, Hugging Face dataset split, JSONL/Parquet/dataset text field).
        seq_len: sequence length for corpus data (default: the longest probe length).
        max_sequences: evaluation sequences used at most.
        bucket_size: position bucket width (tokens) of the perplexity table.
        longppl_window / longppl_stride: short context of LongPPL (default
            ``min(4096, seq_len // 2)`` and a quarter of it, see
            :func:`~tokenweight.evaluation.perplexity.default_short_window`).
        longppl_alpha / longppl_beta: key token if ``s - l > alpha`` and ``l < beta``.
        allow_beyond_positions: evaluate lengths beyond a model's
            ``max_position_embeddings`` (with a warning) instead of refusing them. Every
            length and every probe task's minimum length are checked before any model
            call.
        evaluator: the LongPPL evaluator, one model that judges the key tokens for every
            model (default: each model judges its own); ``scorer`` is its old name.
        load_kwargs: passed to :func:`tokenweight.infra.models.load_model` (default
            ``device="auto"``).
        progress: show tqdm progress bars (stderr).

    Returns:
        The content of ``results.json``: ``{"settings": ..., "models": [entry, ...]}``.
    """
    if config is not None and settings:
        raise TokenWeightError(
            f"give evaluation settings either as config or as keywords, not both "
            f"(got config and {', '.join(sorted(settings))})"
        )
    cfg = config if config is not None else EvalConfig.from_options(**settings)
    return run_evaluation(
        models,
        cfg,
        out_dir=out_dir,
        evaluator=_evaluator_argument(evaluator, scorer),
        load_kwargs=load_kwargs,
        progress=progress,
    )
