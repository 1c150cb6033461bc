"""Token sequences for perplexity evaluation: a prepared dataset folder or text files.

- A folder written by ``tokenweight prepare`` (``datasets`` ``save_to_disk``) is read as
  is: column ``input_ids`` and, when present, ``attention_mask`` (right padding).
- Anything else is a corpus (text / JSONL / Parquet files, folders, globs or Hugging
  Face datasets, read by the same code and options as ``prepare``): every document is
  tokenized with the evaluated model's tokenizer and cut into ``seq_len``-token
  sequences (BOS + ``seq_len - 1`` tokens when the tokenizer has a BOS token), never
  crossing documents, tail dropped — the packing of ``prepare``.

At most ``max_sequences`` sequences are kept, the first ones in order (deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenweight.core.packed_batches import valid_target_mask
from tokenweight.infra.errors import TokenWeightError

__all__ = ["EvalSequences", "is_prepared_dataset", "load_eval_sequences"]


@dataclass(frozen=True)
class EvalSequences:
    """``input_ids`` ``(S, N)`` long; ``attention_mask`` ``(S, N)`` (1 = real token) or
    ``None`` when every token is real; ``bos_token_id`` when every sequence starts with it."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    bos_token_id: int | None
    source: str

    @property
    def target_mask(self) -> torch.Tensor:
        """``(S, N - 1)`` bool (column ``j`` = token ``j+1``): the targets that count in
        training (:func:`tokenweight.core.packed_batches.valid_target_mask`: real tokens) that
        also have a real token before them (differs only under left padding)."""
        mask = valid_target_mask(self.input_ids, attention_mask=self.attention_mask)
        if self.attention_mask is not None:
            mask &= self.attention_mask[:, :-1] != 0
        return mask


@dataclass(frozen=True)
class CorpusOptions:
    """How corpus input is read (the options of ``tokenweight prepare``)."""

    text_field: str = "text"
    glob: str | None = None
    encoding_errors: str = "strict"
    hf_split: str | None = None


def is_prepared_dataset(path: str | Path) -> bool:
    """True for a folder written by ``datasets``' ``save_to_disk``."""
    path = Path(path)
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def _from_dataset(
    path: Path, max_sequences: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    import datasets

    from tokenweight.data.prepare import load_prepared

    ds: Any = load_prepared(path)
    if isinstance(ds, datasets.DatasetDict):
        split = next((s for s in ("validation", "test", "train") if s in ds), None)
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split is None:
            raise TokenWeightError(
                f"{path} holds splits {', '.join(ds)}; save one split or name it validation"
            )
        ds = ds[split]
    if "input_ids" not in ds.column_names:
        raise TokenWeightError(
            f"{path} has no input_ids column (columns: {', '.join(ds.column_names)}); "
            "pass a folder written by `tokenweight prepare` or text files"
        )
    if max_sequences is not None:
        ds = ds.select(range(min(max_sequences, len(ds))))
    columns = ["input_ids"] + (["attention_mask"] if "attention_mask" in ds.column_names else [])
    rows = ds.with_format("numpy", columns=columns)

    def stacked(column: str) -> torch.Tensor:
        try:
            array = np.stack([np.asarray(row) for row in rows[column]])
        except ValueError:
            raise TokenWeightError(
                f"{path}: sequences have different lengths; evaluation needs fixed-length "
                "rows (pad them and add an attention_mask column)"
            ) from None
        return torch.from_numpy(array.astype(np.int64))

    ids = stacked("input_ids")
    mask = None
    if "attention_mask" in columns:
        mask = stacked("attention_mask")
        if bool(mask.all()):
            mask = None
    return ids, mask


def _from_corpus(
    paths: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    max_sequences: int | None,
    corpus: CorpusOptions,
) -> torch.Tensor:
    from tokenweight.data.corpus import find_input_files, iter_documents, load_hub_documents
    from tokenweight.data.packing import Packing

    if corpus.hf_split:
        docs, _ = load_hub_documents(paths, corpus.hf_split, corpus.text_field)
        texts: Iterator[str] = (row["text"] for row in docs)
    else:
        texts = iter_documents(
            find_input_files(list(paths), corpus.glob),
            text_field=corpus.text_field,
            encoding_errors=corpus.encoding_errors,
        )
    packing = Packing(seq_len=seq_len, bos_token_id=tokenizer.bos_token_id)
    rows: list[torch.Tensor] = []
    for text in texts:
        tokens = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        sequences, _ = packing.pack(tokens)
        rows.extend(torch.as_tensor(s, dtype=torch.long) for s in sequences)
        if max_sequences is not None and len(rows) >= max_sequences:
            break
    if not rows:
        raise TokenWeightError(
            f"no document in {', '.join(paths)} is long enough for one {seq_len}-token sequence; "
            "use a smaller --seq-len or longer texts"
        )
    return torch.stack(rows[:max_sequences] if max_sequences is not None else rows)


def _check_data_tokenizer(path: Path, tokenizer: Any) -> None:
    """A ``tokenweight prepare`` folder records its tokenizer: it must be the model's."""
    from tokenweight.data.manifest import MANIFEST, read_manifest
    from tokenweight.infra.models import check_data_tokenizer

    if (path / MANIFEST).is_file() and tokenizer is not None:
        check_data_tokenizer(read_manifest(path), tokenizer, f"--data {path}")


def load_eval_sequences(
    paths: str | Sequence[str],
    tokenizer: Any,
    *,
    seq_len: int,
    max_sequences: int | None = 16,
    text_field: str = "text",
    glob: str | None = None,
    encoding_errors: str = "strict",
    hf_split: str | None = None,
) -> EvalSequences:
    """Sequences to evaluate: a prepared dataset folder, or a corpus cut at ``seq_len``.

    Args:
        paths: one prepared dataset folder, or corpus files / folders / globs (with
            ``hf_split``: Hugging Face dataset names).
        tokenizer: the evaluated model's tokenizer (corpus input only; its BOS is
            prepended to every sequence when it has one).
        seq_len: tokens per sequence for corpus input (ignored for a prepared dataset).
        max_sequences: keep at most this many sequences (``None``: all).
        text_field / glob / encoding_errors / hf_split: how the corpus is read, exactly
            as ``tokenweight prepare`` reads it (:mod:`tokenweight.data.corpus`).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    if not paths:
        raise TokenWeightError("no evaluation data given; pass --data PATH")
    if max_sequences is not None and max_sequences < 1:
        raise TokenWeightError(f"max_sequences must be >= 1, got {max_sequences}")
    if len(paths) == 1 and is_prepared_dataset(paths[0]):
        _check_data_tokenizer(Path(paths[0]), tokenizer)
        ids, mask = _from_dataset(Path(paths[0]), max_sequences)
    else:
        if any(is_prepared_dataset(p) for p in paths):
            raise TokenWeightError("pass a prepared dataset folder alone, not with other inputs")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
            raise TokenWeightError(f"--seq-len must be an integer >= 2, got {seq_len!r}")
        corpus = CorpusOptions(text_field, glob, encoding_errors, hf_split)
        ids, mask = _from_corpus(paths, tokenizer, seq_len, max_sequences, corpus), None
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise TokenWeightError(
            f"evaluation data {', '.join(paths)} gave no usable sequences (shape {tuple(ids.shape)})"
        )
    bos = getattr(tokenizer, "bos_token_id", None)
    starts_with_bos = bos is not None and bool((ids[:, 0] == bos).all())
    return EvalSequences(ids, mask, bos if starts_with_bos else None, ", ".join(paths))
