"""The models of ``tokenweight eval``, one at a time: loaded for the duration of a
``with`` block and released after (:class:`LoadedModel`), and the identity of a tokenizer
(:func:`tokenizer_key`), under which prompts and evaluation sequences are shared."""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from tokenweight.evaluation.config import ModelSpec
from tokenweight.infra.errors import TokenWeightError

__all__ = ["LoadedModel", "tokenizer_key"]


def tokenizer_key(tokenizer: Any) -> tuple:
    """The tokenizer's identity (:data:`~tokenweight.infra.models.IDENTITY_FIELDS`) as a
    tuple: two tokenizers with the same key give the same tokens."""
    from tokenweight.infra.models import IDENTITY_FIELDS, tokenizer_identity

    ident = tokenizer_identity(tokenizer)
    return tuple(ident.get(k) for k in IDENTITY_FIELDS)


class LoadedModel:
    """A model and tokenizer for the duration of a ``with`` block (released after, when
    this block loaded them)."""

    def __init__(self, spec: ModelSpec, load_kwargs: dict[str, Any]) -> None:
        self.spec = spec
        self.load_kwargs = load_kwargs
        self.owned = spec.model is None

    def __enter__(self) -> tuple[Any, Any, float]:
        start = time.perf_counter()
        model, tokenizer = self.spec.model, self.spec.tokenizer
        if model is None or tokenizer is None:
            if self.spec.source is None:
                raise TokenWeightError(
                    f"model {self.spec.label!r} has neither a source nor a loaded model and "
                    "tokenizer"
                )
            from tokenweight.infra.models import load_model, load_tokenizer

            if tokenizer is None:
                tokenizer = load_tokenizer(
                    self.spec.source,
                    trust_remote_code=bool(self.load_kwargs.get("trust_remote_code", False)),
                )
            if model is None:
                model = load_model(self.spec.source, **self.load_kwargs)
        self.was_training = bool(getattr(model, "training", False))
        model.eval()
        self.model = model
        return model, tokenizer, time.perf_counter() - start

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()
        if self.owned:
            del self.model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
