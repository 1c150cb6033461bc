"""``tokenweight select``: keep the documents or sequences that depend on long context."""

from __future__ import annotations

import argparse

from tokenweight.commands import options

HELP = "rank documents by long-context gain (scored --with-long) and keep the top ones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scored", metavar="SCORED", help="folder from `tokenweight score --with-long`"
    )
    parser.add_argument(
        "--prepared", required=True, metavar="DIR", help="the prepared folder that was scored"
    )
    parser.add_argument("--out", required=True, metavar="DIR2", help="selected prepared dataset")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--top",
        type=float,
        metavar="F",
        help="keep the top fraction F (0, 1]; no default: give --top or --threshold",
    )
    how.add_argument(
        "--threshold",
        type=float,
        metavar="X",
        help="keep units scoring >= X; no default: give --top or --threshold",
    )
    parser.add_argument(
        "--by",
        default="key_share",
        choices=["key_share", "mean_gain"],
        help="ranking statistic: share of key tokens (s-l > 2 and l < 2 nats; default) or mean "
        "positive gain max(s-l, 0)",
    )
    parser.add_argument(
        "--level",
        default="document",
        choices=["document", "sequence"],
        help="rank whole documents (all their sequences go together; default) or sequences",
    )
    parser.add_argument(
        "--keep-short",
        type=float,
        default=0.0,
        metavar="F",
        help="also keep this random fraction of the units not selected (short-range data)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --keep-short (default 0)")
    parser.add_argument(
        "--bucket", type=int, default=None, help="position bucket in tokens (default: the window)"
    )
    parser.add_argument("--show", type=int, default=5, help="top/bottom units in the report")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier `select` output at --out"
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.workflows.selection import select_dataset

    result = options.call_with_options(select_dataset, args)
    s = result.summary
    unit = "documents" if s["level"] == "document" else "sequences"
    print(
        f"kept {s['units_selected']} of {s['units']} {unit} by {s['by']}"
        + (f" (+{s['units_kept_short']} short-range at random)" if s["units_kept_short"] else "")
        + f": {s['sequences_kept']} of {s['sequences']} sequences, "
        f"{s['targets_kept']:,} of {s['targets']:,} targets"
    )
    print(
        f"key-token share {s['key_share_all']:.2%} in all data -> {s['key_share_kept']:.2%} kept; "
        f"{s['hashes_verified']} rows verified against their scored hashes"
    )
    print(f"dataset and report (selection.md, selection.json, selection.png) in {result.out}")
    return 0
