"""Long-range data selection (``tokenweight select``).

From a dataset scored ``--with-long`` (short- and long-context NLL of every target by the
same frozen model), measure how much each sequence and each document depends on long
context, rank them, and write the chosen rows, verbatim, as a new prepared dataset.

This module is the recipe (:func:`select_dataset`): check the options and the output
folder, read the scores after checking them against the prepared rows, measure and choose
(pure numpy, :mod:`tokenweight.workflows.selection_stats`: ``key_share``, ``mean_gain``
and the gain by position, per sequence or per document), write the chosen rows -- checked
against the stored hash of the tokens they were scored on before and after writing -- and
the report (:mod:`tokenweight.workflows.selection_report`). The statistics' names stay
importable from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.selection_report import SELECTION_FILE, summarize, write_report
from tokenweight.workflows.selection_stats import (
    KEY_GAIN,
    KEY_LONG,
    STATISTICS,
    TargetStats,
    aggregate,
    check_fractions,
    choose,
    target_stats,
)

logger = logging.getLogger(__name__)

__all__ = [
    "KEY_GAIN",
    "KEY_LONG",
    "SELECTION_FILE",
    "STATISTICS",
    "SelectionResult",
    "TargetStats",
    "aggregate",
    "choose",
    "select_dataset",
    "target_stats",
]


@dataclass
class SelectionResult:
    """What :func:`select_dataset` wrote and measured."""

    out: Path
    summary: dict[str, Any]
    units: dict[str, np.ndarray] = field(repr=False)
    kept: np.ndarray = field(repr=False)


def _load_scores(scored: Path, prepared: Path) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """The scored rows, the prepared rows and both manifests; refuses a scored folder without
    long NLL, or one scored from other prepared data."""
    import datasets

    from tokenweight.data.manifest import MANIFEST, read_manifest
    from tokenweight.data.store import load_scored_dataset
    from tokenweight.infra.files import sha256_file

    sman = read_manifest(scored, "scored")
    if "long_nll" not in sman.get("columns", []):
        raise TokenWeightError(
            f"{scored} has no long_nll; score it with `tokenweight score ... --with-long` first"
        )
    pman = read_manifest(prepared)
    if sha256_file(prepared / MANIFEST) != sman.get("prepared_manifest_sha256"):
        raise TokenWeightError(
            f"{scored} was not scored from {prepared} (the prepared manifest differs); give the "
            "prepared folder that was scored"
        )
    ds = load_scored_dataset(scored, verify=True)
    prep = datasets.load_from_disk(str(prepared))
    if len(prep) != len(ds):
        raise TokenWeightError(f"{prepared} holds {len(prep)} rows but {scored} scored {len(ds)}")
    return ds, prep, sman, pman


@dataclass
class _Scores:
    """The scored arrays: ``short``/``long`` ``(rows, N - 1)`` nats, ``mask`` ``(rows, N)``
    or ``None``, ``hashes`` the stored hash of each row's tokens."""

    short: np.ndarray
    long: np.ndarray
    mask: np.ndarray | None
    hashes: list[str]


def _read_scores(ds: Any, prep: Any, scored: Path, prepared: Path) -> _Scores:
    """The NLL arrays of ``ds``, after checking that its rows are ``prep``'s rows in order
    (by the stored hash of the tokens each was scored on)."""
    from tokenweight.data.store import input_ids_hash

    cols = ["short_nll", "long_nll", "input_hash", "row"] + (
        ["attention_mask"] if "attention_mask" in ds.column_names else []
    )
    data = ds.with_format("numpy", columns=cols)[:]
    scores = _Scores(
        short=np.stack(data["short_nll"]).astype(np.float32),
        long=np.stack(data["long_nll"]).astype(np.float32),
        mask=np.stack(data["attention_mask"]) if "attention_mask" in data else None,
        hashes=list(data["input_hash"]),
    )
    if not np.array_equal(np.asarray(data["row"]), np.arange(len(ds))):
        raise TokenWeightError(f"{scored}: rows are not in prepared order; rescore it")
    prep_ids = prep.with_format("numpy", columns=["input_ids"])[:]["input_ids"]
    for r, ids in enumerate(prep_ids):
        if input_ids_hash(ids) != scores.hashes[r]:
            raise TokenWeightError(
                f"row {r} of {prepared} does not match the tokens {scored} scored; rescore it"
            )
    return scores


