"""Sequence parallelism: every sequence split over ``S`` processes, token weighting exact.

``train.sequence_parallel: S`` runs DeepSpeed Ulysses (ALST) through accelerate's
``ParallelismConfig``: each process of an SP group holds a contiguous slice of
``N / S`` positions of the same sequence, and the attention layers exchange heads so that
every head sees the whole sequence. DeepSpeed's data-loader adapter cuts every batch
column into slices and replaces ``labels`` with ``shift_labels`` (column ``j``: the token
predicted at position ``j``).

What the loss does on each process of an SP group (all of it is identical to one
process holding the whole sequence):

1. long NLL of the local slice (``model_token_nll`` with ``shift_labels``), with gradient;
2. the slices' NLL, target masks, token ids, attention masks and stored short NLL are
   gathered over the SP group (one float or int per token, no gradient): every process
   now holds the whole sequence's values;
3. short NLL on the whole sequence: precomputed scores as gathered; the windows of the
   self and model scorers are shared out over the group
   (:func:`tokenweight.core.scoring.split_scoring`): each process runs every ``S``-th window
   (the model is in eval mode there, where Ulysses steps aside, so each window is plain
   attention; a process with one window fewer adds a padding call, so under ZeRO-3 every
   process makes the same parameter gathers), and one all-reduce gives every process the
   whole sequence's short NLL. The reference scorer's full-sequence forward runs on every
   process;
4. weights on the whole sequence with :func:`~tokenweight.core.weighting.compute_weights`
   (L1 sums, top-kappa with its ties, LongCE: exactly the one-process values), then the
   local slice of them;
5. loss = local ``sum w * l`` over the valid targets of the whole optimizer step (every
   SP slice, data-parallel rank and accumulation step: :func:`count_slice_targets`).

The batch is trimmed back to its one-process width before scoring, so the padding the
SP collator adds (to make the width divisible by ``S``) changes nothing.

Packed batches (several documents per row, marked by restarting ``position_ids`` or
``cu_seq_lens_*``) are refused, by the collator and again by the loss: the Ulysses
attention and the whole-sequence weights here treat each row as one sequence.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from tokenweight.core.packed_batches import find_documents
from tokenweight.core.scoring import split_scoring
from tokenweight.core.weighting import Scheme, compute_weights, weighted_nll_loss
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.collator import TokenWeightCollator
from tokenweight.training.loss import (
    LossParts,
    missing_scorer,
    note_no_context,
    tie_seeds,
    timed_score,
)

__all__ = [
    "SequenceParallelCollator",
    "count_slice_targets",
    "gradient_scale",
    "parallelism_config",
    "refuse_packed",
    "sequence_parallel_loss",
    "sp_group",
]


def parallelism_config(degree: int, attn_implementation: str | None) -> Any:
    """accelerate's ``ParallelismConfig`` for Ulysses SP over ``degree`` processes, with
    the launch's other processes as data-parallel ranks (``WORLD_SIZE / degree`` SP groups)."""
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    attn = attn_implementation or "sdpa"
    if attn == "eager":
        raise TokenWeightError(
            "model.attn_implementation: 'eager' does not work with train.sequence_parallel; "
            "use sdpa or flash_attention_2"
        )
    handler = DeepSpeedSequenceParallelConfig(
        sp_seq_length_is_variable=True, sp_attn_implementation=attn
    )
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # a multiple of degree (checked)
    # the data-parallel ranks (SP groups): DeepSpeed's batch size counts them
    return ParallelismConfig(
        sp_size=degree,
        sp_backend="deepspeed",
        sp_handler=handler,
        dp_replicate_size=max(processes // degree, 1),
    )


PACKED_REFUSED = (
    "train.sequence_parallel: packed batches (several documents per row, marked by "
    "restarting position_ids or cu_seq_lens) are not supported with sequence parallelism; "
    "give every document its own row (pad instead of pack, as TokenWeightCollator does) or "
    "train packed batches without sequence_parallel"
)


def refuse_packed(position_ids: torch.Tensor, start: int) -> None:
    """Raise unless every row of ``position_ids`` ``(B, n)`` counts up from ``start``
    without a restart (one sequence per row; ``start``: this slice's first position)."""
    expected = torch.arange(start, start + position_ids.shape[1], device=position_ids.device)
    if not bool((position_ids == expected).all()):
        raise TokenWeightError(PACKED_REFUSED)


@dataclass
class SequenceParallelCollator:
    """The usual batch, shaped for the Ulysses adapter: every column ``(B, W)`` with ``W``
    divisible by ``degree`` (right padding added), ``position_ids``, ``attention_mask``
    always present, ``short_nll`` padded to ``W`` columns (column ``j`` = target ``j+1``,
    aligned with ``shift_labels``), no ``row``."""

    base: TokenWeightCollator
    degree: int

    def __call__(self, examples: Any) -> dict[str, torch.Tensor]:
        batch = self.base(examples)
        if find_documents(batch) is not None:
            raise TokenWeightError(PACKED_REFUSED)
        ids = batch["input_ids"]
        rows, width = ids.shape
        padded = math.ceil(width / self.degree) * self.degree
        extra = padded - width
        attention = batch.get("attention_mask")
        if attention is None:
            attention = torch.ones_like(ids)
        pad = torch.nn.functional.pad
        out = {
            "input_ids": pad(ids, (0, extra), value=self.base.pad_token_id),
            "labels": pad(batch["labels"], (0, extra), value=IGNORE_INDEX),
            "attention_mask": pad(attention, (0, extra), value=0),
            "position_ids": torch.arange(padded).expand(rows, padded).contiguous(),
        }
        if "short_nll" in batch:
            out["short_nll"] = pad(batch["short_nll"], (0, extra + 1), value=0.0)
        return out


def sp_group() -> tuple[Any, int, int]:
    """``(group, size, rank)`` of this process's sequence-parallel group."""
    from deepspeed.utils import groups

    return (
        groups._get_sequence_parallel_group(),
        groups._get_sequence_parallel_world_size(),
        groups._get_sequence_parallel_rank(),
    )


def _gather(t: torch.Tensor, group: Any, size: int) -> torch.Tensor:
    """The SP group's slices of ``t`` ``(B, n)`` side by side: ``(B, size * n)``."""
    import torch.distributed as dist

    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=1)


