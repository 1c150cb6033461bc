"""Token weighting inside a ``transformers.Trainer`` you keep: ``compute_loss_func``.

``Trainer(compute_loss_func=f)`` calls ``f(outputs, labels, num_items_in_batch=n)`` after
its own forward ``model(**inputs)`` (labels removed): ``outputs.logits`` ``(B, N, V)``,
``labels`` ``(B, N)`` unshifted with ``-100`` = no target, and ``n`` the number of
``labels[:, 1:] != -100`` over the whole optimizer step (all gradient-accumulation
micro-batches and, with ``average_tokens_across_devices``, all processes; the Trainer
then multiplies the loss by the number of processes and does not divide it by the
accumulation steps). The loss returned here is ``sum(w * l) / n``, so the Trainer's
bookkeeping gives the exact gradient of the whole step.

The contract hands the function no input ids, positions or model, which short-context
scoring needs. :func:`make_compute_loss_func` therefore takes the model and records the
inputs of its latest forward call through a forward pre-hook (the Trainer's forward
comes right before the loss call). The long NLL comes from the Trainer's full logits,
with ``F.cross_entropy``; for long contexts prefer
:class:`~tokenweight.training.trainer.TokenWeightTrainer`, which never materializes them.
Packed batches are handled per document as in
:func:`~tokenweight.training.loss.token_weighted_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tokenweight.core.packed_batches import find_documents, target_mask
from tokenweight.core.weighting import Scheme
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.loss import LossParts, missing_scorer, raise_if_nonfinite, weigh_nll
from tokenweight.training.refusals import check_self_scorer

if TYPE_CHECKING:
    from tokenweight.core.scoring import Scorer

__all__ = ["TokenWeightLossFunc", "make_compute_loss_func"]

# forward arguments that describe the batch (what the scorer and the packing logic read)
_BATCH_KEYS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "completion_mask")


class TokenWeightLossFunc:
    """``compute_loss_func`` for ``transformers.Trainer`` (module docstring).

    ``last_parts`` holds the :class:`~tokenweight.training.loss.LossParts` of the latest
    call (long/short NLL, weights, mask), for logging.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scheme: Scheme | str | dict[str, Any],
        scorer: Scorer | None = None,
        *,
        raise_on_nonfinite: bool = True,
    ) -> None:
        self.scheme = Scheme.coerce(scheme)
        if not self.scheme.is_uniform and scorer is None:
            raise missing_scorer(self.scheme, "tokenweight.core.scoring.SelfScorer or ModelScorer")
        check_self_scorer(scorer, model, None, None)
        self.model = model
        self.scorer = scorer
        self.raise_on_nonfinite = raise_on_nonfinite
        self.last_parts: LossParts | None = None
        self._inputs: dict[str, Any] = {}
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            self._inputs = {k: kwargs.get(k) for k in _BATCH_KEYS if kwargs.get(k) is not None}
            self._inputs["input_ids"] = ids

    def remove(self) -> None:
        """Detach the forward hook from the model."""
        self._handle.remove()

    def __call__(
        self,
        outputs: Any,
        labels: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        batch = dict(self._inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if "input_ids" not in batch or batch["input_ids"].shape != logits.shape[:2]:
            raise TokenWeightError(
                "the compute_loss_func did not see the forward call of its model; pass the "
                "model the Trainer trains to make_compute_loss_func (logits "
                f"{tuple(logits.shape[:2])})"
            )
        if labels is not None:
            batch["labels"] = labels
        docs = find_documents(batch)
        mask = target_mask(batch, docs)
        targets = batch["input_ids"] if labels is None else labels
        targets = torch.where(mask, targets[:, 1:], IGNORE_INDEX)
        long_nll = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(targets.shape)
        parts = weigh_nll(
            self.model,
            batch,
            long_nll,
            mask,
            docs,
            self.scheme,
            self.scorer,
            num_items_in_batch,
            None,
        )
        self.last_parts = parts
        if parts.loss is None:
            if self.raise_on_nonfinite:
                raise_if_nonfinite(parts)
            return long_nll.sum() * float("nan")
        return parts.loss


def make_compute_loss_func(
    model: torch.nn.Module,
    scheme: Scheme | str | dict[str, Any],
    scorer: Scorer | None = None,
    *,
    raise_on_nonfinite: bool = True,
) -> TokenWeightLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer`` (or TRL trainers built on it)
    with the token-weighted loss of ``scheme`` and ``scorer``.

    Args:
        model: the model the Trainer trains (its forward inputs are recorded by a hook).
        scheme: a :class:`~tokenweight.core.weighting.Scheme` or its text (``"dense:0.75"``).
        scorer: ``scorer(batch, long_nll, model=model) -> short_nll``
            (:class:`~tokenweight.core.scoring.SelfScorer` or
            :class:`~tokenweight.core.scoring.ModelScorer`); not needed for ``"uniform"``.
        raise_on_nonfinite: raise :class:`TokenWeightError` on a NaN/inf NLL, weight or
            loss (default); ``False`` returns a NaN loss instead.

    Example::

        loss_func = make_compute_loss_func(model, "dense:0.75", SelfScorer(window=8192))
        Trainer(model=model, args=args, train_dataset=ds, compute_loss_func=loss_func)
    """
    return TokenWeightLossFunc(model, scheme, scorer, raise_on_nonfinite=raise_on_nonfinite)