def _check_choice(by: str, level: str, bucket: int | None, show: int, seed: int) -> None:
    """Step: the options, named by their flags, before anything is read."""
    from tokenweight.infra.schema import non_negative, positive, require, seed_range

    if by not in STATISTICS:
        raise TokenWeightError(f"--by must be one of {', '.join(STATISTICS)}, got {by!r}")
    if level not in ("sequence", "document"):
        raise TokenWeightError(f"--level must be sequence or document, got {level!r}")
    if bucket is not None:
        require(bucket, positive, "--bucket")
    require(show, non_negative, "--show")
    require(seed, seed_range, "--seed")


def _doc_ids(prep: Any) -> np.ndarray:
    """``(rows,)`` document id of every prepared row (the row index where none is stored)."""
    return np.asarray(prep["doc_id"]) if "doc_id" in prep.column_names else np.arange(len(prep))


def _kept_rows(
    keep_unit: np.ndarray, units: dict[str, np.ndarray], doc_ids: np.ndarray, level: str, by: str
) -> np.ndarray:
    """Indices of the prepared rows whose unit is kept; refuses an empty choice."""
    unit_of_row = (
        np.arange(len(doc_ids)) if level == "sequence" else np.searchsorted(units["unit"], doc_ids)
    )
    rows = np.nonzero(keep_unit[unit_of_row])[0]
    if len(rows) == 0:
        raise TokenWeightError(
            f"nothing selected ({by} max {np.max(units[by]):.4f}); lower --threshold or use --top"
        )
    return rows


def _selected_manifest(
    pman: dict[str, Any], settings: dict[str, Any], rows: np.ndarray, mask: np.ndarray | None
) -> dict[str, Any]:
    """The prepared manifest of the kept ``rows``: counts updated, the selection recorded."""
    manifest = dict(pman)
    counts = dict(pman["counts"])
    counts["sequences_before_selection"] = counts["sequences"]
    counts["sequences"] = len(rows)
    counts["sequence_tokens"] = int(
        len(rows) * pman["seq_len"] if mask is None else mask[rows].sum()
    )
    manifest["counts"] = counts
    manifest["selection"] = {k: v for k, v in settings.items()}
    manifest["selection"]["file"] = SELECTION_FILE
    return manifest


def _verify_written(folder: Path, rows: np.ndarray, hashes: list[str]) -> None:
    """Every row written to ``folder`` holds the tokens of the input row it was chosen as."""
    import datasets

    from tokenweight.data.store import input_ids_hash

    back = datasets.load_from_disk(str(folder)).with_format("numpy", columns=["input_ids"])
    for k, ids in enumerate(back[:]["input_ids"]):
        if input_ids_hash(ids) != hashes[rows[k]]:
            raise TokenWeightError(f"written row {k} differs from input row {rows[k]}")


def _settings(
    scored: Path,
    prepared: Path,
    sman: dict[str, Any],
    by: str,
    level: str,
    top: float | None,
    threshold: float | None,
    keep_short: float,
    seed: int,
    bucket: int,
) -> dict[str, Any]:
    """What a selection was made from and how (kept in the summary and the manifest)."""
    return {
        "scored": str(scored),
        "prepared": str(prepared),
        "scored_manifest_shards": [s["sha256"] for s in sman["shards"]],
        "by": by,
        "level": level,
        "top": top,
        "threshold": threshold,
        "keep_short": keep_short,
        "seed": seed,
        "bucket": bucket,
        "window": sman["window"],
        "scorer": sman["scorer"]["source"],
    }


