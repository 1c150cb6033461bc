"""``study.md``, ``study.json`` and ``study.png`` of a study, from its results
(:func:`tokenweight.workflows.study.stats.study_results`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenweight.infra.files import atomic_write_json, atomic_write_text
from tokenweight.infra.markdown import format_number, markdown_table, md_escape

__all__ = ["write_study_report"]


def write_study_report(results: dict[str, Any], work: Path) -> Path:
    """``study.md``, ``study.json`` and ``study.png`` in ``work``; returns the markdown.
    Run names and metrics are user text: escaped in tables and prose alike."""
    from tokenweight.workflows.study.verdict import bottom_line, context_warning

    atomic_write_json(work / "study.json", results)
    conf = results["config"]["confidence"]
    check = results["context_check"]
    lines = [
        "# Study",
        "",
        f"Baseline: **{md_escape(results['baseline'])}**. Seeds {results['seeds']}, "
        f"{results['held_out_sequences']} held-out sequences; original context "
        f"{results['config']['window']} tokens. Differences are run minus baseline in mean NLL "
        f"(nats; negative = better), paired over the same targets and seeds, with "
        f"{conf:.0%} bootstrap intervals over seeds and held-out sequences. Probe rows give "
        "accuracy instead (the share of prompts answered right; positive = better), paired "
        "over seeds and prompts.",
        "",
        *(context_warning(check, check["verdict"]) if "verdict" in check else []),
        *(["## Bottom line", "", *bottom_line(results), ""] if "correction" in results else []),
        *_context_section(check),
        "",
        "## Paired differences against the baseline",
        "",
        *_differences_table(results["differences"], conf),
        "",
        "## In words",
        "",
        f"Each comparison read on its own at {conf:.0%} (no correction; the bottom line "
        "gives what holds after it):",
        "",
        *_in_words(results),
        "",
        "![differences by position bucket](study.png)",
        "",
    ]
    if "seconds" in results:
        lines.append(
            f"Time of all steps (when they ran): {results.get('step_seconds', 0) / 60:.1f} min; "
            f"this invocation: {results['seconds'] / 60:.1f} min."
        )
    path = atomic_write_text(work / "study.md", "\n".join(lines) + "\n")
    _plot(results, work / "study.png")
    return path


def _context_section(c: dict[str, Any]) -> list[str]:
    """Markdown: does the start model use its context (:func:`context_check`)?"""

    extended = "start_extended_by_metric" in c
    lines = [
        "## Does the start model use its context?",
        "",
        f"Start model, held-out targets beyond the original context: NLL "
        f"{format_number(c['start_nll_beyond'])} with the whole sequence vs {format_number(c['start_short_nll_beyond'])} "
        f"from windows of the original context (gain {format_number(c['start_gain_beyond'])} nats); "
        f"LongPPL key tokens: {c['key_share']:.2%} of targets.",
        "",
    ]
    inside = c.get("inside_check")
    if inside:
        lines += [
            f"Inside the original context, the start model with everything before each target "
            f"vs with windows of {c['local_window']} tokens (NLL, nats; a lower 'whole' "
            "means it uses its context):",
            "",
            *markdown_table(
                ["targets", "count", "whole context", f"{c['local_window']}-token windows", "gain"],
                [
                    [
                        k,
                        f"{v['targets']:,}",
                        format_number(v["whole"]),
                        format_number(v["local"]),
                        format_number(v["local"] - v["whole"], sign=True),
                    ]
                    for k, v in inside.items()
                ],
            ),
            "",
        ]
    return lines + markdown_table(
        ["targets", "start model NLL"] + (["start, extended RoPE, untrained"] if extended else []),
        [
            [k, format_number(v)]
            + ([format_number(c["start_extended_by_metric"][k])] if extended else [])
            for k, v in c["start_by_metric"].items()
        ],
    )


def _differences_table(differences: list[dict[str, Any]], conf: float) -> list[str]:
    """Markdown table of every paired difference (:func:`metric_differences`)."""

    rows = [
        [
            d["metric"],
            d["run"],
            f"{d['targets']:,}",
            format_number(d["baseline"]),
            format_number(d["diff"], sign=True),
            f"[{format_number(d['low'], sign=True)}, {format_number(d['high'], sign=True)}]",
            d["verdict"],
            *([format_number(d["p_holm"]), d["holds"] or "-"] if "p_holm" in d else []),
        ]
        for d in differences
    ]
    header = ["targets", "run", "count", "baseline NLL", "difference", f"{conf:.0%} interval"]
    holm = ["p (Holm)", "holds after Holm"] if any("p_holm" in d for d in differences) else []
    return markdown_table([*header, "verdict", *holm], rows)


def _in_words(results: dict[str, Any]) -> list[str]:
    """One bullet per run: its first metric and how many metrics it is better or worse on."""

    lines = []
    diffs = [d for d in results["differences"] if d["targets"]]
    for run in results["runs"]:
        mine = [d for d in diffs if d["run"] == run]
        if not mine:
            continue
        worse = [d["metric"] for d in mine if d["verdict"].startswith("worse")]
        better = [d["metric"] for d in mine if d["verdict"].startswith("better")]
        head = mine[0]
        lines.append(
            f"- **{md_escape(run)}**: {md_escape(head['metric'])} "
            f"{format_number(head['diff'], sign=True)} nats "
            f"[{format_number(head['low'], sign=True)}, {format_number(head['high'], sign=True)}], "
            f"{head['verdict']}; over all {len(mine)} metrics: better on {len(better)}"
            + (f" ({md_escape(', '.join(better))})" if better else "")
            + f", worse on {len(worse)}, inside the noise on {len(mine) - len(better) - len(worse)}."
        )
    if all(d["inside_noise"] for d in diffs):
        lines.append(
            "- Every difference is inside the noise: no run is distinguishable from the "
            "baseline at this size (steps, seeds, held-out sequences)."
        )
    return lines


def _plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    from tokenweight.evaluation.plots import save_png

    diffs = [
        d
        for d in results["differences"]
        if d["metric"].startswith(("bucket", "inside", "beyond", "copied", "LongPPL"))
    ]
    metrics = list(dict.fromkeys(d["metric"] for d in diffs))
    runs = [r for r in results["runs"] if r != results["baseline"]]
    fig = Figure(figsize=(max(6, 1.1 * len(metrics) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    for j, run in enumerate(runs):
        xs, ys, lo, hi = [], [], [], []
        for k, m in enumerate(metrics):
            d = next((x for x in diffs if x["run"] == run and x["metric"] == m), None)
            if d is None or not d["targets"]:
                continue
            xs.append(k - 0.4 + width * (j + 0.5))
            ys.append(d["diff"])
            lo.append(d["diff"] - d["low"])
            hi.append(d["high"] - d["diff"])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=2, label=run, markersize=3)
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"NLL difference vs {results['baseline']} (nats)")
    ax.legend(fontsize=6, ncol=2)
    save_png(fig, path)
