"""Long-range data selection (``tokenweight select``).

From a dataset scored ``--with-long`` (short- and long-context NLL of every target by the
same frozen model), measure how much each sequence and each document depends on long
context, rank them, and write the chosen rows, verbatim, as a new prepared dataset.

Per target ``t`` the *gain* is ``g = s - l`` (short-context minus long-context NLL,
nats). Statistics over the valid targets of a sequence (or of all sequences of a
document):

- ``key_share``: share of *key tokens* as in LongPPL, ``g > 2`` and ``l < 2``;
- ``mean_gain``: mean positive gain, ``mean(max(g, 0))``;
- gain by distance: mean ``g`` of the targets in each position bucket
  ``[k * bucket, (k + 1) * bucket)`` (the context a target has in the long pass).

The statistics are pure numpy (:func:`target_stats`, :func:`aggregate`); the writer
(:func:`select_dataset`) checks every chosen row against the stored hash of the tokens it
was scored on before and after writing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.evaluation.metrics import LONGPPL_ALPHA, LONGPPL_BETA, is_key_token
from tokenweight.infra.errors import TokenWeightError

logger = logging.getLogger(__name__)

__all__ = [
    "KEY_GAIN",
    "KEY_LONG",
    "SELECTION_FILE",
    "SelectionResult",
    "aggregate",
    "choose",
    "select_dataset",
    "target_stats",
]

# LongPPL's thresholds on s - l and on l (nats), defined in tokenweight.evaluation.metrics
KEY_GAIN = LONGPPL_ALPHA
KEY_LONG = LONGPPL_BETA
SELECTION_FILE = "selection.json"
STATISTICS = ("key_share", "mean_gain")


@dataclass
class TargetStats:
    """Per-row sums over valid targets; ``(rows,)`` arrays except ``bucket_*``
    ``(rows, buckets)``."""

    targets: np.ndarray
    key: np.ndarray
    positive_gain: np.ndarray
    bucket_targets: np.ndarray
    bucket_gain: np.ndarray


def target_stats(
    short_nll: np.ndarray,
    long_nll: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    bucket: int,
) -> TargetStats:
    """Sums of the key-token, positive-gain and bucketed-gain statistics per row.

    ``short_nll``, ``long_nll``: ``(rows, N - 1)`` nats, column ``j`` is target ``j + 1``;
    ``mask``: ``(rows, N)`` attention mask (1 = real token) or ``None``; ``bucket``: width
    of the position buckets in tokens (target ``t`` falls in bucket ``t // bucket``).
    """
    s = np.asarray(short_nll, dtype=np.float64)
    lo = np.asarray(long_nll, dtype=np.float64)
    if s.shape != lo.shape or s.ndim != 2:
        raise TokenWeightError(f"short_nll {s.shape} and long_nll {lo.shape} must match")
    if bucket < 1:
        raise TokenWeightError(f"bucket must be at least 1 token, got {bucket}")
    valid = np.ones_like(s, dtype=bool) if mask is None else np.asarray(mask)[:, 1:] != 0
    g = np.where(valid, s - lo, 0.0)
    key = valid & is_key_token(lo, s)
    t = np.arange(1, s.shape[1] + 1)
    nb = int(t[-1] // bucket) + 1 if t.size else 1
    onehot = (t[:, None] // bucket) == np.arange(nb)[None, :]  # (N - 1, buckets)
    return TargetStats(
        targets=valid.sum(axis=1),
        key=key.sum(axis=1),
        positive_gain=np.clip(g, 0, None).sum(axis=1),
        bucket_targets=valid.astype(np.float64) @ onehot,
        bucket_gain=g @ onehot,
    )


def aggregate(stats: TargetStats, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-unit statistics: rows (``groups=None``) or groups of rows (documents).

    Returns ``unit`` (row index or group id, sorted), ``rows`` (rows per unit),
    ``targets``, ``key_share``, ``mean_gain`` and ``bucket_gain`` (``(units, buckets)``,
    NaN where a unit has no target in a bucket). Shares are over targets, so a document's
    value is its token-weighted mean over its sequences.
    """
    n = len(stats.targets)
    if groups is None:
        units, inverse = np.arange(n), np.arange(n)
    else:
        units, inverse = np.unique(np.asarray(groups), return_inverse=True)

    def total(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(units), *x.shape[1:]))
        np.add.at(out, inverse, x)
        return out

    targets = total(stats.targets.astype(np.float64))
    bt = total(stats.bucket_targets)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.maximum(targets, 1)
        return {
            "unit": units,
            "rows": np.bincount(inverse, minlength=len(units)),
            "targets": targets.astype(np.int64),
            "key_share": total(stats.key.astype(np.float64)) / denom,
            "mean_gain": total(stats.positive_gain) / denom,
            "bucket_gain": np.where(
                bt > 0, total(stats.bucket_gain) / np.where(bt > 0, bt, 1), np.nan
            ),
        }