def select_dataset(
    scored: str | os.PathLike[str],
    prepared: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    by: str = "key_share",
    level: str = "document",
    top: float | None = None,
    threshold: float | None = None,
    keep_short: float = 0.0,
    seed: int = 0,
    bucket: int | None = None,
    overwrite: bool = False,
    show: int = 5,
) -> SelectionResult:
    """Rank the rows (``level="sequence"``) or documents of ``prepared`` by ``by`` measured
    on ``scored``, and save the chosen rows verbatim to ``out`` (a prepared dataset with
    ``selection.json``, ``selection.md`` and ``selection.png`` beside its rows).

    ``bucket`` (tokens) defaults to the scoring window. See :func:`choose` for ``top``,
    ``threshold`` and ``keep_short``.
    """
    from tokenweight.data.manifest import FINGERPRINT
    from tokenweight.data.prepare import MANIFEST
    from tokenweight.data.store import rows_fingerprint
    from tokenweight.infra.files import atomic_dir, atomic_write_json
    from tokenweight.infra.folder_lock import output_lock

    scored, prepared, out = Path(scored), Path(prepared), Path(out)
    _check_choice(by, level, bucket, show, seed)
    check_fractions(top, threshold, keep_short)
    _check_out(out, overwrite, (scored, prepared))
    with output_lock(out, "--out"):  # one writer per folder, from here to the end
        _check_out(out, overwrite, (scored, prepared))  # again: another run may have written
        ds, prep, sman, pman = _load_scores(scored, prepared)
        bucket = bucket if bucket is not None else int(sman["window"])
        scores = _read_scores(ds, prep, scored, prepared)
        doc_ids = _doc_ids(prep)
        stats = target_stats(scores.short, scores.long, scores.mask, bucket=bucket)
        per_seq = aggregate(stats)
        units = per_seq if level == "sequence" else aggregate(stats, doc_ids)
        if not np.any(units[by]):
            logger.warning(
                "every %s has %s 0 (no target gains from the long context): the selection is "
                "arbitrary (the first ones in order); check the scores or the scoring window",
                level,
                by,
            )
        selected, extra = choose(
            units[by], top=top, threshold=threshold, keep_short=keep_short, seed=seed
        )
        keep_unit = selected | extra
        rows = _kept_rows(keep_unit, units, doc_ids, level, by)

        summary = summarize(units, per_seq, selected, extra, rows, by, level, bucket, stats)
        summary["settings"] = _settings(
            scored, prepared, sman, by, level, top, threshold, keep_short, seed, bucket
        )
        chosen = prep.select(rows.tolist())
        manifest = _selected_manifest(pman, summary["settings"], rows, scores.mask)
        manifest[FINGERPRINT] = rows_fingerprint(chosen)
        try:
            with atomic_dir(out, overwrite=overwrite) as tmp:
                chosen.save_to_disk(str(tmp))
                atomic_write_json(tmp / MANIFEST, manifest)
                _verify_written(tmp, rows, scores.hashes)
                summary["rows"] = rows.tolist()
                summary["hashes_verified"] = len(rows)
                write_report(tmp, summary, units, keep_unit, by, level, show, prep, pman)
        except FileExistsError:
            raise TokenWeightError(
                f"output folder {out} appeared meanwhile; choose another --out"
            ) from None
        return SelectionResult(out=out, summary=summary, units=units, kept=keep_unit)


def _check_out(out: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """An existing ``out`` may only be replaced (``overwrite``) if ``select`` wrote it; the
    output-folder rule of every command holds too."""
    from tokenweight.infra.files import check_output_dir

    check_output_dir(out, "tokenweight select output", markers=(SELECTION_FILE,), inputs=inputs)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise TokenWeightError(f"output folder {out} exists; pass --overwrite to replace it")
    if not (out / SELECTION_FILE).is_file():
        raise TokenWeightError(
            f"{out} was not written by `tokenweight select`; it is left alone - choose another --out"
        )
