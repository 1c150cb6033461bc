"""The numbers of ``study.json``: the targets each metric pools (position buckets, LongPPL
key tokens, synthetic copies by distance), the start model's context check, and the
paired difference of every run against the baseline for every metric
(:func:`tokenweight.evaluation.paired.paired_difference`), read from the evaluation
arrays (:mod:`tokenweight.workflows.study.evaluate`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.study.config import StudyConfig
from tokenweight.workflows.study.evaluate import EVAL_MARKER, load_array, local_window

__all__ = [
    "STUDY_FORMAT",
    "context_check",
    "metric_differences",
    "metric_masks",
    "probe_differences",
    "study_results",
]


STUDY_FORMAT = "tokenweight.study"


def study_results(config: StudyConfig, eval_dir: Path, eval_data: Path) -> dict[str, Any]:
    """Paired differences of every run against the baseline for every metric."""
    from tokenweight.workflows.study.verdict import PROBES, apply_holm, context_verdict

    specs = config.run_specs
    masks, families = metric_masks(config, eval_dir, eval_data)
    differences = metric_differences(config, eval_dir, masks)
    metrics = list(dict.fromkeys([*masks, *(d["metric"] for d in differences)]))
    for d in differences:
        d["family"] = families.get(d["metric"], PROBES)
    check = context_check(config, eval_dir, masks)
    check["verdict"] = context_verdict(check, config.min_context_gain)
    return {
        "format": STUDY_FORMAT,
        "config": dataclasses.asdict(config),
        "baseline": specs[config.baseline].label(),
        "runs": [r.label() for r in specs],
        "seeds": list(config.seeds),
        "held_out_sequences": int(masks["all targets"].shape[0]),
        "context_check": check,
        "metrics": metrics,
        "families": {m: families.get(m, PROBES) for m in metrics},
        "correction": apply_holm(differences, 1 - config.confidence),
        "differences": differences,
    }


def metric_masks(
    config: StudyConfig, eval_dir: Path, eval_data: Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Named ``(S, N - 1)`` bool masks of the targets each metric pools, and the family
    of each metric (:mod:`tokenweight.workflows.study.verdict`: long-range or other targets)."""
    from tokenweight.evaluation.metrics import is_key_token
    from tokenweight.workflows.study.verdict import LONG_RANGE, OTHER

    valid = load_array(eval_dir / EVAL_MARKER).astype(bool)
    s, n1 = valid.shape
    t = np.arange(1, n1 + 1)[None, :]
    w = config.window
    masks = {
        "all targets": valid,
        f"inside [0, {w})": valid & (t < w),
        f"beyond [{w}, {n1 + 1})": valid & (t >= w),
    }
    families = dict.fromkeys(masks, OTHER) | {f"beyond [{w}, {n1 + 1})": LONG_RANGE}
    for b in range(0, n1 + 1, w):
        if b + w <= n1 + 1 and n1 + 1 > 2 * w:
            masks[f"bucket [{b}, {b + w})"] = valid & (t >= b) & (t < b + w)
            families[f"bucket [{b}, {b + w})"] = LONG_RANGE if b >= w else OTHER
    long = load_array(eval_dir / "start.npy")
    short = load_array(eval_dir / "start-short.npy")
    masks["LongPPL key tokens"] = valid & is_key_token(long, short)
    families["LongPPL key tokens"] = LONG_RANGE
    try:
        from tokenweight.workflows.synth import (
            SynthConfig,
            class_label,
            dependency_map,
            read_dependencies,
        )

        record = read_dependencies(eval_data)
        dep = dependency_map(record["copies"], s, n1 + 1)[:s]
        for lo, hi in SynthConfig(**record["config"]).distance_classes():
            name = f"copied at distance {class_label(lo, hi)}"
            masks[name] = valid & (dep >= lo) & (dep <= hi)
            families[name] = LONG_RANGE if lo >= w else OTHER
        masks["not copied"] = valid & (dep == 0)
        families["not copied"] = OTHER
    except TokenWeightError:
        pass
    return masks, families


