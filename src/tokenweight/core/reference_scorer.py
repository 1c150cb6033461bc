"""Rho-1-style reference-model scoring: excess loss against a separate reference model.

Rho-1 (Lin et al., 2024) weights the targets whose loss under the model being trained
exceeds a *reference* model's loss on the same targets. Here the reference model sees the
whole sequence (no short windows): ``s_ref[t]`` is its NLL of target ``t`` from all
tokens before it, so with a difference scheme the score is the excess loss
``l - s_ref`` (the ``rho1:KAPPA`` preset keeps the top ``KAPPA`` share of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tokenweight.core.scorer_kinds import ScorerInputs
from tokenweight.core.scoring import ModelScorer, per_document
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = ["ReferenceScorer", "build_reference_scorer"]


class ReferenceScorer(ModelScorer):
    """A frozen reference model over the full sequence: ``(batch, N - 1)`` NLL in nats.

    Vocabulary checks, device and dtype handling are those of :class:`ModelScorer`; the
    window settings are unused (``window`` is kept only for the shared interface).
    """

    def __init__(self, model: Any, **kwargs: Any) -> None:
        for unused in ("window", "stride", "bos_token_id", "windows_per_batch"):
            kwargs.pop(unused, None)
        super().__init__(model, 2, **kwargs)

    @per_document  # a packed batch: each document scored on its own, from position 0
    def __call__(
        self, batch: Mapping[str, Any], long_nll: torch.Tensor, model: Any = None
    ) -> torch.Tensor:
        from tokenweight.core.losses import model_token_nll, unwrap_model

        if model is not None and not self._checked:
            self.check_compatible(unwrap_model(model))
        if "input_ids" not in batch:
            raise TokenWeightError("the batch has no 'input_ids'")
        device = self.device
        ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        labels = None
        if mask is not None:
            mask = mask.to(device)
            labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
        with torch.no_grad():
            nll = model_token_nll(self.model, ids, labels=labels, attention_mask=mask)
        return nll.float().to(long_nll.device)


def build_reference_scorer(inputs: ScorerInputs) -> ReferenceScorer:
    """The ``reference`` kind (:data:`tokenweight.core.scorer_kinds.SCORERS`)."""
    if inputs.scorer_model is None:
        raise TokenWeightError("scorer 'reference' needs scorer_model (the reference model)")
    return ReferenceScorer(inputs.scorer_model, **inputs.model_kwargs)