def count_slice_targets(batch: dict[str, Any]) -> torch.Tensor:
    """Valid targets of this process's slice (sum it over all processes for the step's
    count: the SP slices of one sequence add up to its whole). Not
    :func:`tokenweight.training.count_valid_targets`, which counts a whole collated batch."""
    return (batch["shift_labels"] != IGNORE_INDEX).sum()


def count_valid_targets(batch: dict[str, Any]) -> torch.Tensor:
    """Deprecated: the old name of :func:`count_slice_targets` in this module."""
    warnings.warn(
        "tokenweight.training.sequence_parallel.count_valid_targets is now "
        "count_slice_targets (tokenweight.training.count_valid_targets counts a whole "
        "collated batch)",
        DeprecationWarning,
        stacklevel=2,
    )
    return count_slice_targets(batch)


def gradient_scale(accelerator: Any, degree: int) -> int:
    """The factor on each slice's loss that makes the reduced gradient the full one.

    DeepSpeed averages the gradients of a ZeRO-3 run over all processes, but those of
    ZeRO-1/2 only over the data-parallel ranks (the SP ranks of a group add theirs). Each
    slice's loss is already its share of the step's sum, so the factor undoes the mean.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    stage = int(getattr(plugin, "zero_stage", 0) or 0)
    processes = accelerator.num_processes
    return processes if stage == 3 else processes // degree


def sequence_parallel_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    scheme: Scheme,
    scorer: Any,
    *,
    num_items: torch.Tensor | int | None,
    generator: torch.Generator | None,
) -> LossParts:
    """The token-weighted loss of this process's slice (module docstring).

    ``inputs``: the adapter's local slices, ``input_ids``, ``shift_labels``,
    ``position_ids``, ``attention_mask`` (and ``short_nll``), each ``(B, n)``.
    ``num_items``: valid targets of the whole step over all processes.
    The returned ``long_nll``, ``short_nll``, ``weights`` and ``mask`` cover the whole
    sequence ``(B, W - 1)``; ``loss`` is this slice's share.
    """
    from tokenweight.core.losses import model_token_nll

    group, size, rank = sp_group()
    ids, shift_labels = inputs["input_ids"], inputs["shift_labels"]
    local_width = ids.shape[1]
    refuse_packed(inputs["position_ids"], rank * local_width)
    long_local = model_token_nll(
        model, ids, shift_labels=shift_labels, position_ids=inputs["position_ids"]
    )
    mask_local = shift_labels != IGNORE_INDEX

    attention = _gather(inputs["attention_mask"], group, size)
    width = max(int(attention.sum(dim=-1).max()), 2)  # the one-process batch width
    targets = width - 1
    long_full = _gather(long_local, group, size)[:, :targets].float()
    mask = _gather(mask_local, group, size)[:, :targets]

    short_full, seconds, seeds = None, 0.0, None
    if not scheme.is_uniform:
        if scorer is None:
            raise missing_scorer(scheme)
        full_batch = _full_batch(inputs, attention, width, group, size)
        with split_scoring(group):  # each process of the group runs its share of windows
            short_full, seconds = timed_score(scorer, model, full_batch, long_full)
        if scheme.sparsification is not None:
            seeds = tie_seeds(full_batch, None, generator)
    parts = LossParts(None, long_full, short_full, torch.zeros_like(long_full), mask, seconds)
    if short_full is not None:
        lengths = (attention[:, :width] != 0).sum(dim=-1)
        parts.no_context_targets = note_no_context(scorer, lengths, mask.sum(dim=-1))
    if not _weigh(parts, scheme, seeds):
        return parts
    # this slice's columns of the whole sequence's weights (padded to the slices' width)
    weights = torch.nn.functional.pad(parts.weights, (0, size * local_width - targets))
    local = weights[:, rank * local_width : (rank + 1) * local_width]
    count = num_items if num_items is not None else mask.sum()
    loss = weighted_nll_loss(long_local, local, mask=mask_local, num_items=count)
    if not bool(torch.isfinite(loss)):
        parts.problem = f"the loss ({float(loss.detach())})"
        return parts
    parts.loss = loss
    return parts


def _full_batch(
    inputs: dict[str, Any], attention: torch.Tensor, width: int, group: Any, size: int
) -> dict[str, Any]:
    """The whole (gathered) sequences at their one-process ``width``: ``input_ids``,
    ``attention_mask`` and, when stored, ``short_nll``."""
    full_batch: dict[str, Any] = {
        "input_ids": _gather(inputs["input_ids"], group, size)[:, :width],
        "attention_mask": attention[:, :width],
    }
    if "short_nll" in inputs:
        full_batch["short_nll"] = _gather(inputs["short_nll"], group, size)[:, : width - 1]
    return full_batch


def _weigh(parts: LossParts, scheme: Scheme, seeds: torch.Tensor | None) -> bool:
    """Set ``parts.weights`` from the whole sequence's NLLs (``seeds``: each row's
    tie-breaking seed); on a non-finite NLL or a refused weighting, set ``parts.problem``
    (and ``where``) and return ``False``."""
    if parts.flag_nonfinite_nll():
        return False
    try:
        parts.weights = compute_weights(
            parts.long_nll, parts.short_nll, scheme, mask=parts.mask, tie_seeds=seeds
        )
    except TokenWeightError as exc:
        parts.problem = f"the weights ({exc})"
        return False
    return True
