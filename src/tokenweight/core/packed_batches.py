"""Packed (padding-free) batches: several documents in one row.

Trainers that pack documents (TRL's default ``bfd`` packing, ``padding_free=True``) give
batches such as ``input_ids`` ``(1, total)`` whose ``position_ids`` restart at every
document, often with ``cu_seq_lens_q`` / ``cu_seq_lens_k`` beside them. A new document
starts wherever ``position_ids[t] != position_ids[t - 1] + 1`` -- the rule transformers
uses to build its per-document attention masks. Without ``position_ids``, a one-row
batch's ``cu_seq_lens_q`` gives the document starts.

Token weighting treats every document of a packed batch exactly as if it were a row of
its own (an unpacked batch gives the same NLL, weights, loss and gradients):

- **attention**: the long forward gets the per-document ``position_ids`` and no
  attention mask, so transformers masks attention per document (sdpa, eager and flex
  attention build a block-diagonal causal mask from the restarting positions; flash
  attention reads the document boundaries from them). Right padding after the last
  document is allowed (causal attention never looks at it); other padding is refused.
- **targets**: the first token of a document is not a target (it would be predicted
  from the previous document).
- **short-context scoring**: each document is scored on its own, so windows never cross
  a document start, and with ``bos_token_id`` a later window's first token is replaced by
  BOS within each document, as for unpacked rows.
- **weights** are normalized per document (each document is a row for
  :func:`tokenweight.core.weighting.compute_weights`), which is what unpacked training gives.
  The loss is then ``sum(w * l) / num_items`` over all targets of the batch.

:func:`find_documents` returns ``None`` for a batch that is not packed (every row is one
document), so unpacked batches take the ordinary path unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "Documents",
    "find_documents",
    "forward_inputs",
    "right_padded_lengths",
    "target_mask",
    "valid_target_mask",
]

# per-token batch entries carried into the per-document batch, and per-target ones
_TOKEN_KEYS = ("input_ids", "attention_mask", "labels")
_TARGET_KEYS = ("short_nll",)


def _position_ids(batch: Mapping[str, Any]) -> torch.Tensor | None:
    """``(B, N)`` positions from ``position_ids`` or a one-row batch's ``cu_seq_lens_q``."""
    input_ids = batch["input_ids"]
    positions = batch.get("position_ids")
    if positions is not None:
        positions = torch.as_tensor(positions, device=input_ids.device)
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        if positions.shape[-1] != input_ids.shape[-1] or positions.shape[0] not in (
            1,
            input_ids.shape[0],
        ):
            raise TokenWeightError(
                f"position_ids has shape {tuple(positions.shape)} but input_ids has "
                f"{tuple(input_ids.shape)}"
            )
        return positions.expand(input_ids.shape[0], -1)
    cu = batch.get("cu_seq_lens_q")
    if cu is None:
        return None
    cu = torch.as_tensor(cu, device=input_ids.device).long().view(-1)
    total = input_ids.shape[-1]
    if input_ids.shape[0] != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) > total:
        raise TokenWeightError(
            f"cu_seq_lens_q {cu.tolist()} does not describe the one packed row of input_ids "
            f"{tuple(input_ids.shape)} (expected 0 = c_0 < ... <= {total})"
        )
    token = torch.arange(total, device=cu.device)
    doc = torch.searchsorted(cu[1:], token, right=True).clamp(max=cu.numel() - 2)
    return (token - cu[doc]).unsqueeze(0)


