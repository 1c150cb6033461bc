"""``report.md`` of a pipeline run: what ran, the weights, training, evaluation.

Everything here is read back from the files the steps wrote (manifests, training logs,
``eval/results.json``, ``inspect/inspect.json``), so a report can be rebuilt from a
finished ``work_dir`` at any time. Numbers are stated as measured, whichever way they fall.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from tokenweight.core.scorer_kinds import scorer_kind
from tokenweight.data.prepare import MANIFEST
from tokenweight.evaluation.plots import save_png
from tokenweight.evaluation.report import column_value
from tokenweight.evaluation.tasks import PROBE, TEXT, EvalTask, tasks_of
from tokenweight.infra.config_sections import flat_settings
from tokenweight.infra.files import atomic_write_text
from tokenweight.infra.markdown import format_number, markdown_table, md_escape
from tokenweight.training.run import LOG_NAME, SUMMARY_NAME

__all__ = ["config_table", "write_report"]


def config_table(config: Any) -> list[tuple[str, str]]:
    """(setting, value) pairs of a pipeline config (any config dataclass; the fields of an
    embedded section as ``section.field``), values as JSON text."""
    return [(key, json.dumps(value)) for key, value in flat_settings(config)]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / LOG_NAME
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if "nll" in r or "weighted_loss" in r]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _training_section(runs: dict[str, Path], work: Path) -> list[str]:
    out = ["## Training", ""]
    rows = []
    logs = {}
    for scheme, run_dir in runs.items():
        log = _read_log(run_dir)
        logs[scheme] = log
        summary = _read_json(run_dir / SUMMARY_NAME) or {}

        def col(key: str, log: list[dict[str, Any]] = log) -> list[float]:
            return [r[key] for r in log if isinstance(r.get(key), (int, float))]

        nll = col("nll")
        rows.append(
            [
                scheme,  # escaped by markdown_table
                str(summary.get("scorer", "-")),
                str(summary.get("global_step", len(log))),
                format_number(nll[0] if nll else None),
                format_number(nll[-1] if nll else None),
                format_number(_mean(col("weight_mean"))),
                format_number(_mean(col("weight_std"))),
                format_number(max(col("weight_max"), default=None)),
                format_number(_mean(col("weight_nonzero"))),
                format_number(_mean(col("abs_score"))),
                format_number(_mean(col("step_time")), 1),
                format_number(_mean(col("scoring_share")), 2),
            ]
        )
    out += markdown_table(
        [
            "scheme",
            "scorer",
            "steps",
            "NLL first step",
            "NLL last step",
            "weight mean",
            "weight std",
            "weight max",
            "non-zero weights",
            "mean abs(l - s)",
            "step time (s)",
            "scoring share",
        ],
        rows,
    )
    out += [
        "",
        "NLL is the unweighted mean NLL (nats) of the training batch at that step; the "
        "weights are per-target loss weights averaged over the run. Both runs start from the "
        "same checkpoint and see the same sequences in the same order.",
        "",
    ]
    if any(logs.values()):
        _plot_training(logs, work / "training_curves.png")
        out += ["![training curves](training_curves.png)", ""]
    return out


def _plot_training(logs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for scheme, log in logs.items():
        steps = [r.get("step", i + 1) for i, r in enumerate(log)]
        axes[0].plot(steps, [r.get("nll") for r in log], marker="o", label=scheme)
        axes[1].plot(steps, [r.get("weighted_loss") for r in log], marker="o", label=scheme)
    axes[0].set_title("unweighted NLL of the training batch")
    axes[1].set_title("weighted loss (what is optimized)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("nats")
        ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def _inspect_section(work: Path) -> list[str]:
    data = _read_json(work / "inspect" / "inspect.json")
    if not data:
        return []
    s = data.get("summary", {})
    meta = data.get("meta", {})
    out = [
        "## Which tokens get weight",
        "",
        f"The start model read {s.get('targets', 0) + 1} tokens of the held-out "
        f"{md_escape(meta.get('document', '?'))} once with the whole passage as context and once in "
        f"{data['window']}-token windows (stride {data['stride']}). Mean NLL: "
        f"{format_number(s.get('mean_long_nll'))} nats with long context, "
        f"{format_number(s.get('mean_short_nll'))} with short; "
        f"{format_number(100 * s.get('share_gain_over_1_nat', 0), 1)}% of targets gain more than "
        f"1 nat from the long context and {format_number(100 * s.get('share_gain_over_2_nats', 0), 1)}% "
        f"more than 2 nats. Under {md_escape(data['scheme'])} the weights have mean "
        f"{format_number(s.get('weight_mean'))}, std {format_number(s.get('weight_std'))}, max "
        f"{format_number(s.get('weight_max'))}.",
        "",
        "Token heat map (open in a browser; hover for numbers): "
        "[inspect/inspect.html](inspect/inspect.html)",
        "",
        "![weights and gains](inspect/weights.png)",
        "",
        "Targets that gain most from long context:",
        "",
    ]
    top = work / "inspect" / "top_tokens.md"
    if top.is_file():
        out += top.read_text(encoding="utf-8").splitlines()
    return [*out, ""]


def _eval_section(work: Path, labels: list[str]) -> list[str]:
    results = _read_json(work / "eval" / "results.json")
    if not results:
        return []
    entries = {e["label"]: e for e in results["models"]}
    tasks = results["settings"].get("tasks", [])
    text_tasks, probe_tasks = tasks_of(tasks, TEXT), tasks_of(tasks, PROBE)
    out = ["## Evaluation on held-out text", ""]
    rows = []
    for label in labels:
        e = entries.get(label, {})
        cells = [column_value(e.get(t.key) or {}, c) for t in text_tasks for c in t.columns]
        probes = e.get("probes") or {}
        for task in probe_tasks:
            p = probes.get(task.key) or {}
            cells.append(f"{p['correct']}/{p['total']}" if p.get("total") else "-")
        rows.append([label, *cells])
    header = [c.label for t in text_tasks for c in t.columns]
    header += [f"{t.label} (correct)" for t in probe_tasks]
    out += markdown_table(["model", *header], rows)
    out += ["", md_escape(_findings(entries, labels, text_tasks)), ""]
    for task in [*text_tasks, *probe_tasks]:
        name = task.figure_name
        if name and (work / "eval" / name).is_file():
            out += [f"![{name}](eval/{name})", ""]
    out += [
        "Full tables: [eval/results.md](eval/results.md); raw numbers and every probe "
        "answer: [eval/results.json](eval/results.json).",
        "",
    ]
    return out


def _findings(entries: dict[str, Any], labels: list[str], text_tasks: list[EvalTask]) -> str:
    """A neutral sentence per text task's headline number (its first column) comparing
    each trained model with the start and with the first (baseline) run."""
    if len(labels) < 2:
        return ""
    baseline = labels[1]
    parts = []
    for task in text_tasks:
        if not task.columns:
            continue
        column = task.columns[0]
        name = column.label[:1].upper() + column.label[1:]
        values: dict[str, Any] = {
            lab: (entries.get(lab, {}).get(task.key) or {}).get(column.key) for lab in labels
        }
        if any(v is None for v in values.values()):
            continue
        digits = 2 if column.digits is None else column.digits
        text = f"{name}: " + ", ".join(
            f"{lab} {format_number(values[lab], digits)}" for lab in labels
        )
        diffs = []
        for lab in labels[2:]:
            change = 100 * (values[lab] / values[baseline] - 1)
            diffs.append(
                f"{lab} is {abs(change):.1f}% {'lower' if change < 0 else 'higher'} than {baseline}"
            )
        parts.append(text + (f" ({'; '.join(diffs)})" if diffs else "") + ".")
    return (
        "As measured (lower is better): "
        + " ".join(parts)
        + " With this few training steps and evaluation sequences, differences of a few "
        "percent are within run-to-run noise; scale the settings up for conclusions."
    )


def write_report(
    *,
    config: Any,
    work: Path,
    runs: dict[str, Path],
    records: list[Any],
    total_seconds: float,
    device: str,
    model_dir: Path,
    corpus: Path,
) -> Path:
    """Write ``work/report.md`` (plus ``training_curves.png``); returns its path."""
    lines = _summary_section(config, work, device, model_dir, corpus)
    lines += _steps_section(records, total_seconds)
    lines += _inspect_section(work)
    lines += _training_section(runs, work)
    lines += _eval_section(work, ["start", *runs])
    lines += ["## Settings", ""]
    lines += markdown_table(["setting", "value"], [[k, v] for k, v in config_table(config)])
    lines.append("")
    path = work / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _summary_section(
    config: Any, work: Path, device: str, model_dir: Path, corpus: Path
) -> list[str]:
    """The title, the software and machine, and what ran, in a paragraph."""
    import torch

    from tokenweight import __version__

    prepared = _read_json(work / "prepared" / MANIFEST) or {}
    counts = prepared.get("counts", {})
    return [
        "# tokenweight report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by tokenweight {__version__} "
        f"(torch {torch.__version__}, {platform.machine()}, device {md_escape(device)}, "
        f"{torch.get_num_threads()} CPU threads).",
        "",
        f"**What ran.** The model {md_escape(config.model.source)} ({md_escape(model_dir)}) was "
        "trained on "
        f"{counts.get('sequences', '?')} sequences of {config.seq_len} tokens cut from "
        f"{counts.get('documents', '?')} documents of {md_escape(corpus)}, once per scheme "
        f"({md_escape(', '.join(config.schemes))}), each for {config.train.max_steps} "
        f"optimizer steps from the same start. Short-context NLL came from "
        f"{config.window}-token windows of "
        + scorer_kind(config.scorer.kind).describe
        + f". RoPE theta {'unchanged' if config.model.rope_theta is None else config.model.rope_theta}. "
        f"The start model and every trained model were then evaluated on the held-out "
        f"documents {md_escape(', '.join(config.held_out))}.",
        "",
    ]


def _steps_section(records: list[Any], total_seconds: float) -> list[str]:
    """A table of the steps: time, whether cached, what each produced."""
    lines = ["## Steps", ""]
    lines += markdown_table(
        ["step", "time (s)", "cached", "detail"],
        [[r.name, f"{r.seconds:.0f}", "yes" if r.cached else "no", r.detail] for r in records],
    )
    lines += [
        "",
        f"Total wall time of this invocation: {total_seconds:.0f} s (cached steps show the "
        "time they took when they ran).",
        "",
    ]
    return lines