def choose(
    values: np.ndarray,
    *,
    top: float | None = None,
    threshold: float | None = None,
    keep_short: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Which units to keep: ``(selected, extra)`` boolean arrays over ``values``.

    ``selected``: the ``ceil(top * n)`` highest values (ties: earlier unit first) or those
    ``>= threshold`` (exactly one of the two); ``extra``: a random ``keep_short`` fraction
    (rounded half up) of the others, kept so the result still holds short-range data.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    _check_fractions(top, threshold, keep_short)
    selected = np.zeros(n, dtype=bool)
    if top is not None:
        order = np.argsort(-values, kind="stable")
        selected[order[: int(np.ceil(top * n - 1e-9))]] = True
    else:
        selected = values >= threshold
    extra = np.zeros(n, dtype=bool)
    rest = np.nonzero(~selected)[0]
    k = int(np.floor(keep_short * len(rest) + 0.5))
    if k:
        extra[np.random.default_rng(seed).choice(rest, size=k, replace=False)] = True
    return selected, extra


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


def _check_fractions(top: float | None, threshold: float | None, keep_short: float) -> None:
    """``--top`` or ``--threshold`` (one of them), ``--keep-short``: in range."""
    if (top is None) == (threshold is None):
        raise TokenWeightError("choose one of --top FRACTION or --threshold VALUE")
    if top is not None and not 0 < top <= 1:
        raise TokenWeightError(f"--top must be a fraction in (0, 1], got {top}")
    if not 0 <= keep_short <= 1:
        raise TokenWeightError(f"--keep-short must be a fraction in [0, 1], got {keep_short}")


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
    _check_fractions(top, threshold, keep_short)
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

        summary = _summary(units, per_seq, selected, extra, rows, by, level, bucket, stats)
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
                _write_report(tmp, summary, units, keep_unit, by, level, show, prep, pman)
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


def _describe(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {}
    return {
        "min": float(x.min()),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "max": float(x.max()),
    }


def _summary(
    units: dict[str, np.ndarray],
    per_seq: dict[str, np.ndarray],
    selected: np.ndarray,
    extra: np.ndarray,
    rows: np.ndarray,
    by: str,
    level: str,
    bucket: int,
    stats: TargetStats,
) -> dict[str, Any]:
    kept = selected | extra
    tgt = units["targets"]
    bt = stats.bucket_targets.sum(axis=0)
    bg = stats.bucket_gain.sum(axis=0)
    return {
        "level": level,
        "by": by,
        "units": len(kept),
        "units_selected": int(selected.sum()),
        "units_kept_short": int(extra.sum()),
        "units_dropped": int((~kept).sum()),
        "sequences": len(per_seq["unit"]),
        "sequences_kept": len(rows),
        "targets": int(tgt.sum()),
        "targets_kept": int(tgt[kept].sum()),
        "key_share_all": float((units["key_share"] * tgt).sum() / max(tgt.sum(), 1)),
        "key_share_kept": float((units["key_share"] * tgt)[kept].sum() / max(tgt[kept].sum(), 1)),
        "score_all": _describe(units[by]),
        "score_kept": _describe(units[by][kept]),
        "score_dropped": _describe(units[by][~kept]),
        "gain_by_distance": [
            {
                "start": k * bucket,
                "end": (k + 1) * bucket,
                "targets": int(bt[k]),
                "mean_gain": float(bg[k] / bt[k]) if bt[k] else None,
            }
            for k in range(len(bt))
        ],
    }


def _snippet(prep: Any, pman: dict[str, Any], row: int, chars: int = 90) -> str:
    """The first characters of a row's text (decoded with the prepared tokenizer if it
    loads offline; else the first token ids)."""
    ids = [int(i) for i in prep[int(row)]["input_ids"][:64]]
    source = (pman.get("tokenizer") or {}).get("source")
    try:
        from tokenweight.infra.models import load_tokenizer

        text = load_tokenizer(source).decode(ids, skip_special_tokens=True) if source else None
    except Exception:  # a moved or hub tokenizer: show ids instead
        text = None
    text = text if isinstance(text, str) else " ".join(map(str, ids[:16]))
    return " ".join(text.split())[:chars]


def _write_report(
    folder: Path,
    summary: dict[str, Any],
    units: dict[str, np.ndarray],
    kept: np.ndarray,
    by: str,
    level: str,
    show: int,
    prep: Any,
    pman: dict[str, Any],
) -> None:
    """``selection.md`` (summary, score and gain tables, top and bottom units),
    ``selection.json`` (the summary and every unit's statistics) and ``selection.png``."""
    from tokenweight.infra.files import atomic_write_json, atomic_write_text

    name = "document" if level == "document" else "row"
    order = np.argsort(-units[by], kind="stable")
    first_row = _first_rows(prep) if level == "document" else {}

    def table(idx: np.ndarray) -> list[str]:
        return _units_table(idx, units, name, first_row, prep, pman)

    lines = _report_head(summary, by, level, name)
    lines += ["", f"## Top {name}s", "", *table(order[:show])]
    lines += ["", f"## Bottom {name}s", "", *table(order[::-1][:show])]
    atomic_write_text(folder / "selection.md", "\n".join(lines) + "\n")
    detail = {
        **summary,
        "units_table": {
            k: units[k].tolist() for k in ("unit", "rows", "targets", "key_share", "mean_gain")
        },
    }
    atomic_write_json(folder / SELECTION_FILE, json.loads(json.dumps(detail)))
    _histogram(units[by], kept, by, name, folder / "selection.png")


def _first_rows(prep: Any) -> dict[int, int]:
    """Document id -> index of its first prepared row (empty without ``doc_id``)."""
    first_row: dict[int, int] = {}
    docs = np.asarray(prep["doc_id"]) if "doc_id" in prep.column_names else None
    for r, d in enumerate(docs if docs is not None else []):
        first_row.setdefault(int(d), r)
    return first_row


def _units_table(
    idx: np.ndarray,
    units: dict[str, np.ndarray],
    name: str,
    first_row: dict[int, int],
    prep: Any,
    pman: dict[str, Any],
) -> list[str]:
    """Markdown rows of the units ``idx``: statistics and the start of their text."""
    from tokenweight.infra.markdown import markdown_table

    rows = []
    for i in idx:
        u = int(units["unit"][i])
        row = first_row.get(u, u) if name == "document" else u
        rows.append(
            [
                str(u),
                str(int(units["rows"][i])),
                f"{units['key_share'][i]:.2%}",
                f"{units['mean_gain'][i]:.3f}",
                _snippet(prep, pman, row),  # escaped by markdown_table
            ]
        )
    return markdown_table([name, "sequences", "key share", "mean gain", "text"], rows)


def _report_head(s: dict[str, Any], by: str, level: str, name: str) -> list[str]:
    """The report's summary paragraph, score table and gain-by-position table."""
    from tokenweight.infra.markdown import markdown_table

    lines = [
        f"# Selection by {by} ({level} level)",
        "",
        f"Kept {s['units_selected']} of {s['units']} {name}s by {by}"
        + (
            f" plus {s['units_kept_short']} at random (short-range share)"
            if s["units_kept_short"]
            else ""
        )
        + f"; dropped {s['units_dropped']}. Sequences {s['sequences_kept']} of {s['sequences']}; "
        f"targets {s['targets_kept']:,} of {s['targets']:,}.",
        "",
        f"Key-token share (s - l > {KEY_GAIN:g} and l < {KEY_LONG:g} nats): "
        f"{s['key_share_all']:.2%} in all data, {s['key_share_kept']:.2%} in the kept data. "
        f"Every kept row was checked against the hash of the tokens it was scored on.",
        "",
        "## Score",
        "",
    ]
    lines += markdown_table(
        ["", "min", "median", "mean", "max"],
        [
            [k.replace("score_", "")]
            + [f"{s[k][q]:.4f}" if s[k] else "-" for q in ("min", "median", "mean", "max")]
            for k in ("score_all", "score_kept", "score_dropped")
        ],
    )
    lines += ["", "![histogram](selection.png)", "", "## Mean gain s - l by target position", ""]
    lines += markdown_table(
        ["targets", "count", "mean gain (nats)"],
        [
            [
                f"[{b['start']}, {b['end']})",
                f"{b['targets']:,}",
                "-" if b["mean_gain"] is None else f"{b['mean_gain']:.4f}",
            ]
            for b in s["gain_by_distance"]
        ],
    )
    return lines


def _histogram(values: np.ndarray, kept: np.ndarray, by: str, name: str, path: Path) -> None:
    """Stacked histogram of the score ``values`` of the kept and the dropped units."""
    from matplotlib.figure import Figure

    from tokenweight.evaluation.plots import save_png

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(
        [values[kept], values[~kept]],
        bins=30,
        stacked=True,
        color=["tab:blue", "0.75"],
        label=[f"kept {name}s", f"dropped {name}s"],
    )
    ax.set_xlabel(by.replace("_", " "))
    ax.set_ylabel(f"{name}s")
    ax.set_title(f"{by.replace('_', ' ')} per {name}")
    ax.legend()
    save_png(fig, path)
