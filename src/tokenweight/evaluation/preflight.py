"""Checks of ``tokenweight eval`` that need no model call, run before the first one.

Every evaluated model (and the LongPPL evaluator) is checked against every length it
would be asked for -- probe prompt lengths and the text tasks' sequence length -- from its
config alone (no weights loaded), and every probe task's prompts are built once per
tokenizer, so a length too short for any task is reported before anything is computed,
for all tasks together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = ["asked_lengths", "build_all_probes", "check_positions"]

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
