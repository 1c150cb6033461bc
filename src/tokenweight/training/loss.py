"""One micro-batch of the token-weighted loss, outside any Trainer.

:func:`token_weighted_loss` is the code path that
:meth:`~tokenweight.training.trainer.TokenWeightTrainer.compute_loss` runs (and that
``benchmarks/bench_train_step.py`` times); use it in a hand-written training loop::

    parts = token_weighted_loss(model, batch, "dense:0.75", SelfScorer(window=8192))
    parts.loss.backward()
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tokenweight.core.packed_batches import Documents, find_documents, forward_inputs, target_mask
from tokenweight.core.scoring import SelfScorer, same_model_calls_across_processes
from tokenweight.core.weighting import (
    Scheme,
    compute_weights,
    document_tie_seeds,
    draw_tie_seed,
    first_nonfinite,
    weighted_nll_loss,
)
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

if TYPE_CHECKING:
    from tokenweight.core.scoring import Scorer

__all__ = [
    "LossParts",
    "missing_scorer",
    "note_no_context",
    "tie_seeds",
    "timed_score",
    "token_weighted_loss",
]


@dataclass
class LossParts:
    """The loss of one micro-batch and what it is made of; all per-target tensors are
    ``(B, N - 1)`` (column ``t - 1`` is target ``t``), NLL in nats.

    ``loss`` is ``None`` when a value was not finite; ``problem`` then says which
    (``where``: ``(row, target, value)`` of the first bad NLL, if that was it).
    ``no_context_targets``: with the self scorer, the valid targets in rows (documents)
    no longer than its window, which have no shorter context and get uniform weights
    (``None`` with other scorers).
    """

    loss: torch.Tensor | None
    long_nll: torch.Tensor
    short_nll: torch.Tensor | None
    weights: torch.Tensor
    mask: torch.Tensor
    scoring_seconds: float = 0.0
    problem: str | None = None
    where: tuple[int, int, float] | None = None
    no_context_targets: int | None = None

    def flag_nonfinite_nll(self) -> bool:
        """Record the first non-finite long, then short NLL of a valid target in ``problem``
        and ``where``; ``True`` when there is one."""
        for name, nll in (("long", self.long_nll), ("short", self.short_nll)):
            if nll is not None and (where := first_nonfinite(nll, self.mask)) is not None:
                self.problem, self.where = f"the {name}-context NLL", where
                return True
        return False


def missing_scorer(scheme: Scheme, accepted: str | None = None) -> TokenWeightError:
    """The refusal of a weighted ``scheme`` given no short-context scorer; ``accepted``
    names the scorers the caller takes."""
    hint = f"; pass scorer= ({accepted})" if accepted else ""
    return TokenWeightError(f"scheme {scheme} needs a short-context scorer{hint}")


def timed_score(
    scorer: Scorer, model: Any, batch: dict[str, Any], long_nll: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """The scorer's short-context NLL for ``batch`` (shape and device of ``long_nll``,
    float32) and the seconds it took (CUDA synchronised); the one call of a scorer in
    training, also used by sequence parallelism. Raises :class:`TokenWeightError` when
    the scorer returns anything but a tensor of ``long_nll``'s shape."""
    cuda = long_nll.is_cuda
    if cuda:
        torch.cuda.synchronize(long_nll.device)
    start = time.perf_counter()
    with same_model_calls_across_processes():  # every process scores in step
        short = scorer(batch, long_nll.detach(), model=model)
    if cuda:
        torch.cuda.synchronize(long_nll.device)
    seconds = time.perf_counter() - start
    if not isinstance(short, torch.Tensor) or short.shape != long_nll.shape:
        raise TokenWeightError(
            f"the scorer returned {getattr(short, 'shape', type(short).__name__)}, "
            f"expected a tensor of shape {tuple(long_nll.shape)}"
        )
    return short.to(device=long_nll.device, dtype=torch.float32), seconds


