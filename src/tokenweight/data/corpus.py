"""Reading a corpus: which files, and the documents inside them.

A document is one text file, one JSONL record or one Parquet row (``text_field``), or one
record of a Hugging Face dataset. Documents get ids ``0, 1, ...`` in input order (files in
the order given, folder contents sorted). Every problem a user can cause (missing path,
undecodable bytes, missing field) raises :class:`TokenWeightError` naming the file and
where in it.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tokenweight.infra.errors import TokenWeightError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "ENCODING_ERRORS",
    "InputFile",
    "find_input_files",
    "iter_documents",
    "load_hub_documents",
]

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
ENCODING_ERRORS = ("strict", "replace", "ignore")

Kind = Literal["text", "jsonl", "parquet"]


def _kind(path: Path) -> Kind:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


@dataclass
class InputFile:
    """One input file; ``sha256``, ``bytes`` and ``documents`` are filled while reading."""

    path: Path
    kind: Kind
    sha256: str | None = None
    bytes: int = 0
    documents: int = 0
    first_doc: int = 0

    def as_manifest(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "documents": self.documents,
            "first_doc_id": self.first_doc,
        }


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_input_files(inputs: Sequence[str], pattern: str | None = None) -> list[InputFile]:
    """Expand INPUT arguments into files.

    Each input is a file (any suffix; ``.jsonl/.json/.ndjson`` are JSON lines, ``.parquet``
    Parquet, everything else text), a folder (searched recursively with ``pattern``,
    default every file with a known suffix, hidden files skipped), or a glob pattern.
    Duplicates are read once. Raises for a missing path or when nothing is found.
    """
    files: list[InputFile] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(InputFile(path, _kind(path)))

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_file():
            add(path)
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob(pattern or "*")
                if p.is_file()
                and not _is_hidden(p, path)
                and (pattern is not None or p.suffix.lower() in KNOWN_SUFFIXES)
            )
            for p in found:
                add(p)
        elif any(c in text for c in "*?["):
            for name in sorted(globlib.glob(str(path), recursive=True)):
                if Path(name).is_file():
                    add(Path(name))
        else:
            raise TokenWeightError(
                f"input {text!r} does not exist (to read a Hugging Face dataset by name, "
                "also pass --hf-split, e.g. --hf-split train)"
            )
    if not files:
        looked = pattern or " ".join(f"*{s}" for s in KNOWN_SUFFIXES)
        raise TokenWeightError(
            f"empty corpus: no input files found in {', '.join(inputs)} (looked for {looked}; "
            "choose other files with --glob)"
        )
    return files


def _decode(data: bytes, where: str, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise TokenWeightError(
            f"{where}: bytes that are not valid UTF-8 at byte offset {offset + exc.start} "
            f"({data[exc.start : exc.start + 4]!r}); fix the file or pass "
            "--encoding-errors replace to substitute them"
        ) from None


def _read_text(f: InputFile, errors: str) -> Iterator[str]:
    data = f.path.read_bytes()
    f.bytes = len(data)
    f.sha256 = hashlib.sha256(data).hexdigest()
    yield _decode(data, str(f.path), 0, errors).removeprefix("\ufeff")


def _field_value(record: object, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise TokenWeightError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(sorted(record)) or "none"
        raise TokenWeightError(
            f"{where}: no field {text_field!r} (fields: {fields}); choose the text field "
            "with --text-field"
        )
    value = record[text_field]
    if not isinstance(value, str):
        raise TokenWeightError(
            f"{where}: field {text_field!r} holds {type(value).__name__}, not text"
        )
    return value


def _read_jsonl(f: InputFile, text_field: str, errors: str) -> Iterator[str]:
    h = hashlib.sha256()
    offset = 0
    with open(f.path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            h.update(raw)
            where = f"{f.path} line {lineno}"
            line = _decode(raw, where, offset, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenWeightError(
                    f"{where}: not valid JSON ({exc.msg}); expected one JSON object per line"
                ) from None
            yield _field_value(record, text_field, where)
    f.bytes = offset
    f.sha256 = h.hexdigest()


def _read_parquet(f: InputFile, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenweight.infra.files import sha256_file

    try:
        pf = pq.ParquetFile(f.path)
    except (pa.ArrowException, OSError) as exc:
        raise TokenWeightError(f"{f.path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise TokenWeightError(
            f"{f.path}: no column {text_field!r} (columns: {', '.join(names)}); choose the "
            "text field with --text-field"
        )
    column_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise TokenWeightError(f"{f.path}: column {text_field!r} holds {column_type}, not text")
    f.bytes = f.path.stat().st_size
    f.sha256 = sha256_file(f.path)
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is None:
                raise TokenWeightError(f"{f.path} row {row}: column {text_field!r} is null")
            row += 1
            yield value


def iter_documents(
    files: Sequence[InputFile], *, text_field: str = "text", encoding_errors: str = "strict"
) -> Iterator[str]:
    """Yield the text of every document, in order, filling each file's hash and counts."""
    if encoding_errors not in ENCODING_ERRORS:
        raise TokenWeightError(
            f"unknown --encoding-errors {encoding_errors!r}; use one of {', '.join(ENCODING_ERRORS)}"
        )
    doc_id = 0
    for f in files:
        f.first_doc = doc_id
        if f.kind == "text":
            texts = _read_text(f, encoding_errors)
        elif f.kind == "jsonl":
            texts = _read_jsonl(f, text_field, encoding_errors)
        else:
            texts = _read_parquet(f, text_field)
        for text in texts:
            f.documents += 1
            doc_id += 1
            yield text


def load_hub_documents(
    names: Sequence[str], split: str, text_field: str
) -> tuple[datasets.Dataset, list[dict[str, Any]]]:
    """Hugging Face datasets ``names`` (hub names or local data folders), split ``split``,
    as one dataset of columns ``text`` (from ``text_field``) and ``doc_id`` (0, 1, ...),
    plus one manifest entry per dataset. Loading may need the network."""
    import datasets
    import numpy as np

    parts, inputs = [], []
    for name in names:
        try:
            ds = datasets.load_dataset(name, split=split)
        except Exception as exc:  # the hub client raises many types; all mean "cannot load"
            raise TokenWeightError(
                f"could not load Hugging Face dataset {name!r} split {split!r}: {exc}"
            ) from None
        if text_field not in ds.column_names:
            raise TokenWeightError(
                f"dataset {name!r} has no column {text_field!r} (columns: "
                f"{', '.join(ds.column_names)}); choose the text field with --text-field"
            )
        ds = ds.select_columns([text_field])
        if text_field != "text":
            ds = ds.rename_column(text_field, "text")
        inputs.append({"hf_dataset": name, "split": split, "documents": len(ds)})
        inputs[-1]["fingerprint"] = getattr(ds, "_fingerprint", None)
        parts.append(ds)
    docs = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    return docs.add_column("doc_id", np.arange(len(docs), dtype=np.int64)), inputs
