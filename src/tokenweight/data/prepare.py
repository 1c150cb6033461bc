"""Corpus -> shuffled fixed-length token sequences on disk (``tokenweight prepare``).

Steps: read documents into an Arrow file, tokenize them in parallel (``datasets.map``),
check the counts, cut documents into sequences (:class:`~tokenweight.data.packing.Packing`),
shuffle with a seed, number the rows, and save a ``datasets`` folder plus
``manifest.json``. Intermediate files live in a scratch folder next to the output and are
removed at the end; the output folder appears atomically.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenweight.data.corpus import InputFile, find_input_files, iter_documents, load_hub_documents
from tokenweight.data.manifest import FINGERPRINT, MANIFEST, PREPARED_FORMAT, read_manifest
from tokenweight.data.packing import Packing
from tokenweight.data.store import rows_fingerprint
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import (
    atomic_dir,
    atomic_write_json,
    check_output_dir,
    clean_stale_siblings,
    file_in_folder,
    read_json,
    remove_path,
    temp_sibling,
)
from tokenweight.infra.folder_lock import output_lock
from tokenweight.infra.schema import require, seed_range

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "MANIFEST",
    "PrepareResult",
    "column_features",
    "format_summary",
    "load_prepared",
    "prepare_dataset",
    "read_manifest",
]

FORMAT = PREPARED_FORMAT
# what a prepared folder holds (``datasets.save_to_disk`` files and the manifest)
PREPARED_FILES = (MANIFEST, "dataset_info.json", "state.json", "data-*.arrow")
_DOC_BATCH_CHARS = 64 << 20


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` did: the manifest written, and timings in seconds."""

    out: Path
    manifest: dict[str, Any]
    seconds: float
    tokenize_seconds: float
    num_proc: int

    @property
    def tokens_per_second(self) -> float:
        """Document tokens per second of tokenizing and cutting (reading and saving excluded)."""
        return self.manifest["counts"]["document_tokens"] / max(self.tokenize_seconds, 1e-9)