def _weights(
    batch: dict[str, Any],
    long_nll: torch.Tensor,
    short_nll: torch.Tensor | None,
    scheme: Scheme,
    mask: torch.Tensor,
    generator: torch.Generator | None,
    docs: Documents | None,
) -> torch.Tensor:
    """``compute_weights`` per row, or per document of a packed batch, with each
    document's own tie-breaking seed (:func:`tie_seeds`)."""
    seeds = tie_seeds(batch, docs, generator) if scheme.sparsification is not None else None
    if docs is None:
        return compute_weights(long_nll, short_nll, scheme, mask=mask, tie_seeds=seeds)
    weights = compute_weights(
        docs.targets(long_nll),
        None if short_nll is None else docs.targets(short_nll),
        scheme,
        mask=docs.targets(mask.to(long_nll.dtype)).bool(),
        tie_seeds=seeds,
    )
    return docs.scatter_targets(weights)


def _row_lengths(batch: Mapping[str, Any]) -> torch.Tensor:
    """Real tokens per row ``(B,)``: the attention mask's count, or the full width."""
    ids, attention = batch["input_ids"], batch.get("attention_mask")
    if attention is None:
        return torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
    return (attention != 0).sum(dim=-1)


def note_no_context(scorer: Any, lengths: torch.Tensor, targets: torch.Tensor) -> int | None:
    """With the self scorer: the valid targets (``targets[r]`` per row or document of
    ``lengths[r]`` real tokens) in rows no longer than its window, which have no shorter
    context; the scorer warns about them once (:meth:`SelfScorer.note_no_context`).
    ``None`` for other scorers."""
    if not isinstance(scorer, SelfScorer):
        return None
    covered_by_window_zero = lengths.to(targets.device) <= scorer.settings.window
    count = int(targets[covered_by_window_zero].sum())
    scorer.note_no_context(count, int(targets.sum()))
    return count


def tie_seeds(
    batch: Mapping[str, Any], docs: Documents | None, generator: torch.Generator | None
) -> torch.Tensor:
    """One tie-breaking seed per document of ``batch`` (per row, or per document of a
    packed batch, in :class:`~tokenweight.core.packed_batches.Documents` order): a hash of the
    document's real tokens and one number drawn from ``generator`` (a fixed one without),
    :func:`~tokenweight.core.weighting.document_tie_seeds`. So a document's top-kappa choice
    among tied targets is the same alone, padded, packed or on another process."""
    base = draw_tie_seed(generator)
    ids = batch["input_ids"]
    if docs is not None:
        width = docs.width
        valid = torch.arange(width, device=ids.device)[None, :] < docs.length[:, None]
        return document_tie_seeds(docs.tokens(ids), valid, base)
    attention = batch.get("attention_mask")
    return document_tie_seeds(ids, None if attention is None else attention != 0, base)