@dataclass(frozen=True)
class Documents:
    """Where the documents of a packed ``(B, N)`` batch lie.

    ``row``, ``start`` and ``length`` are ``(D,)`` int64: document ``d`` is tokens
    ``start[d] .. start[d] + length[d] - 1`` of batch row ``row[d]`` (trailing padding
    belongs to the last document of its row and is never a target). ``width`` is the
    longest document; per-document tensors are right-padded to it.
    """

    shape: tuple[int, int]
    row: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    doc_start: torch.Tensor  # (B, N) bool: token t begins a document
    positions: torch.Tensor  # (B, N) position ids passed to the model

    @property
    def count(self) -> int:
        return int(self.row.numel())

    @property
    def width(self) -> int:
        return int(self.length.max())

    def _index(self, width: int, span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat ``(D, width)`` indices into a ``(B, cols)`` tensor and their validity."""
        k = torch.arange(width, device=self.start.device)
        valid = k[None, :] < span[:, None]
        return self.start[:, None] + k[None, :], valid

    def tokens(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """Per-token ``(B, N, ...)`` -> ``(D, width, ...)``, ``fill`` after each document."""
        cols, valid = self._index(self.width, self.length)
        out = x[self.row[:, None], cols.clamp(max=x.shape[1] - 1)]
        return torch.where(_expand(valid, out), out, torch.full_like(out, fill))

    def targets(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-target ``(B, N - 1)`` -> ``(D, width - 1)`` (column ``k`` is the target at
        document position ``k + 1``), ``fill`` after each document. Differentiable."""
        cols, valid = self._index(self.width - 1, self.length - 1)
        out = x[self.row[:, None], cols.clamp(min=0, max=max(x.shape[1] - 1, 0))]
        return torch.where(_expand(valid, out), out, torch.full_like(out, fill))

    def scatter_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Per-document ``(D, width - 1)`` -> ``(B, N - 1)``; 0 at document starts."""
        batch, n = self.shape
        out = y.new_zeros((batch, n - 1))
        cols, valid = self._index(self.width - 1, self.length - 1)
        out[self.row[:, None].expand_as(cols)[valid], cols[valid]] = y[valid]
        return out

    def unpack(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with one right-padded row per document: ``input_ids``,
        ``attention_mask`` and ``labels`` ``(D, width)``, ``short_nll`` ``(D, width - 1)``
        when present. Document starts carry no position information any more (each row
        starts at position 0), so the result is an ordinary unpacked batch."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        out: dict[str, Any] = {
            "input_ids": self.tokens(ids),
            "attention_mask": self.tokens(mask.to(ids.dtype)),
        }
        if batch.get("labels") is not None:
            out["labels"] = self.tokens(batch["labels"], fill=IGNORE_INDEX)
        for key in _TARGET_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                out[key] = self.targets(batch[key])
        return out


def _expand(valid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return valid.view(*valid.shape, *([1] * (like.dim() - valid.dim())))


def right_padded_lengths(attention_mask: torch.Tensor, refusal: str) -> torch.Tensor:
    """Valid tokens per row, ``(B,)``, of a right-padded ``(B, N)`` ``attention_mask``
    (valid tokens first, then padding); raise :class:`TokenWeightError` with ``refusal``
    when a row has gaps or left padding."""
    lengths = attention_mask.sum(dim=-1)
    prefix = torch.arange(attention_mask.shape[-1], device=attention_mask.device) < lengths[:, None]
    if not torch.equal(prefix, attention_mask.bool()):
        raise TokenWeightError(refusal)
    return lengths


def find_documents(batch: Mapping[str, Any]) -> Documents | None:
    """The documents of a packed batch, or ``None`` when every row is one document.

    ``batch``: ``input_ids`` ``(B, N)`` and ``position_ids`` ``(B, N)`` (or ``(1, N)``)
    and/or, for one row, ``cu_seq_lens_q`` ``(D + 1,)``; an optional right-padding
    ``attention_mask``. Positions after a row's last real token start no document.
    """
    if "input_ids" not in batch:
        raise TokenWeightError("the batch has no 'input_ids'")
    positions = _position_ids(batch)
    if positions is None or positions.shape[1] < 2:
        return None
    input_ids = batch["input_ids"]
    prev = torch.cat([positions[:, :1] - 1, positions[:, :-1]], dim=1)
    starts = positions != prev + 1
    starts[:, 0] = True
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        starts[:, 1:] &= attention_mask[:, 1:] != 0
    if not bool(starts[:, 1:].any()):
        return None
    if attention_mask is not None:
        right_padded_lengths(
            attention_mask,
            "a packed batch (position_ids restarting inside a row) may only have padding at "
            "the end of each row; its attention_mask has gaps or left padding. Use a "
            "padding-free collator (no attention_mask) or one document per row",
        )
    row, start = starts.nonzero(as_tuple=True)
    ends = torch.cat([start[1:], start.new_full((1,), input_ids.shape[1])])
    ends = torch.where(
        row == torch.cat([row[1:], row.new_full((1,), -1)]), ends, input_ids.shape[1]
    )
    return Documents(
        (int(input_ids.shape[0]), int(input_ids.shape[1])),
        row,
        start,
        ends - start,
        starts,
        positions,
    )


def forward_inputs(
    batch: Mapping[str, Any], docs: Documents | None
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """``(attention_mask, extra model kwargs)`` for the long forward of ``batch``.

    Unpacked: the batch's own ``attention_mask`` and ``position_ids`` (when given).
    Packed: no attention mask (so transformers masks attention per document) and the
    per-document ``position_ids``.
    """
    extra: dict[str, Any] = {}
    if docs is None:
        if batch.get("position_ids") is not None:
            extra["position_ids"] = batch["position_ids"]
        return batch.get("attention_mask"), extra
    extra["position_ids"] = docs.positions
    return None, extra


def valid_target_mask(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, N - 1)`` bool: True for target ``t = 1 .. N-1`` that counts in the loss.

    A target is invalid when its label is ``-100`` or its attention mask is 0 (padding),
    matching the targets :func:`tokenweight.core.losses.model_token_nll` ignores.
    """
    valid = torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
    if labels is not None:
        valid &= labels[:, 1:] != IGNORE_INDEX
    if attention_mask is not None:
        valid &= attention_mask[:, 1:] != 0
    return valid


def target_mask(batch: Mapping[str, Any], docs: Documents | None = None) -> torch.Tensor:
    """``(B, N - 1)`` bool: the targets of ``batch`` that count in the loss.

    Not a target: label ``-100``, attention mask 0 (padding), ``completion_mask`` 0 (a
    prompt token, from collators that send the mask instead of folding it into the
    labels) and, in a packed batch (``docs``), the first token of each document.
    """
    input_ids = batch["input_ids"]
    mask = valid_target_mask(input_ids, batch.get("labels"), batch.get("attention_mask"))
    completion = batch.get("completion_mask")
    if isinstance(completion, torch.Tensor) and completion.shape == input_ids.shape:
        mask &= completion[:, 1:] != 0
    if docs is not None:
        mask &= ~docs.doc_start[:, 1:]
    return mask
