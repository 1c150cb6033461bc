"""Stored scores: shards of scored rows, their completion records, manifest and checks.

A scored folder holds:

- ``run.json``: the settings of the scoring run (checked when a run resumes);
- ``shard-IIIII-of-NNNNN.arrow``: rows ``[i * shard_size, (i + 1) * shard_size)`` as one
  Arrow stream file (readable by ``datasets.Dataset.from_file``), written to a temporary
  name and renamed;
- ``shard-...arrow.done.json``: written (atomically) after the rename, with the shard's
  sha256; a shard counts as done only with a sidecar whose hash matches the file;
- ``manifest.json``: written once every shard is done: the run settings, the prepared
  dataset's manifest and every shard's sha256.

Each row holds ``input_ids`` (int32), ``short_nll`` (float32 or float16, ``N - 1``
values), ``input_hash`` (:func:`input_ids_hash`), ``row`` (index in the prepared dataset),
for padded data ``attention_mask`` and, when scored ``--with-long``, ``long_nll`` (the
same model's NLL of the same targets with the whole sequence as context, same dtype).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenweight.data.manifest import (
    DONE_SUFFIX,
    FINGERPRINT,
    MANIFEST,
    RUN_FILE,
    SCORED_FORMAT,
    read_manifest,
)
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import (
    atomic_write_bytes,
    atomic_write_json,
    file_in_folder,
    json_text,
    remove_path,
    sha256_bytes,
    sha256_file,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "RUN_FILE",
    "SCORED_MANIFEST",
    "ShardPlan",
    "clean_shard",
    "finalize_manifest",
    "input_ids_hash",
    "load_scored_dataset",
    "rows_fingerprint",
    "shard_done",
    "shards_fingerprint",
    "verify_row",
    "verify_rows",
    "write_shard",
]

SCORED_MANIFEST = MANIFEST  # the file name every dataset folder's manifest has


def input_ids_hash(input_ids: Any) -> str:
    """Hex BLAKE2b-128 of the token ids as int64 little-endian bytes (any int dtype in)."""
    if hasattr(input_ids, "detach"):
        input_ids = input_ids.detach().cpu().numpy()
    data = np.ascontiguousarray(np.asarray(input_ids).reshape(-1), dtype="<i8").tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def rows_fingerprint(rows: datasets.Dataset, batch_size: int = 4096) -> str:
    """The content fingerprint of prepared rows (the manifest's ``fingerprint``):
    ``sha256:`` + the SHA-256 of every row's ``input_ids`` as int64 little-endian bytes, in
    row order, each row followed by its ``attention_mask`` as int8 when there is one."""
    columns = [c for c in ("input_ids", "attention_mask") if c in rows.column_names]
    h = hashlib.sha256()
    for batch in rows.with_format("numpy", columns=columns).iter(batch_size=batch_size):
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch["attention_mask"]) if "attention_mask" in batch else None
        for i in range(len(ids)):
            h.update(np.ascontiguousarray(ids[i], dtype="<i8").tobytes())
            if mask is not None:
                h.update(np.ascontiguousarray(mask[i], dtype="i1").tobytes())
    return "sha256:" + h.hexdigest()


def shards_fingerprint(shard_hashes: Sequence[str]) -> str:
    """The content fingerprint of a scored folder (its manifest's ``fingerprint``):
    ``sha256:`` + the SHA-256 of the shards' SHA-256 hex digests, one per line."""
    return "sha256:" + sha256_bytes("".join(f"{x}\n" for x in shard_hashes).encode("ascii"))


def verify_row(input_ids: Any, input_hash: str, row: int) -> None:
    """Check that ``input_ids`` are the tokens the stored score of ``row`` was computed for.

    Raises :class:`TokenWeightError` naming the row on a mismatch.
    """
    actual = input_ids_hash(input_ids)
    if actual != input_hash:
        raise TokenWeightError(
            f"row {int(row)}: its input_ids do not match the stored scores (hash {actual[:12]} "
            f"vs stored {str(input_hash)[:12]}); the scores were computed for other data - "
            "rescore this prepared dataset with `tokenweight score`"
        )


def verify_rows(input_ids: Any, input_hashes: Sequence[str], rows: Sequence[int]) -> None:
    """:func:`verify_row` for a ``(batch, N)`` batch."""
    if hasattr(input_ids, "detach"):
        input_ids = input_ids.detach().cpu().numpy()
    for ids, h, r in zip(np.asarray(input_ids), input_hashes, rows):
        verify_row(ids, h, int(r))


@dataclass(frozen=True)
class ShardPlan:
    """Rows ``0 .. num_rows - 1`` cut into consecutive shards of ``shard_size`` rows."""

    num_rows: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise TokenWeightError(f"--shard-size must be at least 1, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.num_rows // self.shard_size))

    def rows(self, i: int) -> tuple[int, int]:
        """``[start, stop)`` rows of shard ``i``."""
        return i * self.shard_size, min((i + 1) * self.shard_size, self.num_rows)

    def name(self, i: int) -> str:
        return f"shard-{i:05d}-of-{self.num_shards:05d}.arrow"

    def owned(self, rank: int, world_size: int) -> list[int]:
        """The shards process ``rank`` of ``world_size`` scores: ``i % world_size == rank``."""
        return [i for i in range(self.num_shards) if i % world_size == rank]


def _features(seq_len: int, half: bool, padded: bool, long: bool = False) -> datasets.Features:
    import datasets

    list_type = getattr(datasets, "List", None) or datasets.Sequence
    cols = {
        "input_ids": list_type(datasets.Value("int32")),
        "short_nll": list_type(datasets.Value("float16" if half else "float32")),
        "input_hash": datasets.Value("string"),
        "row": datasets.Value("int64"),
    }
    if padded:
        cols["attention_mask"] = list_type(datasets.Value("int8"))
    if long:
        cols["long_nll"] = list_type(datasets.Value("float16" if half else "float32"))
    return datasets.Features(cols)


def _list_array(matrix: np.ndarray) -> Any:
    import pyarrow as pa

    rows, width = matrix.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


def _check_shard_arrays(
    i: int, rows: int, input_ids: np.ndarray, short_nll: np.ndarray, long_nll: np.ndarray | None
) -> None:
    """Refuse arrays whose shapes (or ``long_nll``'s dtype) do not fit shard ``i``."""
    if input_ids.shape[0] != rows or short_nll.shape != (
        input_ids.shape[0],
        input_ids.shape[1] - 1,
    ):
        raise ValueError(
            f"shard {i}: expected {rows} rows with N - 1 scores, got input_ids "
            f"{input_ids.shape} and short_nll {short_nll.shape}"
        )
    if long_nll is not None and (
        long_nll.shape != short_nll.shape or long_nll.dtype != short_nll.dtype
    ):
        raise ValueError(
            f"shard {i}: long_nll {long_nll.shape} {long_nll.dtype} must match short_nll "
            f"{short_nll.shape} {short_nll.dtype}"
        )


def _arrow_stream_bytes(
    start: int,
    stop: int,
    input_ids: np.ndarray,
    short_nll: np.ndarray,
    attention_mask: np.ndarray | None,
    long_nll: np.ndarray | None,
) -> bytes:
    """Rows ``[start, stop)`` as one Arrow IPC stream in the scored-dataset schema."""
    import pyarrow as pa

    half = short_nll.dtype == np.float16
    features = _features(
        input_ids.shape[1], half, attention_mask is not None, long=long_nll is not None
    )
    columns = {
        "input_ids": _list_array(input_ids),
        "short_nll": _list_array(short_nll),
        "input_hash": pa.array([input_ids_hash(r) for r in input_ids], pa.string()),
        "row": pa.array(np.arange(start, stop, dtype=np.int64)),
    }
    if attention_mask is not None:
        columns["attention_mask"] = _list_array(np.asarray(attention_mask, dtype=np.int8))
    if long_nll is not None:
        columns["long_nll"] = _list_array(long_nll)
    schema = features.arrow_schema
    table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def write_shard(
    out_dir: str | Path,
    plan: ShardPlan,
    i: int,
    *,
    input_ids: np.ndarray,
    short_nll: np.ndarray,
    attention_mask: np.ndarray | None = None,
    long_nll: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write shard ``i`` (file, then its ``.done.json``), both atomically.

    ``input_ids``: ``(rows, N)`` ints; ``short_nll``: ``(rows, N - 1)`` float32 or float16
    (stored as given); ``attention_mask``: ``(rows, N)`` or ``None``; ``long_nll``: like
    ``short_nll`` or ``None``. Returns the sidecar.
    """
    out_dir = Path(out_dir)
    start, stop = plan.rows(i)
    input_ids = np.asarray(input_ids, dtype=np.int32)
    _check_shard_arrays(i, stop - start, input_ids, short_nll, long_nll)
    data = _arrow_stream_bytes(start, stop, input_ids, short_nll, attention_mask, long_nll)
    name = plan.name(i)
    atomic_write_bytes(out_dir / name, data)
    sidecar = {
        "shard": i,
        "file": name,
        "rows": [start, stop],
        "sha256": sha256_bytes(data),
        "bytes": len(data),
    }
    atomic_write_json(out_dir / (name + DONE_SUFFIX), sidecar)
    return sidecar


def _read_sidecar(out_dir: Path, plan: ShardPlan, i: int) -> dict[str, Any] | None:
    path = out_dir / (plan.name(i) + DONE_SUFFIX)
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def shard_done(out_dir: str | Path, plan: ShardPlan, i: int, *, check_hash: bool = True) -> bool:
    """Whether shard ``i`` is complete: sidecar present and matching the file's bytes."""
    out_dir = Path(out_dir)
    sidecar = _read_sidecar(out_dir, plan, i)
    path = out_dir / plan.name(i)
    if sidecar is None or not path.is_file() or sidecar.get("rows") != list(plan.rows(i)):
        return False
    if path.stat().st_size != sidecar.get("bytes"):
        return False
    return not check_hash or sha256_file(path) == sidecar.get("sha256")


def clean_shard(
    out_dir: str | Path, plan: ShardPlan, i: int, *, temporary_only: bool = False
) -> None:
    """Remove every trace of an unfinished shard ``i``: temporary files left by an
    interrupted write and, unless ``temporary_only``, the shard file and its sidecar."""
    out_dir = Path(out_dir)
    name = plan.name(i)
    for path in out_dir.glob(f".{name}.*"):
        remove_path(path)
    if temporary_only:
        return
    remove_path(out_dir / (name + DONE_SUFFIX))
    remove_path(out_dir / name)


def finalize_manifest(out_dir: str | Path, plan: ShardPlan, run: dict[str, Any]) -> bool:
    """Write ``manifest.json`` if every shard is done; return whether it was written.

    Safe to call from several processes: the content is deterministic, the write atomic.
    """
    out_dir = Path(out_dir)
    shards = []
    for i in range(plan.num_shards):
        sidecar = _read_sidecar(out_dir, plan, i)
        if sidecar is None or not (out_dir / plan.name(i)).is_file():
            return False
        shards.append({k: sidecar[k] for k in ("file", "rows", "sha256", "bytes")})
    manifest = {
        "format": SCORED_FORMAT,
        "format_version": 1,
        **run,
        "shards": shards,
        FINGERPRINT: shards_fingerprint([s["sha256"] for s in shards]),
    }
    path = out_dir / SCORED_MANIFEST
    if not path.is_file() or path.read_bytes() != json_text(manifest).encode("utf-8"):
        atomic_write_json(path, manifest)
    return True


def load_scored_dataset(out_dir: str | Path, verify: bool = True) -> datasets.Dataset:
    """All scored rows as one memory-mapped ``datasets.Dataset``, in prepared row order.

    With ``verify`` every shard's sha256 is checked against the manifest first; a missing,
    truncated or modified shard raises :class:`TokenWeightError` naming it.
    """
    import datasets

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir, "scored")
    parts = []
    for entry in manifest["shards"]:
        path = file_in_folder(out_dir, entry.get("file"), out_dir / SCORED_MANIFEST)
        if not path.is_file():
            raise TokenWeightError(
                f"shard {path} listed in the manifest is missing; rerun `tokenweight score` "
                "with the same arguments to redo it"
            )
        if verify and (
            path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]
        ):
            raise TokenWeightError(
                f"shard {path} does not match its sha256 in the manifest: the file was "
                "modified or corrupted; rerun `tokenweight score` with the same arguments: "
                "it verifies every shard and scores the broken ones again"
            )
        try:
            parts.append(datasets.Dataset.from_file(str(path)))
        except Exception as exc:  # pyarrow raises several types; all mean "unreadable"
            raise TokenWeightError(
                f"shard {path} is not a readable Arrow file ({type(exc).__name__}); rerun "
                "`tokenweight score` with the same arguments to score it again"
            ) from None
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(ds) != manifest["num_rows"]:
        raise TokenWeightError(
            f"{out_dir}: shards hold {len(ds)} rows but the manifest says {manifest['num_rows']}"
        )
    return ds