def token_weighted_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    scheme: Scheme | str,
    scorer: Scorer | None = None,
    *,
    num_items: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    raise_on_nonfinite: bool = False,
) -> LossParts:
    """``sum_i w_i * l_i / num_items`` over the valid targets of ``batch``.

    Args:
        model: the causal LM being trained (possibly wrapped); called once for the long
            NLL through :func:`tokenweight.core.losses.model_token_nll` (no full logits).
        batch: ``input_ids`` ``(B, N)``, optional ``attention_mask`` and ``labels``
            (``-100`` = no target), and whatever the scorer reads (``short_nll``).
        scheme: the weighting scheme (:class:`~tokenweight.core.weighting.Scheme` or text).
        scorer: ``scorer(batch, long_nll, model=model) -> short_nll``; not called for
            the uniform scheme.
        num_items: the divisor; default the number of valid targets of this batch. Pass
            the count of the whole optimizer step under gradient accumulation.
        generator: tie-breaking randomness for sparsification: one number is drawn from
            it per call and hashed with each document's tokens (:func:`tie_seeds`).
        raise_on_nonfinite: raise :class:`TokenWeightError` (naming the value and where)
            instead of returning ``loss=None`` when a value is NaN or infinite.

    Packed batches (``position_ids`` restarting inside a row, or ``cu_seq_lens_q``) are
    handled per document (:mod:`tokenweight.core.packed_batches`): attention, short-context
    windows and weight normalization stay inside each document, and a document's first
    token is not a target, so the result equals the same documents run unpacked. The
    returned per-target tensors keep the batch's packed ``(B, N - 1)`` layout.
    """
    from tokenweight.core.losses import model_token_nll

    input_ids = batch["input_ids"]
    labels = batch.get("labels")
    docs = find_documents(batch)
    mask = target_mask(batch, docs)
    forward_mask, forward_kwargs = forward_inputs(batch, docs)
    nll_labels = labels
    if docs is not None or "completion_mask" in batch:  # mark every non-target in the labels
        nll_labels = torch.full_like(input_ids, IGNORE_INDEX)
        nll_labels[:, 1:] = torch.where(
            mask, (input_ids if labels is None else labels)[:, 1:], IGNORE_INDEX
        )
    long_nll = model_token_nll(
        model, input_ids, labels=nll_labels, attention_mask=forward_mask, **forward_kwargs
    )
    parts = weigh_nll(model, batch, long_nll, mask, docs, scheme, scorer, num_items, generator)
    if raise_on_nonfinite:
        raise_if_nonfinite(parts)
    return parts


def raise_if_nonfinite(parts: LossParts) -> None:
    """Raise :class:`TokenWeightError` naming the first non-finite value of ``parts``."""
    if parts.problem is None:
        return
    detail = parts.problem
    if parts.where is not None:
        row, col, value = parts.where
        detail += f" is {value} at batch row {row}, target column {col}"
    raise TokenWeightError(
        f"non-finite loss: {detail}; skip this batch or lower the learning rate "
        "(the model's parameters or the data may hold NaN/inf)"
    )


def weigh_nll(
    model: Any,
    batch: dict[str, Any],
    long_nll: torch.Tensor,
    mask: torch.Tensor,
    docs: Documents | None,
    scheme: Scheme | str,
    scorer: Scorer | None,
    num_items: torch.Tensor | int | None,
    generator: torch.Generator | None,
) -> LossParts:
    """Score, weigh and reduce a long NLL ``(B, N - 1)`` already computed for ``batch``
    (``mask``: its valid targets; ``docs``: its documents when packed)."""
    scheme = Scheme.coerce(scheme)
    short_nll, seconds = None, 0.0
    if not scheme.is_uniform:
        if scorer is None:
            raise missing_scorer(scheme)
        if docs is None:
            short_nll, seconds = timed_score(scorer, model, batch, long_nll)
        else:
            short_docs, seconds = timed_score(
                scorer, model, docs.unpack(batch), docs.targets(long_nll.detach())
            )
            short_nll = docs.scatter_targets(short_docs)

    parts = LossParts(None, long_nll, short_nll, torch.zeros_like(long_nll), mask, seconds)
    if short_nll is not None:
        if docs is None:
            lengths, targets = _row_lengths(batch), mask.sum(dim=-1)
        else:
            lengths, targets = docs.length, docs.targets(mask.to(torch.float32)).sum(dim=-1)
        parts.no_context_targets = note_no_context(scorer, lengths, targets)
    if parts.flag_nonfinite_nll():
        return parts
    try:
        parts.weights = _weights(batch, long_nll.detach(), short_nll, scheme, mask, generator, docs)
    except TokenWeightError as exc:
        parts.problem = f"the weights ({exc})"
        return parts
    count = num_items if num_items is not None else mask.sum()
    loss = weighted_nll_loss(long_nll, parts.weights, mask=mask, num_items=count)
    if not bool(torch.isfinite(loss)):
        parts.problem = f"the loss ({float(loss.detach())})"
        return parts
    parts.loss = loss
    return parts
