"""Writing an evaluation: markdown tables (models side by side as columns), PNG figures,
``results.json``; every file written atomically."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tokenweight.evaluation.tasks import PROBE, TEXT, Column, EvalTask, load, tasks_of
from tokenweight.infra.markdown import format_number, markdown_table, md_escape

__all__ = [
    "EVAL_FILES",
    "column_value",
    "columns_section",
    "format_number",
    "longppl_section",
    "markdown_table",
    "md_escape",
    "perplexity_section",
    "plot_nll_figure",
    "results_markdown",
    "write_outputs",
]

# what an evaluation folder holds; results.json (first) marks an earlier evaluation
EVAL_FILES = ("results.json", "results.md", "*.png")


def _pct(correct: int, total: int) -> str:
    return f"{correct / total:.0%} ({correct}/{total})" if total else "-"


def column_value(result: dict[str, Any], column: Column) -> str:
    """One number of a text task's ``result`` as its ``column`` shows it (``-`` when
    missing)."""
    value = result.get(column.key)
    if column.digits is None:
        return "-" if value is None else str(value)
    return format_number(value, column.digits)


def columns_section(entries: list[dict[str, Any]], task: EvalTask) -> list[str]:
    """The ``results.md`` section of a text task without a ``section`` of its own: its
    columns, one row per model."""
    header = ["model", *(c.label for c in task.columns)]
    rows = [
        [e["label"], *(column_value(e.get(task.key) or {}, c) for c in task.columns)]
        for e in entries
    ]
    return ["", f"## {task.label}", "", *markdown_table(header, rows)]


def _span(start: int, end: int) -> str:
    def k(n: int) -> str:
        return f"{n // 1024}K" if n % 1024 == 0 and n else str(n)

    return f"[{k(start)}, {k(end)})"


def _models_section(entries: list[dict[str, Any]]) -> list[str]:
    return markdown_table(
        ["model", "source", "native context", "RoPE theta"],
        [
            [
                e["label"],
                str(e["source"]) if e.get("source") else "(in memory)",
                str(e.get("max_position_embeddings") or "-"),
                f"{e['rope_theta']:g}" if e.get("rope_theta") else "-",
            ]
            for e in entries
        ],
    )


def _probes_section(
    entries: list[dict[str, Any]], settings: dict[str, Any], probe_tasks: list[EvalTask]
) -> list[str]:
    labels = [e["label"] for e in entries]
    out = ["", "## Probes", ""]
    out.append(
        f"Exact-match accuracy of greedy answers; {settings['trials']} prompt(s) per "
        f"(length, depth), depths {', '.join(f'{d:.0%}' for d in settings['depths'])}, "
        f"seed {settings['seed']}."
    )
    out.append("")
    out += markdown_table(
        ["probe", *labels],
        [
            [task.label]
            + [
                _pct(e["probes"][task.key]["correct"], e["probes"][task.key]["total"])
                for e in entries
            ]
            for task in probe_tasks
        ],
    )
    for task in probe_tasks:
        out += ["", f"### {task.label}: accuracy by prompt length", ""]
        rows = []
        for n in settings["lengths"]:
            row = [str(n)]
            for e in entries:
                cell = e["probes"][task.key]["by_length"][str(n)]
                row.append(f"{cell['correct']}/{cell['total']}")
            rows.append(row)
        out += markdown_table(["tokens", *labels], rows)
    return out


def perplexity_section(entries: list[dict[str, Any]], task: EvalTask) -> list[str]:
    """The perplexity-by-position section of ``results.md`` (a text task's ``section``)."""
    first = entries[0][task.key]
    out = ["", "## Perplexity by position", ""]
    out.append(
        f"Mean NLL (nats) of targets by position, {first['sequences']} sequences of "
        f"{first['seq_len']} tokens; last row: all targets (perplexity in brackets)."
    )
    rows = []
    for i, bucket in enumerate(first["buckets"]):
        rows.append(
            [_span(bucket["start"], bucket["end"])]
            + [format_number(e[task.key]["buckets"][i]["mean_nll"]) for e in entries]
        )
    rows.append(
        ["all"]
        + [
            f"{format_number(e[task.key]['mean_nll'])} ({format_number(e[task.key]['perplexity'], 2)})"
            for e in entries
        ]
    )
    out.append("")
    out += markdown_table(["positions", *[e["label"] for e in entries]], rows)
    return out


def longppl_section(entries: list[dict[str, Any]], task: EvalTask) -> list[str]:
    """The LongPPL section of ``results.md`` (a text task's ``section``)."""
    info = entries[0][task.key]
    evaluator = info["key_tokens_from"]
    out = ["", f"## {task.label}", ""]
    out.append(
        f"Key tokens: short-context NLL minus long-context NLL > {info['alpha']:g} nats "
        f"and long NLL < {info['beta']:g}; short context: {info['window']}-token windows, "
        f"stride {info['stride']}; key tokens judged by "
        f"{'each model itself' if evaluator == 'self' else md_escape(evaluator)}."
    )
    out.append("")
    out += markdown_table(
        ["model", task.label, "key tokens", "tokens", "perplexity"],
        [
            [
                e["label"],
                format_number(e[task.key]["longppl"], 2),
                str(e[task.key]["key_tokens"]),
                str(e[task.key]["tokens"]),
                format_number(e[task.key]["perplexity"], 2),
            ]
            for e in entries
        ],
    )
    return out


def plot_nll_figure(entries: list[dict[str, Any]], path: Path, task: EvalTask) -> None:
    """The NLL-against-position figure of every model (a text task's ``figure``)."""
    from tokenweight.evaluation.plots import plot_nll_by_position

    curves = [
        (
            e["label"],
            e[task.key]["curve"]["positions"],
            [math.nan if y is None else y for y in e[task.key]["curve"]["mean_nll"]],
        )
        for e in entries
    ]
    native = [e.get("max_position_embeddings") for e in entries]
    plot_nll_by_position(curves, path, native_context=native)


def results_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of ``results`` (models side by side as columns)."""
    entries = results["models"]
    settings = results["settings"]
    out = ["# tokenweight evaluation", ""]
    out += _models_section(entries)
    probe_tasks = tasks_of(settings["tasks"], PROBE)
    if probe_tasks:
        out += _probes_section(entries, settings, probe_tasks)
    for task in tasks_of(settings["tasks"], TEXT):
        out += load(task.section or columns_section)(entries, task)
    files = [f for f in results.get("files", []) if f.endswith(".png")]
    if files:
        out += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in files]
    return "\n".join(out) + "\n"


def write_outputs(results: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Write ``results.json``, the PNG figures and ``results.md`` (each atomically) into
    ``out_dir``; returns the file names written. ``results.json`` goes first: it is the
    record that lets a rerun replace a folder an interrupted write left behind."""
    from tokenweight.evaluation.plots import HeatmapPanel, plot_probe_heatmap
    from tokenweight.infra.files import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = results["settings"]
    entries = results["models"]
    files: list[str] = []
    plots: list[Callable[[], Any]] = []
    for task in tasks_of(settings["tasks"], PROBE):
        panels = []
        for e in entries:
            cells = {(c["length"], c["depth"]): c for c in e["probes"][task.key]["cells"]}
            panels.append(
                HeatmapPanel(
                    label=e["label"],
                    lengths=settings["lengths"],
                    depths=settings["depths"],
                    correct=[
                        [cells[(n, d)]["correct"] for n in settings["lengths"]]
                        for d in settings["depths"]
                    ],
                    total=[
                        [cells[(n, d)]["total"] for n in settings["lengths"]]
                        for d in settings["depths"]
                    ],
                )
            )
        name = str(task.figure_name)
        plots.append(partial(plot_probe_heatmap, task.label, panels, out / name))
        files.append(name)
    for task in tasks_of(settings["tasks"], TEXT):
        if task.figure is not None:
            name, plot = task.figure
            plots.append(partial(load(plot), entries, out / name, task))
            files.append(name)
    files = ["results.json", *files, "results.md"]
    results["files"] = files
    atomic_write_json(out / "results.json", results)
    for plot in plots:
        plot()
    atomic_write_text(out / "results.md", results_markdown(results))
    return files
