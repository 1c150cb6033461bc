"""Batching prepared (and scored) sequences for the trainer.

Examples are mappings with ``input_ids`` (length ``N``) and optionally
``attention_mask`` (``N``), ``short_nll`` (``N - 1``, from ``tokenweight score``),
``input_hash`` and ``row``. A batch is right-padded to its longest sequence:

- ``input_ids``: ``(B, N)`` int64, padding filled with ``pad_token_id``
- ``attention_mask``: ``(B, N)`` int64, present when any example has one or lengths differ
- ``labels``: ``(B, N)`` int64, ``input_ids`` with ``-100`` at padding (what the Trainer
  and Hugging Face losses expect; target ``t`` is ``labels[:, t]``)
- ``short_nll``: ``(B, N - 1)`` float32, 0 at padding
- ``row``: ``(B,)`` int64 dataset row indices, for error messages

With ``verify=True`` (default) every example carrying both ``short_nll`` and
``input_hash`` is checked against its hash (:func:`tokenweight.data.store.verify_row`),
so scores can never be paired with the wrong tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tokenweight.core.packed_batches import valid_target_mask
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

# valid_target_mask is defined in tokenweight.core.packed_batches; importable from here as before
__all__ = ["TokenWeightCollator", "valid_target_mask"]


def _as_list(value: Any, what: str, index: int) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    raise TokenWeightError(
        f"example {index}: {what} must be a sequence, got {type(value).__name__}"
    )


@dataclass
class TokenWeightCollator:
    """Callable turning a list of examples into a padded batch (see the module docstring)."""

    pad_token_id: int = 0
    verify: bool = True

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise TokenWeightError("cannot collate an empty list of examples")
        ids = [_as_list(ex["input_ids"], "input_ids", i) for i, ex in enumerate(examples)]
        lengths = [len(x) for x in ids]
        if min(lengths) < 2:
            raise TokenWeightError(
                f"example {lengths.index(min(lengths))} has {min(lengths)} token(s); "
                "a training sequence needs at least 2"
            )
        batch_size, width = len(ids), max(lengths)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        has_mask = any(
            "attention_mask" in ex and ex["attention_mask"] is not None for ex in examples
        )
        for i, (ex, seq) in enumerate(zip(examples, ids)):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            if "attention_mask" in ex and ex["attention_mask"] is not None:
                mask = _as_list(ex["attention_mask"], "attention_mask", i)
                if len(mask) != len(seq):
                    raise TokenWeightError(
                        f"example {i}: attention_mask has {len(mask)} values for {len(seq)} tokens"
                    )
                attention[i, : len(seq)] = torch.tensor(mask, dtype=torch.long)
            else:
                attention[i, : len(seq)] = 1
        labels = input_ids.masked_fill(attention == 0, IGNORE_INDEX)
        batch: dict[str, torch.Tensor] = {"input_ids": input_ids, "labels": labels}
        if has_mask or len(set(lengths)) > 1:
            batch["attention_mask"] = attention
        if all("row" in ex and ex["row"] is not None for ex in examples):
            batch["row"] = torch.tensor([int(ex["row"]) for ex in examples], dtype=torch.long)
        if any("short_nll" in ex for ex in examples):
            batch["short_nll"] = self._short_nll(examples, ids, width)
        return batch

    def _short_nll(
        self, examples: Sequence[Mapping[str, Any]], ids: list[list[int]], width: int
    ) -> torch.Tensor:
        out = torch.zeros((len(examples), width - 1), dtype=torch.float32)
        for i, (ex, seq) in enumerate(zip(examples, ids)):
            row = ex.get("row", i)
            if ex.get("short_nll") is None:
                raise TokenWeightError(f"row {row}: no short_nll; was every row scored?")
            scores = torch.as_tensor(ex["short_nll"], dtype=torch.float32).view(-1)
            if scores.numel() != len(seq) - 1:
                raise TokenWeightError(
                    f"row {row}: short_nll has {scores.numel()} values for {len(seq)} tokens "
                    f"(expected {len(seq) - 1}, one per target)"
                )
            if self.verify and ex.get("input_hash") is not None:
                from tokenweight.data.store import verify_row

                verify_row(seq, ex["input_hash"], row)
            out[i, : scores.numel()] = scores
        return out
