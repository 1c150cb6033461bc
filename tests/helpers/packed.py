"""Packed (padding-free) batches as TRL's padding-free collator gives them, and the
per-document split of per-target values, for the packed-batch and reference-scorer tests."""

from __future__ import annotations

import torch


def packed_batch(docs: list[torch.Tensor], with_cu: bool = True) -> dict[str, torch.Tensor]:
    """What TRL's padding-free collator gives: one row, restarting positions, the first
    label of every document -100, cumulative lengths."""
    ids = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    labels = ids.masked_fill(pos == 0, -100)
    batch = {"input_ids": ids, "position_ids": pos, "labels": labels}
    if with_cu:
        lengths = torch.tensor([len(d) for d in docs])
        cu = torch.tensor([0, *lengths.cumsum(0).tolist()], dtype=torch.int32)
        batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu
    return batch


def split_targets(x: torch.Tensor, docs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Packed ``(1, total - 1)`` per-target values -> each document's ``(len - 1,)``."""
    out, start = [], 0
    for d in docs:
        out.append(x[0, start : start + len(d) - 1])
        start += len(d)
    return out
