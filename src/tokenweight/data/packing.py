"""Cutting tokenized documents into fixed-length training sequences.

A sequence holds ``N`` tokens: ``BOS + (N - 1)`` document tokens when the tokenizer has a
BOS token, else ``N`` document tokens. Sequences never cross documents. Windows of
document tokens start every ``stride`` tokens (default: no overlap). The incomplete tail
is dropped, or with ``keep_tail`` kept as one more sequence, right-padded, with an
attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenweight.infra.errors import TokenWeightError

__all__ = ["Packing"]


@dataclass(frozen=True)
class Packing:
    """How documents become sequences.

    ``seq_len`` is ``N`` (tokens per sequence, BOS included); ``stride`` counts document
    tokens between window starts (``None``: ``content_len``, i.e. no overlap).
    """

    seq_len: int
    bos_token_id: int | None = None
    stride: int | None = None
    keep_tail: bool = False
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int):
            raise TokenWeightError(f"--seq-len must be an integer, got {self.seq_len!r}")
        if self.seq_len < 2:
            raise TokenWeightError(
                f"--seq-len must be at least 2 (a sequence needs one target), got {self.seq_len}"
            )
        if self.stride is not None and not 1 <= self.stride <= self.content_len:
            raise TokenWeightError(
                f"--stride must be between 1 and {self.content_len} (the document tokens per "
                f"sequence), got {self.stride}"
            )

    @property
    def content_len(self) -> int:
        """Document tokens per full sequence (``N - 1`` with BOS, else ``N``)."""
        return self.seq_len - (1 if self.bos_token_id is not None else 0)

    @property
    def step(self) -> int:
        return self.stride or self.content_len

    def starts(self, n_tokens: int) -> list[int]:
        """Start offsets (in document tokens) of the sequences cut from an ``n_tokens`` doc."""
        width = self.content_len
        starts = list(range(0, n_tokens - width + 1, self.step)) if n_tokens >= width else []
        if self.keep_tail:
            covered = starts[-1] + width if starts else 0
            if covered < n_tokens:
                starts.append(starts[-1] + self.step if starts else 0)
        return starts

    def covered(self, n_tokens: int) -> int:
        """How many leading document tokens appear in some sequence (the rest is dropped)."""
        starts = self.starts(n_tokens)
        return min(n_tokens, starts[-1] + self.content_len) if starts else 0

    def pack(self, tokens: Sequence[int] | np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        """Sequences (int32 arrays of length ``N``, right-padded) and their real lengths."""
        tokens = np.asarray(tokens, dtype=np.int32)
        prefix = 1 if self.bos_token_id is not None else 0
        sequences, lengths = [], []
        for start in self.starts(len(tokens)):
            chunk = tokens[start : start + self.content_len]
            seq = np.full(self.seq_len, self.pad_token_id, dtype=np.int32)
            if self.bos_token_id is not None:
                seq[0] = self.bos_token_id
            seq[prefix : prefix + len(chunk)] = chunk
            sequences.append(seq)
            lengths.append(prefix + len(chunk))
        return sequences, lengths

    def pack_batch(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """``datasets.map(batched=True)`` function: docs (``tokens``, ``doc_id``) -> rows.

        Rows have ``input_ids``, ``doc_id`` and, with ``keep_tail``, ``attention_mask``
        (int8, 1 for real tokens).
        """
        out: dict[str, list[Any]] = {"input_ids": [], "doc_id": []}
        if self.keep_tail:
            out["attention_mask"] = []
        for tokens, doc_id in zip(batch["tokens"], batch["doc_id"]):
            sequences, lengths = self.pack(tokens)
            out["input_ids"].extend(sequences)
            out["doc_id"].extend([doc_id] * len(sequences))
            if self.keep_tail:
                for length in lengths:
                    mask = np.zeros(self.seq_len, dtype=np.int8)
                    mask[:length] = 1
                    out["attention_mask"].append(mask)
        return out
