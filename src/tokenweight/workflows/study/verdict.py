"""What a study's paired differences say: families of metrics, Holm's correction over every
comparison, the bottom line per family, and the warning when the start model barely uses
its context. Pure functions over the plain data of ``study.json``.

Families: the *long-range targets* are those whose prediction needs context beyond the
original window (targets beyond it, window-wide buckets past it, LongPPL's key tokens,
synthetic copies from at least ``window`` tokens back); *other targets* are everything
else (all targets, inside the window, copies from nearer, the rest); *retrieval probes*
are the probe tasks' accuracies.

A run *beats the baseline on the long-range targets* when at least one long-range metric
is better and none is worse, each after Holm's correction over every comparison of the
study (metrics x runs, probes included); its *cost elsewhere* is what holds, better or
worse, on the other targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenweight.evaluation.paired import holm
from tokenweight.infra.markdown import format_number, md_escape

__all__ = [
    "LONG_RANGE",
    "MIN_KEY_SHARE",
    "MIN_TARGETS",
    "OTHER",
    "PROBES",
    "apply_holm",
    "bottom_line",
    "context_verdict",
    "context_warning",
]

LONG_RANGE = "long-range targets"
OTHER = "other targets"
PROBES = "retrieval probes"
# the context check reads a group of targets inside the window only from this many on
MIN_TARGETS = 30
# under this share of LongPPL key tokens the start model shows no long-range signal
MIN_KEY_SHARE = 0.001


def apply_holm(differences: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Add ``p_holm`` and ``holds`` (``"better"``, ``"worse"`` or ``""``) to every row of
    ``differences`` (in place) and return the correction's summary.

    A row *holds* when its Holm-adjusted p-value is below ``alpha`` and its interval
    excludes 0 too (both readings agree). Rows without targets (p NaN) are not counted.
    """
    adjusted = holm([d.get("p", float("nan")) for d in differences])
    for d, p in zip(differences, adjusted):
        d["p_holm"] = p
        holds = p == p and p < alpha and not d.get("inside_noise", True)
        d["holds"] = ("better" if d["verdict"].startswith("better") else "worse") if holds else ""
    m = sum(1 for p in adjusted if p == p)
    return {
        "method": "holm",
        "comparisons": m,
        "alpha": alpha,
        "expected_false_uncorrected": m * alpha,
        "outside_noise_uncorrected": sum(
            1 for d in differences if d.get("targets") and not d.get("inside_noise", True)
        ),
    }


