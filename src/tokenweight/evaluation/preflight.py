"""Checks of ``tokenweight eval`` that need no model call, run before the first one.

Every evaluated model (and the LongPPL evaluator) is checked against every length it
would be asked for -- probe prompt lengths and the text tasks' sequence length -- from its
config alone (no weights loaded), and every probe task's prompts are built once per
tokenizer, so a length too short for any task is reported before anything is computed,
for all tasks together. :func:`check_before_computing` is this step of the runner.

Importing this module imports no torch.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenweight.evaluation.config import EvalConfig, ModelSpec
from tokenweight.infra.errors import TokenWeightError

if TYPE_CHECKING:
    from tokenweight.evaluation.probes import Probe

__all__ = [
    "asked_lengths",
    "build_all_probes",
    "check_before_computing",
    "check_positions",
    "model_positions",
    "text_length",
]

logger = logging.getLogger(__name__)


def asked_lengths(probe_lengths: Sequence[int], text_length: int | None) -> list[tuple[int, str]]:
    """``(tokens, the option that asks for them)`` of every length an evaluation uses:
    each probe length (``--lengths``) and the text tasks' sequence length."""
    asked = [(int(n), "--lengths") for n in probe_lengths]
    if text_length is not None:
        asked.append((int(text_length), "--seq-len"))
    return asked


def check_positions(
    models: Sequence[tuple[str, int | None, Sequence[tuple[int, str]]]], allow: bool
) -> None:
    """Refuse lengths beyond a model's positions; with ``allow``, warn instead.

    ``models``: ``(label, positions, asked)`` for every model, ``asked`` from
    :func:`asked_lengths`; ``None`` positions are not checked.
    """
    problems = []
    for label, positions, asked in models:
        too_long = sorted({(n, opt) for n, opt in asked if positions and n > positions})
        if too_long:
            listed = ", ".join(f"{n} ({opt})" for n, opt in too_long)
            problems.append(f"model {label!r} has {positions} positions but is asked for {listed}")
    if not problems:
        return
    advice = (
        "pass --max-position-embeddings (and --rope-theta) to extend the context, or use "
        "shorter --lengths / --seq-len"
    )
    if not allow:
        raise TokenWeightError(
            f"{'; '.join(problems)} tokens (max_position_embeddings): outputs past the "
            f"positions are usually meaningless; {advice}, or pass --allow-beyond-positions "
            "to evaluate there anyway"
        )
    logger.warning(
        "warning: %s tokens (max_position_embeddings); evaluating past them as "
        "--allow-beyond-positions asks (%s)",
        "; ".join(problems),
        advice,
    )


def build_all_probes(
    tasks: Sequence[str], build: Callable[[Sequence[str]], list[Any]]
) -> list[Any]:
    """``build(tasks)`` for every task, the refusals of all tasks in one error (each
    task's too-short length and its minimum)."""
    probes: list[Any] = []
    errors = []
    for task in tasks:
        try:
            probes += build([task])
        except TokenWeightError as exc:
            errors.append(str(exc))
    if errors:
        raise TokenWeightError("; ".join(errors))
    return probes


def text_length(cfg: EvalConfig) -> int | None:
    """Tokens per evaluation sequence of the text tasks: a prepared dataset's
    ``seq_len`` (``None`` when it has no manifest), else ``--seq-len`` or the longest
    probe length."""
    from tokenweight.evaluation.sequences import is_prepared_dataset

    if len(cfg.data) == 1 and is_prepared_dataset(cfg.data[0]):
        if not (Path(cfg.data[0]) / "manifest.json").is_file():
            return None
        from tokenweight.data.manifest import read_manifest

        return int(read_manifest(cfg.data[0])["seq_len"])
    return cfg.seq_len or max(cfg.lengths)


def model_positions(spec: ModelSpec, load_kwargs: dict[str, Any]) -> int | None:
    """``max_position_embeddings`` the model will have, from its config alone."""
    from tokenweight.infra.models import load_config, max_positions

    if spec.model is not None:
        return max_positions(spec.model)
    if spec.source is None:
        return None
    config = load_config(
        spec.source,
        trust_remote_code=bool(load_kwargs.get("trust_remote_code", False)),
        rope_theta=load_kwargs.get("rope_theta"),
        max_position_embeddings=load_kwargs.get("max_position_embeddings"),
    )
    return max_positions(config)


def check_before_computing(
    specs: Sequence[ModelSpec],
    evaluator: ModelSpec | None,
    cfg: EvalConfig,
    load_kwargs: dict[str, Any],
    probe_cache: dict[tuple, list[Probe]],
) -> None:
    """Step: before any model call, the device, every length against every model's
    positions and every probe task's prompts (into ``probe_cache``), all problems of a
    kind reported together."""
    from tokenweight.evaluation.loading import tokenizer_key
    from tokenweight.evaluation.probe_run import make_probes_for
    from tokenweight.infra.models import resolve_device

    if load_kwargs.get("device") is not None:
        resolve_device(load_kwargs["device"])  # refuses a device this machine lacks
    text = text_length(cfg) if cfg.text_tasks else None
    asked = asked_lengths(cfg.lengths if cfg.probe_tasks else (), text)
    models = [(s.label, model_positions(s, load_kwargs), asked) for s in specs]
    if evaluator is not None:
        only_text = asked_lengths((), text)
        models.append((evaluator.label, model_positions(evaluator, load_kwargs), only_text))
    check_positions(models, cfg.allow_beyond_positions)
    if not cfg.probe_tasks:
        return
    for spec in specs:
        tokenizer = spec.tokenizer
        if tokenizer is None:
            from tokenweight.infra.models import load_tokenizer

            if spec.source is None:
                continue  # refused when loading (LoadedModel)
            trust = bool(load_kwargs.get("trust_remote_code", False))
            tokenizer = load_tokenizer(spec.source, trust_remote_code=trust)
        key = tokenizer_key(tokenizer)
        if key not in probe_cache:
            probe_cache[key] = build_all_probes(
                cfg.probe_tasks, functools.partial(make_probes_for, tokenizer, cfg=cfg)
            )
