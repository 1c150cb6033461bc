"""Settings that a ``TokenWeightTrainer`` would silently turn into nothing, refused.

- a trainer loss setting the token-weighted loss replaces (TRL's ``loss_type="dft"``,
  ``label_smoothing_factor``, a ``compute_loss_func``): the user asked for a loss that
  would never run;
- a self scorer whose window covers every sequence of the run (at or above the longest
  training sequence) or exceeds the model's positions: every weight would be uniform.

Rows shorter than the window among longer ones are legitimate (SFT data); those are
reported, not refused (:meth:`tokenweight.core.scoring.SelfScorer.note_no_context`).
"""

from __future__ import annotations

from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = ["check_self_scorer", "longest_sequence", "refuse_replaced_losses"]


def refuse_replaced_losses(args: Any, compute_loss_func: Any) -> None:
    """Refuse trainer settings whose loss the token-weighted loss would replace.

    ``args``: the ``TrainingArguments`` (or TRL config) given to the trainer, ``None``
    for the defaults; ``compute_loss_func``: the one given to the trainer, if any.
    """
    name = type(args).__name__
    loss_type = getattr(args, "loss_type", None)
    if loss_type is not None and str(loss_type) != "nll":
        raise TokenWeightError(
            f"{name}(loss_type={loss_type!r}): TokenWeightTrainer replaces the trainer's "
            "loss with the token-weighted NLL, so this loss type would never be used. "
            "Leave loss_type at 'nll' (the loss token weighting reweighs), or train with "
            f"the plain trainer to use {loss_type!r}"
        )
    smoothing = getattr(args, "label_smoothing_factor", 0.0) or 0.0
    if smoothing > 0:
        raise TokenWeightError(
            f"{name}(label_smoothing_factor={smoothing}): TokenWeightTrainer computes its "
            "own loss (the token-weighted NLL), which has no label smoothing; set "
            "label_smoothing_factor to 0"
        )
    if compute_loss_func is not None:
        raise TokenWeightError(
            "TokenWeightTrainer(compute_loss_func=...): the trainer's loss is the "
            "token-weighted NLL, so compute_loss_func would never be called; pass scheme= "
            "and scorer= instead (or use make_compute_loss_func with a plain Trainer)"
        )


def longest_sequence(args: Any, dataset: Any) -> tuple[int, str] | None:
    """The longest sequence (tokens) a run can train on and where that figure comes
    from, when known cheaply: the longest document of a TRL-packed dataset
    (``seq_lengths``), the longest ``input_ids`` row of a ``datasets.Dataset``, else the
    trainer's ``max_length`` (TRL's ``SFTConfig``); ``None`` when none is known."""
    table = getattr(dataset, "data", None)  # a datasets.Dataset's Arrow table
    names = getattr(dataset, "column_names", None) or ()
    if table is not None and hasattr(table, "column") and len(dataset) > 0:
        import pyarrow.compute as pc

        if "seq_lengths" in names:
            lengths = pc.list_flatten(table.column("seq_lengths"))
            return int(pc.max(lengths).as_py()), "the longest training document"
        if "input_ids" in names:
            lengths = pc.list_value_length(table.column("input_ids"))
            return int(pc.max(lengths).as_py()), "the longest training sequence"
    max_length = getattr(args, "max_length", None)
    if isinstance(max_length, int) and not isinstance(max_length, bool):
        return max_length, f"max_length={max_length}"
    return None


def check_self_scorer(scorer: Any, model: Any, args: Any, dataset: Any) -> None:
    """Refuse a :class:`~tokenweight.core.scoring.SelfScorer` whose window is above the model's
    positions or at or above the longest sequence the run trains on (other scorers
    pass)."""
    from tokenweight.core.scoring import SelfScorer

    if not isinstance(scorer, SelfScorer):
        return
    scorer.check_model(model)
    longest = longest_sequence(args, dataset)
    if longest is not None:
        scorer.check_sequence_length(*longest)