def context_verdict(check: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The context check's figure against ``threshold`` (nats): the largest gain of the
    start model from its whole context over short windows, among the inside-the-window
    rows of ``check`` (``inside_check``) with at least :data:`MIN_TARGETS` targets (all
    rows if none has that many; without rows, the gain beyond the window)."""
    rows = check.get("inside_check") or {}
    counted = {k: v for k, v in rows.items() if v.get("targets", 0) >= MIN_TARGETS} or {
        k: v for k, v in rows.items() if v.get("targets")
    }
    gains = {k: v["local"] - v["whole"] for k, v in counted.items()}
    if gains:
        where = max(gains, key=lambda k: gains[k])
        gain = gains[where]
    else:
        where, gain = "beyond the original context", check.get("start_gain_beyond")
    return {
        "gain": gain,
        "where": where,
        "threshold": threshold,
        "uses_context": gain is not None and gain >= threshold,
    }


def context_warning(check: dict[str, Any], verdict: dict[str, Any]) -> list[str]:
    """Markdown lines of the warning (empty when the start model uses its context)."""
    lines: list[str] = []
    if not verdict["uses_context"]:
        gain = verdict["gain"]
        figure = "not measured" if gain is None else f"{gain:.3f} nats ({verdict['where']})"
        window = check.get("local_window")
        lines += [
            "> **Warning: the start model barely uses its context.** Its largest gain from "
            "the whole context"
            + (f" over windows of {window} tokens" if window else "")
            + f" is {figure}, under the threshold of {verdict['threshold']:g} nats "
            "(`min_context_gain`). A model that does not use its context cannot show "
            "whether a weighting teaches long-range use: read the differences below as "
            "effects on the loss, not as evidence of a long-range benefit. Start from a "
            "model that uses its context (a longer-trained start model, or data with "
            "dependencies it can learn).",
            "",
        ]
    if check.get("key_share") is not None and check["key_share"] < MIN_KEY_SHARE:
        beyond = check.get("start_gain_beyond")
        gain = (
            "" if beyond is None else f" its gain from the whole sequence is {beyond:.3f} nats and"
        )
        lines += [
            "> **Warning: the start model shows no long-range signal.** Beyond its original "
            f"context{gain} {check['key_share']:.2%} of the targets are LongPPL key tokens "
            f"(under {MIN_KEY_SHARE:.1%}): the key-token row rests on few or no targets, and "
            "the long-range rows can only show what the training itself teaches.",
            "",
        ]
    return lines


def _item(d: dict[str, Any]) -> str:
    unit = "" if d["metric"].startswith("probe") else " nats"
    diff, low, high = (format_number(d[k], sign=True) for k in ("diff", "low", "high"))
    return f"{md_escape(d['metric'])} {diff}{unit} [{low}, {high}]"


def _listing(rows: Sequence[dict[str, Any]]) -> str:
    return "; ".join(_item(d) for d in rows)


def _names(runs: Sequence[str]) -> str:
    return ", ".join(f"**{md_escape(r)}**" for r in runs)


def bottom_line(results: dict[str, Any]) -> list[str]:
    """Markdown lines: which runs beat the baseline on the long-range targets, at what
    cost elsewhere, the probes, and the correction used (``results``: ``study.json``
    with :func:`apply_holm` applied and ``families``: metric -> family)."""
    base, fam = results["baseline"], results["families"]
    shown = md_escape(base)  # run names and metrics are user text
    corr = results["correction"]
    diffs = [d for d in results["differences"] if d.get("targets")]
    conf = 1 - corr["alpha"]
    lines = [
        f"Every difference below holds after Holm's correction over the {corr['comparisons']} "
        f"comparisons of this study (metrics x runs; family-wise error {corr['alpha']:.0%}). "
        f"Read one by one at {conf:.0%}, about {corr['expected_false_uncorrected']:.1f} of "
        f"them would fall outside the noise by chance alone if no run differed from "
        f"{shown}; {corr['outside_noise_uncorrected']} do.",
        "",
    ]
    families = {f: [m for m in results["metrics"] if fam.get(m) == f] for f in (LONG_RANGE, OTHER)}
    # "no cost elsewhere" below means: no difference on the other targets holds
    lines.append(
        f"- Long-range targets: {md_escape(', '.join(families[LONG_RANGE])) or 'none in this study'}; "
        f"other targets: {md_escape(', '.join(families[OTHER])) or 'none'}."
    )
    runs = [r for r in results["runs"] if r != base]
    beat: list[str] = []
    worse: list[str] = []
    mixed: list[str] = []
    none: list[str] = []
    for run in runs:
        long = [d for d in diffs if d["run"] == run and fam.get(d["metric"]) == LONG_RANGE]
        good = [d for d in long if d["holds"] == "better"]
        bad = [d for d in long if d["holds"] == "worse"]
        (mixed if good and bad else beat if good else worse if bad else none).append(run)

    def held(run: str, family: str) -> list[dict[str, Any]]:
        return [
            d for d in diffs if d["run"] == run and fam.get(d["metric"]) == family and d["holds"]
        ]

    def elsewhere(run: str) -> str:
        other = held(run, OTHER)
        cost = [d for d in other if d["holds"] == "worse"]
        gain = [d for d in other if d["holds"] == "better"]
        text = f"cost elsewhere: worse on {_listing(cost)}" if cost else "no cost elsewhere"
        return text + (f"; better elsewhere on {_listing(gain)}" if gain else "")

    if beat:
        lines.append(f"- **Better than {shown} on the long-range targets:** {_names(beat)}.")
        lines += [
            f"  - **{md_escape(r)}**: {_listing(held(r, LONG_RANGE))}; {elsewhere(r)}."
            for r in beat
        ]
    else:
        lines.append(
            f"- **No run is better than {shown} on the long-range targets** after the correction."
        )
    for group, head in (
        (worse, f"Worse than {shown} on the long-range targets"),
        (mixed, "Better on some long-range targets, worse on others"),
    ):
        if group:
            lines.append(f"- {head}: {_names(group)}.")
            lines += [
                f"  - **{md_escape(r)}**: {_listing(held(r, LONG_RANGE))}; {elsewhere(r)}."
                for r in group
            ]
    if none:
        lines.append(f"- No long-range difference holds for {_names(none)}.")
        lines += [f"  - **{md_escape(r)}**: {elsewhere(r)}." for r in none if held(r, OTHER)]
    probes = [d for d in diffs if fam.get(d["metric"]) == PROBES and d["holds"]]
    if any(fam.get(d["metric"]) == PROBES for d in diffs):
        lines.append(
            "- Retrieval probes (accuracy, positive = better): "
            + (
                "; ".join(f"**{md_escape(d['run'])}** {_item(d)}" for d in probes)
                if probes
                else "no difference holds"
            )
            + "."
        )
    return lines