class _Tokenize:
    """``datasets.map`` function (picklable for ``num_proc``): texts -> token ids.

    Special tokens are not added; BOS is placed exactly by the packing step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        ids = self.tokenizer(
            batch["text"], add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        return {
            "tokens": [np.asarray(x, dtype=np.int32) for x in ids],
            "n_tokens": [len(x) for x in ids],
        }


def column_features(columns: dict[str, str]) -> datasets.Features:
    """The Arrow schema of a table of prepared rows, from a compact spelling.

    ``columns`` maps a column name to a ``datasets`` value type (``"int64"``) or, in
    brackets, a list of that type (``"[int32]"``), e.g.
    ``{"input_ids": "[int32]", "row": "int64"}``; returns the ``datasets.Features``
    (``datasets.List`` where the installed release has it, else ``datasets.Sequence``).
    """
    import datasets

    list_type = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features(
        {
            name: list_type(datasets.Value(d[1:-1])) if d.startswith("[") else datasets.Value(d)
            for name, d in columns.items()
        }
    )


def _write_documents(
    files: list[InputFile], path: Path, text_field: str, encoding_errors: str
) -> datasets.Dataset:
    """Stream every document into an Arrow file (``text``, ``doc_id``); memory-flat."""
    import datasets
    import pyarrow as pa

    schema = pa.schema([("text", pa.large_string()), ("doc_id", pa.int64())])
    texts: list[str] = []
    size = doc_id = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:

        def flush() -> None:
            nonlocal texts, size
            ids = list(range(doc_id - len(texts), doc_id))
            writer.write_batch(pa.record_batch([texts, ids], schema=schema))
            texts, size = [], 0

        for text in iter_documents(files, text_field=text_field, encoding_errors=encoding_errors):
            texts.append(text)
            size += len(text)
            doc_id += 1
            if size >= _DOC_BATCH_CHARS:
                flush()
        if texts or doc_id == 0:
            flush()
    return datasets.Dataset.from_file(str(path))


def load_prepared(folder: str | Path) -> datasets.Dataset:
    """The rows of a prepared dataset folder (memory-mapped); an unreadable or truncated
    Arrow file raises :class:`TokenWeightError` naming the folder and the fix."""
    import datasets

    state = Path(folder) / "state.json"
    if state.is_file():  # the Arrow files datasets will open: only this folder's
        record = read_json(state, "prepare it again with `tokenweight prepare --overwrite`")
        files = record.get("_data_files", []) if isinstance(record, dict) else []
        for entry in files if isinstance(files, list) else []:
            name = entry.get("filename") if isinstance(entry, dict) else entry
            file_in_folder(folder, name, state)
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as exc:  # pyarrow and datasets raise many types; all mean "unreadable"
        raise TokenWeightError(
            f"{folder} holds a prepared dataset whose files cannot be read "
            f"({type(exc).__name__}: {str(exc)[:200]}); prepare it again with "
            "`tokenweight prepare --overwrite`"
        ) from None


def _check_output(
    out: Path,
    seq_len: int,
    tokenizer: Any,
    local_inputs: list[Any],
    overwrite: bool,
    num_proc: int,
    seed: int,
) -> None:
    """Step: refuse bad options and an output folder the tool may not replace
    (``local_inputs``: the input files, which the output must not overlap)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise TokenWeightError(
            f"--seq-len must be an integer of at least 2 (a sequence needs one target), "
            f"got {seq_len!r}"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        local_inputs = [*local_inputs, os.fspath(tokenizer)]
    check_output_dir(
        out,
        "tokenweight prepare output",
        markers=(MANIFEST,),
        known=PREPARED_FILES,
        inputs=local_inputs,
    )
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise TokenWeightError(f"output folder {out} exists; pass --overwrite to replace it")
    clean_stale_siblings(out)  # scratch and half-moved folders of a killed earlier run
    if num_proc < 1:
        raise TokenWeightError(f"--num-proc must be at least 1, got {num_proc}")
    require(seed, seed_range, "--seed")


def _tokenizer_and_packing(
    tokenizer: Any,
    seq_len: int,
    *,
    stride: int | None,
    keep_tail: bool,
    trust_remote_code: bool,
) -> tuple[Any, Packing]:
    """Step: the tokenizer (loaded when given by name) and how documents are cut."""
    from tokenweight.infra.models import load_tokenizer

    if isinstance(tokenizer, (str, os.PathLike)):
        tok = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    else:
        tok = tokenizer
    pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    packing = Packing(
        seq_len, bos_token_id=tok.bos_token_id, stride=stride, keep_tail=keep_tail, pad_token_id=pad
    )
    return tok, packing


def _read_documents(
    inputs: Sequence[str],
    files: list[InputFile] | None,
    hf_split: str | None,
    scratch: Path,
    text_field: str,
    encoding_errors: str,
) -> tuple[datasets.Dataset, list[dict[str, Any]]]:
    """Step: the documents (``text``, ``doc_id``) and the manifest entries of the inputs."""
    if files is not None:
        docs = _write_documents(files, scratch / "documents.arrow", text_field, encoding_errors)
        input_entries = [f.as_manifest() for f in files]
    else:
        assert hf_split  # no input files: a hub split is read
        docs, input_entries = load_hub_documents(inputs, hf_split, text_field)
    if len(docs) == 0:
        raise TokenWeightError(f"empty corpus: no documents in {', '.join(inputs)}")
    return docs, input_entries


def _sequence_columns(keep_tail: bool) -> dict[str, str]:
    columns = {"input_ids": "[int32]", "doc_id": "int64"}
    if keep_tail:
        columns["attention_mask"] = "[int8]"
    return columns


def _tokenize_and_cut(
    docs: datasets.Dataset,
    tok: Any,
    packing: Packing,
    inputs: Sequence[str],
    scratch: Path,
    tag: str,
    num_proc: int,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Step: token ids of every document (in parallel), checked counts, then the
    fixed-length sequences."""
    tokenized = docs.map(
        _Tokenize(tok),
        batched=True,
        batch_size=16,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["text"],
        features=column_features({"doc_id": "int64", "tokens": "[int32]", "n_tokens": "int64"}),
        cache_file_name=str(scratch / "tokens.arrow"),
        new_fingerprint=f"tokens-{tag}",
        desc="tokenizing",
    )
    n_tokens = tokenized.data.column("n_tokens").to_numpy()
    counts = _counts(n_tokens, packing, inputs)
    sequences = tokenized.map(
        packing.pack_batch,
        batched=True,
        batch_size=16,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=tokenized.column_names,
        features=column_features(_sequence_columns(packing.keep_tail)),
        cache_file_name=str(scratch / "sequences.arrow"),
        new_fingerprint=f"sequences-{tag}",
        desc="cutting into sequences",
    )
    return sequences, counts


def _shuffle(
    sequences: datasets.Dataset, seed: int, keep_tail: bool, scratch: Path, tag: str
) -> datasets.Dataset:
    """Step: the sequences in a seeded random order, numbered by ``row``."""
    return sequences.shuffle(seed=seed, indices_cache_file_name=str(scratch / "indices.arrow")).map(
        lambda batch, idx: {"row": idx},
        batched=True,
        with_indices=True,
        features=column_features({**_sequence_columns(keep_tail), "row": "int64"}),
        cache_file_name=str(scratch / "shuffled.arrow"),
        new_fingerprint=f"shuffled-{tag}",
        desc="shuffling",
    )


def _limit(
    shuffled: datasets.Dataset, max_sequences: int | None, counts: dict[str, int], keep_tail: bool
) -> datasets.Dataset:
    """Step: at most ``max_sequences`` rows (the first of the shuffle: a random sample, the
    same for any limit); ``counts`` updated in place."""
    if max_sequences is None:
        return shuffled
    if max_sequences < 1:
        raise TokenWeightError(f"--max-sequences must be >= 1, got {max_sequences}")
    counts["sequences_before_limit"] = len(shuffled)
    if max_sequences < len(shuffled):
        shuffled = shuffled.select(range(max_sequences))
        kept = shuffled.data.column("input_ids").combine_chunks()
        counts["sequences"] = max_sequences
        counts["sequence_tokens"] = int(
            sum(len(x) for x in kept.to_pylist())
            if not keep_tail
            else sum(sum(m) for m in shuffled["attention_mask"])
        )
    return shuffled


@contextmanager
def _scratch_folder(out: Path) -> Iterator[tuple[Path, str]]:
    """A scratch folder next to ``out`` for the intermediate Arrow files (removed after,
    whatever happens) and a fresh tag naming this run's ``datasets`` fingerprints."""
    scratch = temp_sibling(out, "work")
    scratch.mkdir(parents=True)
    try:
        yield scratch, uuid.uuid4().hex
    finally:
        remove_path(scratch)


def _save(out: Path, rows: datasets.Dataset, manifest: dict[str, Any], overwrite: bool) -> None:
    """Step: the rows and ``manifest.json``, the folder appearing atomically."""
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            rows.save_to_disk(str(tmp))
            atomic_write_json(tmp / MANIFEST, manifest)
    except FileExistsError:
        raise TokenWeightError(
            f"output folder {out} appeared while preparing; pass --overwrite to replace it"
        ) from None


def _manifest(
    *,
    tokenizer: dict[str, Any],
    packing: Packing,
    seed: int,
    max_sequences: int | None,
    text_field: str,
    encoding_errors: str,
    inputs: list[dict[str, Any]],
    counts: dict[str, int],
    columns: Sequence[str],
    fingerprint: str,
) -> dict[str, Any]:
    """The content of ``manifest.json``: how the folder was made and what it holds."""
    from tokenweight import __version__

    return {
        "format": FORMAT,
        "format_version": 1,
        "tokenweight_version": __version__,
        "tokenizer": tokenizer,
        "seq_len": packing.seq_len,
        "bos_token_id": packing.bos_token_id,
        "pad_token_id": packing.pad_token_id,
        "stride": packing.step,
        "keep_tail": packing.keep_tail,
        "seed": seed,
        "max_sequences": max_sequences,
        "text_field": text_field,
        "encoding_errors": encoding_errors,
        "inputs": inputs,
        "counts": counts,
        "columns": sorted(columns),
        FINGERPRINT: fingerprint,
    }


def prepare_dataset(
    inputs: Sequence[str],
    *,
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase,
    seq_len: int,
    out: str | os.PathLike[str],
    text_field: str = "text",
    hf_split: str | None = None,
    glob: str | None = None,
    stride: int | None = None,
    keep_tail: bool = False,
    seed: int = 42,
    num_proc: int = 1,
    encoding_errors: str = "strict",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    max_sequences: int | None = None,
) -> PrepareResult:
    """Tokenize ``inputs`` and save shuffled ``seq_len``-token sequences to ``out``.

    Output rows: ``input_ids`` (int32, length ``seq_len``), ``doc_id`` (int64), ``row``
    (int64, the row's index in the saved order) and, with ``keep_tail``, ``attention_mask``
    (int8). See docs/data.md for every option. Raises :class:`TokenWeightError` for
    every bad input, before writing anything.
    """
    from tokenweight.infra.models import tokenizer_identity

    start = time.perf_counter()
    out = Path(out)
    local_inputs = [] if hf_split else list(inputs)
    _check_output(out, seq_len, tokenizer, local_inputs, overwrite, num_proc, seed)
    files = None if hf_split else find_input_files(inputs, glob)
    tok, packing = _tokenizer_and_packing(
        tokenizer, seq_len, stride=stride, keep_tail=keep_tail, trust_remote_code=trust_remote_code
    )
    identity = tokenizer_identity(tok)
    with output_lock(out, "--out"), _scratch_folder(out) as (scratch, tag):
        # again under the lock: another run may have finished into ``out`` meanwhile
        _check_output(out, seq_len, tokenizer, local_inputs, overwrite, num_proc, seed)
        docs, input_entries = _read_documents(
            inputs, files, hf_split, scratch, text_field, encoding_errors
        )
        t0 = time.perf_counter()
        sequences, counts = _tokenize_and_cut(docs, tok, packing, inputs, scratch, tag, num_proc)
        tokenize_seconds = time.perf_counter() - t0
        shuffled = _shuffle(sequences, seed, keep_tail, scratch, tag)
        shuffled = _limit(shuffled, max_sequences, counts, keep_tail)
        manifest = _manifest(
            tokenizer={**identity, "source": str(tokenizer) if tok is not tokenizer else None},
            packing=packing,
            seed=seed,
            max_sequences=max_sequences,
            text_field=text_field,
            encoding_errors=encoding_errors,
            inputs=input_entries,
            counts=counts,
            columns=shuffled.column_names,
            fingerprint=rows_fingerprint(shuffled),
        )
        _save(out, shuffled, manifest, overwrite)
    seconds = time.perf_counter() - start
    return PrepareResult(out, manifest, seconds, tokenize_seconds, num_proc)


def _counts(n_tokens: np.ndarray, packing: Packing, inputs: Sequence[str]) -> dict[str, int]:
    """Corpus counts; raises when the corpus is empty or yields no sequence."""
    total = int(n_tokens.sum())
    if total == 0:
        raise TokenWeightError(
            f"empty corpus: {len(n_tokens)} documents in {', '.join(inputs)} but no text"
        )
    n_seq = covered = real = 0
    for n in n_tokens.tolist():
        starts = packing.starts(n)
        n_seq += len(starts)
        covered += packing.covered(n)
        real += sum(min(packing.content_len, n - s) for s in starts)
    if n_seq == 0:
        need = packing.content_len
        after = " after BOS" if packing.bos_token_id is not None else ""
        raise TokenWeightError(
            f"every document is shorter than a sequence: all {len(n_tokens)} documents have "
            f"fewer than {need} tokens (the {need} a {packing.seq_len}-token sequence holds"
            f"{after}); the longest has {int(n_tokens.max())}; use a smaller --seq-len or "
            "keep short documents padded with --keep-tail"
        )
    prefix = 1 if packing.bos_token_id is not None else 0
    return {
        "documents": len(n_tokens),
        "empty_documents": int((n_tokens == 0).sum()),
        "short_documents": int((n_tokens < packing.content_len).sum()),
        "longest_document": int(n_tokens.max()),
        "document_tokens": total,
        "sequences": n_seq,
        "sequence_tokens": real + prefix * n_seq,
        "padding_tokens": n_seq * packing.seq_len - real - prefix * n_seq,
        "dropped_tokens": total - covered,
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def format_summary(result: PrepareResult) -> str:
    """A one-screen, human-readable summary of a preparation run."""
    m, c = result.manifest, result.manifest["counts"]
    n = m["seq_len"]
    bos = m["bos_token_id"] is not None
    layout = f"BOS + {n - 1} tokens" if bos else f"{n} tokens, no BOS"
    files = [i for i in m["inputs"] if "path" in i]
    src = (
        f"{len(files)} files, {_human_bytes(sum(i['bytes'] for i in files))}"
        if files
        else ", ".join(f"{i['hf_dataset']} [{i['split']}]" for i in m["inputs"])
    )
    dropped = c["dropped_tokens"] / max(c["document_tokens"], 1)
    tok = m["tokenizer"]
    size = sum(p.stat().st_size for p in result.out.rglob("*") if p.is_file())
    lines = [
        f"prepared {c['documents']:,} documents -> {c['sequences']:,} sequences of {n} tokens "
        f"({layout})",
        f"  inputs      {src}",
        f"  tokenizer   {tok.get('source') or tok['name_or_path']} ({tok['class']}, "
        f"vocabulary {tok['vocab_size']:,}, BOS {m['bos_token_id']})",
        f"  tokens      {c['document_tokens']:,} in documents, {c['sequence_tokens']:,} in "
        f"sequences{' (BOS included)' if bos else ''}, {c['dropped_tokens']:,} dropped "
        f"({dropped:.1%})",
        f"  documents   {c['short_documents']:,} shorter than one sequence "
        f"({c['empty_documents']:,} empty); longest {c['longest_document']:,} tokens",
        f"  cutting     stride {m['stride']}"
        + (" (no overlap)" if m["stride"] == n - int(bos) else " (overlapping)")
        + (
            f", tail kept padded ({c['padding_tokens']:,} pad)"
            if m["keep_tail"]
            else ", tail dropped"
        )
        + f", shuffled with seed {m['seed']}",
        f"  time        {result.seconds:.1f} s; tokenizing {result.tokens_per_second:,.0f} "
        f"tokens/s with {result.num_proc} process{'es' if result.num_proc > 1 else ''}",
        f"  output      {result.out} ({_human_bytes(size)})",
    ]
    return "\n".join(lines)