def context_check(
    config: StudyConfig, eval_dir: Path, masks: dict[str, np.ndarray]
) -> dict[str, Any]:
    """How the start model does inside and beyond the original context, with whole
    sequences and with windows of it (mean NLL, nats), and per metric."""
    start = load_array(eval_dir / "start.npy")
    short = load_array(eval_dir / "start-short.npy")
    valid = masks["all targets"]
    beyond = valid & (np.arange(1, valid.shape[1] + 1)[None, :] >= config.window)
    check: dict[str, Any] = {
        "start_nll_inside": float(start[valid & ~beyond].mean()),
        "start_nll_beyond": float(start[beyond].mean()) if beyond.any() else None,
        "start_short_nll_beyond": float(short[beyond].mean()) if beyond.any() else None,
        "start_gain_beyond": float((short - start)[beyond].mean()) if beyond.any() else None,
        "key_share": float(masks["LongPPL key tokens"].sum() / max(valid.sum(), 1)),
        "start_by_metric": {
            k: float(start[m].mean()) if m.any() else None for k, m in masks.items()
        },
    }
    if (eval_dir / "start-local.npy").is_file():
        # inside the window the start model sees everything it was trained to see; compare
        # it with only the last ``window / 8`` tokens, on the targets inside the window
        local = load_array(eval_dir / "start-local.npy")
        inside = valid & ~beyond
        rows = {"all targets inside": inside} | {
            f"{k}, inside": m & inside
            for k, m in masks.items()
            if k.startswith("copied at") or k == "not copied"
        }
        check["local_window"] = local_window(config)
        check["inside_check"] = {
            k: {
                "targets": int(m.sum()),
                "whole": float(start[m].mean()),
                "local": float(local[m].mean()),
            }
            for k, m in rows.items()
            if m.any()
        }
    if (eval_dir / "start-extended.npy").is_file():
        ext = load_array(eval_dir / "start-extended.npy")
        check["start_extended_by_metric"] = {
            k: float(ext[m].mean()) if m.any() else None for k, m in masks.items()
        }
    return check


def _paired_rows(
    config: StudyConfig,
    metric: str,
    sums: dict[tuple[int, int], np.ndarray],
    counts: np.ndarray,
    lower_is_better: bool = True,
) -> list[dict[str, Any]]:
    """One row per non-baseline run: the paired difference against the baseline
    (:func:`tokenweight.evaluation.paired.paired_difference`) of ``sums[(run index, seed)]``, the
    ``(units,)`` per-unit sums of the metric, over ``counts`` targets per unit."""
    from tokenweight.evaluation.paired import paired_difference

    base = np.stack([sums[(config.baseline, s)] for s in config.seeds])
    rows = []
    for i, spec in enumerate(config.run_specs):
        if i == config.baseline:
            continue
        run = np.stack([sums[(i, s)] for s in config.seeds])
        d = paired_difference(
            run,
            base,
            counts,
            samples=config.bootstrap_samples,
            confidence=config.confidence,
            seed=0,
        )
        row = d.to_dict()
        row["run_nll"] = row.pop("run")
        row["verdict"] = d.verdict(lower_is_better=lower_is_better)
        rows.append({"metric": metric, "run": spec.label(), **row})
    return rows


def metric_differences(
    config: StudyConfig, eval_dir: Path, masks: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """One row per metric and non-baseline run: the paired difference against the baseline
    over the seeds and held-out sequences (:func:`_paired_rows`), then the probe rows."""
    nll = {
        (i, s): load_array(eval_dir / f"{i}-{s}.npy")
        for i in range(len(config.run_specs))
        for s in config.seeds
    }
    table = []
    for metric, m in masks.items():
        sums = {key: np.where(m, a.astype(np.float64), 0.0).sum(axis=1) for key, a in nll.items()}
        table += _paired_rows(config, metric, sums, m.sum(axis=1))
    return table + probe_differences(config, eval_dir)


def probe_differences(config: StudyConfig, eval_dir: Path) -> list[dict[str, Any]]:
    """One row per probe task and non-baseline run: the paired difference in accuracy
    (run minus baseline; positive = better) over seeds and prompts."""
    if not (eval_dir / "probes.json").is_file():
        return []
    tasks = [p["task"] for p in json.loads((eval_dir / "probes.json").read_text("utf-8"))]
    correct = {
        (i, s): load_array(eval_dir / f"{i}-{s}-probes.npy").astype(np.float64)
        for i in range(len(config.run_specs))
        for s in config.seeds
    }
    table = []
    from tokenweight.evaluation.tasks import EVAL_TASKS

    for task in dict.fromkeys(tasks):
        m = np.array([t == task for t in tasks])
        sums = {key: a[m] for key, a in correct.items()}
        label = EVAL_TASKS[task].label if task in EVAL_TASKS else task
        metric = f"probe {label} (accuracy)"
        table += _paired_rows(config, metric, sums, np.ones(int(m.sum())), lower_is_better=False)
    return table
