"""The probes of one model: its greedy answers to every probe prompt, exact-match scored
(``results.json``'s ``probes``); the prompts are made once per tokenizer and shared by the
models that use it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tokenweight.evaluation.config import EvalConfig, ModelSpec
from tokenweight.evaluation.loading import tokenizer_key
from tokenweight.evaluation.probes import Probe, make_probes
from tokenweight.evaluation.text_tasks import progress_bar

__all__ = ["make_probes_for", "probe_result", "probes_for", "run_probes"]


def probe_result(probes: Sequence[Probe], outputs: Sequence[str], cfg: EvalConfig) -> dict:
    """``results.json``'s ``probes`` of one model: per probe task, its exact-match score
    (``outputs[i]`` is the answer to ``probes[i]``) overall, per length and per
    ``(length, depth)`` cell, and every prompt's summary with its answer."""
    by_task: dict[str, Any] = {}
    for task in cfg.probe_tasks:
        cells = {(n, d): [0, 0] for n in cfg.lengths for d in cfg.depths}
        samples = []
        for probe, output in zip(probes, outputs):
            if probe.task != task:
                continue
            ok = probe.score(output)
            cell = cells[(probe.length, probe.depth)]
            cell[0] += int(ok)
            cell[1] += 1
            samples.append({**probe.summary(), "output": output, "correct": ok})
        by_length = {}
        for n in cfg.lengths:
            c = sum(cells[(n, d)][0] for d in cfg.depths)
            t = sum(cells[(n, d)][1] for d in cfg.depths)
            by_length[str(n)] = {"correct": c, "total": t, "accuracy": c / t if t else None}
        correct = sum(c for c, _ in cells.values())
        total = sum(t for _, t in cells.values())
        by_task[task] = {
            "correct": correct,
            "total": total,
            "accuracy": correct / total if total else None,
            "by_length": by_length,
            "cells": [
                {"length": n, "depth": d, "correct": c, "total": t}
                for (n, d), (c, t) in cells.items()
            ],
            "samples": samples,
        }
    return by_task


def probes_for(tokenizer: Any, cfg: EvalConfig, cache: dict[tuple, list[Probe]]) -> list[Probe]:
    """The probe prompts in this tokenizer (made once per tokenizer, shared by models)."""
    key = tokenizer_key(tokenizer)
    if key not in cache:
        cache[key] = make_probes_for(tokenizer, cfg.probe_tasks, cfg)
    return cache[key]


def make_probes_for(tokenizer: Any, tasks: Sequence[str], cfg: EvalConfig) -> list[Probe]:
    """The prompts of the probe ``tasks`` in this tokenizer, on the grid and with the probe
    settings of ``cfg`` (:func:`~tokenweight.evaluation.probes.make_probes`)."""
    return make_probes(
        tokenizer,
        tasks,
        cfg.lengths,
        cfg.depths,
        trials=cfg.trials,
        seed=cfg.seed,
        **cfg.probe_settings,
    )


def run_probes(
    entry: dict[str, Any],
    spec: ModelSpec,
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    probe_cache: dict[tuple, list[Probe]],
    progress: bool,
) -> None:
    """Step: greedy answers to every probe prompt, scored, into ``entry``."""
    from tokenweight.evaluation.generate import greedy_generate

    probes = probes_for(tokenizer, cfg, probe_cache)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    with progress_bar(len(probes), f"{spec.label}: probes", progress, "prompt") as bar:
        outputs = greedy_generate(
            model,
            tokenizer,
            [p.input_ids for p in probes],
            max_new_tokens=[p.max_new_tokens for p in probes],
            batch_size=cfg.batch_size,
            on_done=bar.update,
        )
    took = time.perf_counter() - start
    entry["probes"] = probe_result(probes, outputs, cfg)
    entry["timing"]["probes_s"] = took
    entry["timing"]["probe_prompts_per_s"] = len(probes) / max(took, 1e-9)
    prompt_tokens = sum(len(p.input_ids) for p in probes)
    entry["timing"]["probe_tokens_per_s"] = prompt_tokens / max(took, 1e-9)
