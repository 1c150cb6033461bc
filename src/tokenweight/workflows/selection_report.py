"""The report of ``tokenweight select``: ``selection.md`` (summary, score and gain
tables, top and bottom units with the start of their text), ``selection.json`` (the
summary and every unit's statistics) and ``selection.png`` (histogram of the kept and the
dropped units).

:func:`summarize` measures what a selection kept; :func:`write_report` writes the three
files into the selected dataset's folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.workflows.selection_stats import KEY_GAIN, KEY_LONG, TargetStats

__all__ = ["SELECTION_FILE", "summarize", "write_report"]

SELECTION_FILE = "selection.json"


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


def summarize(
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
    """What a selection kept (``selection.json``'s summary): counts of units, sequences and
    targets kept and dropped, the key-token share of all and of the kept data, the score
    ``by`` of all, kept and dropped units (min, median, mean, max) and the mean gain
    ``s - l`` (nats) per position bucket of ``bucket`` tokens over every target."""
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


def write_report(
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
