"""What a study will cost on this machine (``tokenweight study --dry-run``).

:func:`calibrate` times a few small pieces of the real work with the study's own settings
and code paths, in a temporary folder: two or three optimizer steps of a training run
(per scorer that costs differently, and of the tiny start model's pretraining), scoring
and evaluating a few sequences, loading a model, writing synthetic data, and one probe
prompt per length. :func:`estimate` (pure) scales those timings by the study's counts.
Everything the study runs is counted: pretraining, data, scoring, every training with its
start-up, every evaluation with its model loading, and the probes.

Approximations (stated in the estimate's lines): the frozen scorer's training step costs
what a uniform step costs (its scores are read from disk); the reference scorer's adds one
forward pass of the reference model over each sequence, timed as an evaluation forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenweight.core.scorer_kinds import DEFAULT_SCORER, ScorerKind, uniform_kind
from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.study.config import (
    RunSpec,
    StudyConfig,
    sequence_length,
    train_config,
)
from tokenweight.workflows.study.evaluate import answer_probes, start_windows, study_probes
from tokenweight.workflows.study.plan import check_study
from tokenweight.workflows.study.pretrain import build_tiny_llama, pretrain_synth

__all__ = [
    "CALIBRATION_STEPS",
    "Part",
    "Timings",
    "calibrate",
    "dry_run",
    "estimate",
    "estimate_text",
]

CALIBRATION_STEPS = 3  # optimizer steps timed per training kind (the first one warms up)
_SEQUENCES = 4  # sequences scored and evaluated while calibrating


@dataclass(frozen=True)
class Timings:
    """Seconds measured on this machine.

    ``train_start``: the fixed cost of one training run (loading, Trainer set-up, the
    final save); ``train_step``: one optimizer step of the study's size by scorer kind
    (``"none"``, ``"self"``); ``pretrain_*`` the same for the tiny start model's
    pretraining; ``synth_per_token`` / ``synth_start``: writing synthetic data, per token
    and per folder; ``score_start`` /
    ``score_per_sequence``: scoring (short and long NLL) with the start model;
    ``eval_load``: loading one model for evaluation; ``eval_per_sequence``: one
    held-out sequence's long-context NLL; ``start_per_sequence``: the start model's extra
    passes per held-out sequence (short windows, local windows, extended RoPE);
    ``probe_per_prompt``: one probe prompt's greedy answer; ``comparison``: one paired
    difference with its bootstrap; ``report_start``: writing a report's figure;
    ``seconds``: the calibration.
    """

    train_start: float
    train_step: dict[str, float]
    eval_load: float
    eval_per_sequence: float
    start_per_sequence: float
    pretrain_start: float = 0.0
    pretrain_step: float = 0.0
    synth_per_token: float = 0.0
    synth_start: float = 0.0
    score_start: float = 0.0
    score_per_sequence: float = 0.0
    probe_per_prompt: float = 0.0
    comparison: float = 0.0
    report_start: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """One line of the estimate: what, how it was counted, and seconds."""

    name: str
    how: str
    seconds: float


def _step_kind(kind: ScorerKind) -> str:
    """The measured step a run's training step costs: a kind scoring short windows every
    step is timed as itself; any other costs a uniform step (plus what :func:`estimate`
    adds for a full-sequence forward)."""
    return kind.name if kind.window else uniform_kind().name


def estimate(config: StudyConfig, t: Timings, *, train_sequences: int, seq_len: int) -> list[Part]:
    """The study's cost by part, from the measured ``t`` (pure).

    ``train_sequences``: rows of the training data (what scoring reads); ``seq_len``:
    tokens per sequence.
    """
    specs = config.run_specs
    seeds = len(config.seeds)
    parts: list[Part] = []
    if config.model == "tiny":
        p = config.pretrain
        steps, tokens = int(p["steps"]), int(p["steps"]) * int(p["batch"]) * config.window
        parts.append(
            Part(
                "pretraining the start model",
                f"{steps} steps x {t.pretrain_step:.3f} s + {t.pretrain_start:.1f} s start-up "
                f"+ {tokens:,} synthetic tokens",
                t.pretrain_start
                + steps * t.pretrain_step
                + t.synth_start
                + tokens * t.synth_per_token,
            )
        )
    if config.data is None:
        tokens = (int(config.synth.get("sequences", 0)) + config.eval_sequences) * seq_len
        parts.append(
            Part(
                "synthetic data",
                f"{tokens:,} tokens in 2 folders",
                2 * t.synth_start + tokens * t.synth_per_token,
            )
        )
    if any(r.kind.stored_scores or r.data == "selected" for r in specs):
        parts.append(
            Part(
                "scoring the training data",
                f"{train_sequences} sequences x {t.score_per_sequence:.3f} s + "
                f"{t.score_start:.1f} s start-up",
                t.score_start + train_sequences * t.score_per_sequence,
            )
        )
    per_seq = config.micro_batch_size * config.gradient_accumulation_steps
    total, kinds = 0.0, []
    for r in specs:
        step = t.train_step[_step_kind(r.kind)]
        if r.kind.forward_per_step and not r.kind.window:  # a full-sequence forward
            step += per_seq * t.eval_per_sequence
        total += seeds * (t.train_start + config.max_steps * step)
        kinds.append(f"{r.scorer} {step:.3f} s")
    parts.append(
        Part(
            "training",
            f"{len(specs)} runs x {seeds} seeds x ({config.max_steps} steps + "
            f"{t.train_start:.1f} s start-up); per step: " + ", ".join(dict.fromkeys(kinds)),
            total,
        )
    )
    models = len(specs) * seeds + 1
    n = config.eval_sequences
    extended = " (and extended RoPE, one more load)" if _extended(config) else ""
    parts.append(
        Part(
            "evaluation",
            f"{models} models x ({t.eval_load:.1f} s load + {n} sequences x "
            f"{t.eval_per_sequence:.3f} s) + the start model's windows{extended} {n} x "
            f"{t.start_per_sequence:.3f} s",
            models * (t.eval_load + n * t.eval_per_sequence)
            + _extended(config) * t.eval_load
            + n * t.start_per_sequence,
        )
    )
    if config.probes:
        prompts = (
            len(config.probes)
            * len(config.probe_lengths or [seq_len])
            * len(config.probe_depths)
            * config.probe_trials
        )
        parts.append(
            Part(
                "probes",
                f"{models} models x {prompts} prompts x {t.probe_per_prompt:.3f} s",
                models * prompts * t.probe_per_prompt,
            )
        )
    comparisons = (len(specs) - 1) * (_metric_count(config, seq_len) + len(config.probes))
    parts.append(
        Part(
            "report",
            f"{comparisons} paired comparisons x {t.comparison:.3f} s + {t.report_start:.1f} s "
            "for the figure",
            comparisons * t.comparison + t.report_start,
        )
    )
    return parts


def _metric_count(config: StudyConfig, seq_len: int) -> int:
    """How many NLL metrics the report compares (``tokenweight.workflows.study._metric_masks``):
    all, inside, beyond, the window-wide buckets, key tokens, and on synthetic data one
    per distance class plus the targets that copy nothing."""
    w = config.window
    buckets = seq_len // w if seq_len > 2 * w else 0
    synthetic = 0
    if config.data is None:
        from tokenweight.workflows.synth import SynthConfig

        synthetic = len(SynthConfig(**config.synth).distance_classes()) + 1
    return 4 + buckets + synthetic


def _extended(config: StudyConfig) -> bool:
    """Whether the evaluation also loads the start model with the extended RoPE."""
    return bool(config.rope_theta or config.max_position_embeddings)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(parts: list[Part], t: Timings) -> str:
    """The estimate's lines for ``--dry-run``."""
    width = max(len(p.name) for p in parts)
    lines = [
        f"  cost, calibrated on this machine ({t.device}; {CALIBRATION_STEPS} steps of each "
        f"kind timed in {t.seconds:.0f} s):"
    ]
    lines += [f"    {p.name:<{width}}  {_duration(p.seconds):>8}  ({p.how})" for p in parts]
    lines.append(f"    {'total':<{width}}  {_duration(sum(p.seconds for p in parts)):>8}")
    lines += [f"    note: {n}" for n in t.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------ measuring
class _StepClock:
    """A ``TrainerCallback`` recording when each optimizer step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.begin = 0.0

    def make(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.ends.append(time.perf_counter())

        return Clock()


def _timed_training(tc: Any) -> tuple[float, float]:
    """``(start-up seconds, seconds per step)`` of ``train(tc)``: the step time from the
    steps after the first (the first warms up and counts as start-up)."""
    from tokenweight.training.run import train

    clock = _StepClock()
    callback = clock.make()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the per-step log lines
        train(tc, callbacks=[callback])
    total = time.perf_counter() - t0
    ends = [clock.begin, *clock.ends]
    steps = [b - a for a, b in itertools.pairwise(ends)]
    step = statistics.median(steps[1:]) if len(steps) > 1 else steps[0]
    return max(0.0, total - step * len(steps)), step


@contextlib.contextmanager
def _timer() -> Iterator[Callable[[], float]]:
    t0 = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - t0
    end.append(time.perf_counter())


def _small_data(
    config: StudyConfig, start: Path, folder: Path, rows: int
) -> tuple[Path, float, float]:
    """A prepared folder of ``rows`` training sequences like the study's, and the
    seconds it took to write per token and per folder (synthetic data; 0 for given data)."""
    import json

    if config.data is None:
        from tokenweight.workflows.synth import SynthConfig, write_synth

        def seconds(n: int, out: Path) -> float:
            t0 = time.perf_counter()
            write_synth(SynthConfig(**{**config.synth, "sequences": n}), start, out)
            return time.perf_counter() - t0

        # the slope between two sizes, and what is left of the small one per folder
        # (loading the tokenizer, saving)
        small, large = seconds(rows, folder), seconds(4 * rows, folder.with_name("synth-4x"))
        tokens = rows * SynthConfig(**config.synth).seq_len
        per_token = max(0.0, large - small) / (3 * tokens)
        return folder, per_token, max(0.0, small - tokens * per_token)
    from tokenweight.data import read_manifest
    from tokenweight.data.prepare import load_prepared
    from tokenweight.data.store import SCORED_FORMAT, load_scored_dataset
    from tokenweight.infra.files import atomic_write_json

    src = Path(config.data)
    head = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    if head.get("format") == SCORED_FORMAT:
        manifest = read_manifest(src, "scored")["prepared"]
        ds = load_scored_dataset(src, verify=False)
    else:
        manifest, ds = read_manifest(src), load_prepared(src)
    keep = [c for c in ("input_ids", "attention_mask", "doc_id", "row") if c in ds.column_names]
    ds = ds.select(range(min(rows, len(ds)))).select_columns(keep)
    ds.save_to_disk(str(folder))
    counts = {**manifest.get("counts", {}), "sequences": len(ds)}
    atomic_write_json(folder / "manifest.json", {**manifest, "counts": counts})
    return folder, 0.0, 0.0


def calibrate(
    config: StudyConfig, model_dir: Path, device: str, log: Callable[[str], None] = print
) -> Timings:
    """Time small pieces of the study on this machine (module docstring); nothing is
    written outside a temporary folder."""
    t_all = time.perf_counter()
    specs = config.run_specs
    k = CALIBRATION_STEPS
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tokenweight-calibrate-") as tmp_name:
        tmp = Path(tmp_name)
        start = model_dir
        extra: dict[str, float] = {}
        if config.model == "tiny":
            from tokenweight.workflows.synth import write_synth

            start = tmp / "init"
            build_tiny_llama(config, start)
            small = dataclasses.replace(config, pretrain={**config.pretrain, "steps": k})
            write_synth(pretrain_synth(small), start, tmp / "pre-data")
            tc = train_config(
                small, RunSpec(), 0, start, tmp / "pre-data", tmp / "pre-out", device, pretrain=True
            )
            log(f"    {k} pretraining steps ...")
            extra["pretrain_start"], extra["pretrain_step"] = _timed_training(tc)
        rows = max(_SEQUENCES, k * config.micro_batch_size * config.gradient_accumulation_steps)
        data, synth_per_token, synth_start = _small_data(config, start, tmp / "data", rows)
        brief = dataclasses.replace(config, max_steps=k, warmup_steps=0)
        steps: dict[str, float] = {}
        starts = []
        for kind in dict.fromkeys(_step_kind(r.kind) for r in specs):
            spec = RunSpec("dense:0.75", kind) if kind != uniform_kind().name else RunSpec()
            tc = train_config(brief, spec, 0, start, data, tmp / f"train-{kind}", device)
            what = f"scorer {kind}"
            log(f"    {k} training steps ({what}) ...")
            s, steps[kind] = _timed_training(tc)
            starts.append(s)
        steps.setdefault(DEFAULT_SCORER, steps[uniform_kind().name])
        for used in dict.fromkeys(r.kind for r in specs):
            if used.stored_scores:
                notes.append(
                    f"a {used.name}-scorer step is counted as a uniform one (scores read from disk)"
                )
            elif used.forward_per_step and not used.window:
                notes.append(f"a {used.name}-scorer step adds one evaluation forward per sequence")
        log("    scoring, evaluation and report ...")
        score = _time_scoring(config, start, data, tmp / "scored", device, specs)
        ev = _time_evaluation(config, start, data, device)
        report = _time_report(config, tmp / "figure.png")
    return Timings(
        train_start=min(starts),  # the first run also paid for imports, once per process
        train_step=steps,
        synth_per_token=synth_per_token,
        synth_start=synth_start,
        seconds=time.perf_counter() - t_all,
        device=device,
        notes=notes,
        **extra,
        **score,
        **ev,
        **report,
    )


def _time_report(config: StudyConfig, png: Path) -> dict[str, float]:
    """One paired comparison at the study's size (seeds x held-out sequences, bootstrap
    samples) on random sums, and one figure written."""
    import numpy as np
    from matplotlib.figure import Figure

    from tokenweight.evaluation.paired import paired_difference
    from tokenweight.evaluation.plots import save_png

    rng = np.random.default_rng(0)
    shape = (len(config.seeds), config.eval_sequences)
    with _timer() as one:
        paired_difference(
            rng.random(shape),
            rng.random(shape),
            np.ones(shape[1]),
            samples=config.bootstrap_samples,
            confidence=config.confidence,
        )
    with _timer() as figure:
        fig = Figure(figsize=(6, 4), layout="constrained")
        fig.subplots().errorbar([0, 1], [0, 1], yerr=[0.1, 0.1], fmt="o")
        save_png(fig, png)
    return {"comparison": one(), "report_start": figure()}


def _time_scoring(
    config: StudyConfig, start: Path, data: Path, out: Path, device: str, specs: list[Any]
) -> dict[str, float]:
    if not any(r.kind.stored_scores or r.data == "selected" for r in specs):
        return {}
    from tokenweight.data import score_dataset
    from tokenweight.infra.models import load_model

    with _timer() as load:
        load_model(str(start), dtype=config.dtype, device=device)
    t0 = time.perf_counter()
    r = score_dataset(
        data,
        out,
        scorer=str(start),
        window=config.window,
        stride=config.stride,
        batch_size=1,
        device=device,
        with_long=True,
        progress=False,
    )
    total = time.perf_counter() - t0
    return {
        "score_start": load(),
        "score_per_sequence": max(0.0, total - load()) / max(1, r.rows),
    }


def _time_evaluation(config: StudyConfig, start: Path, data: Path, device: str) -> dict[str, float]:
    """Model loading, long NLL per sequence, the start model's extra passes, probes."""
    from tokenweight.evaluation.perplexity import long_context_nll, short_context_nll_of
    from tokenweight.evaluation.sequences import load_eval_sequences
    from tokenweight.infra.models import load_model, load_tokenizer

    tok = load_tokenizer(start)
    held = data if config.data is None else Path(str(config.eval_data))
    seqs = load_eval_sequences(str(held), tok, seq_len=0, max_sequences=_SEQUENCES)
    n = int(seqs.input_ids.shape[0])
    attn = config.attn_implementation
    with _timer() as load:
        model = load_model(start, dtype=config.dtype, device=device, attn_implementation=attn)
    long_context_nll(model, seqs)  # warm-up (first calls allocate and pick kernels)
    with _timer() as fwd:
        long = long_context_nll(model, seqs)
    with _timer() as extra:
        for window, stride in start_windows(config).values():
            short_context_nll_of(model, seqs, long, window=window, stride=stride)
    # with RoPE settings the start model is also evaluated extended (loaded again)
    start_extra = extra() + (fwd() if _extended(config) else 0.0)
    probe = 0.0
    if config.probes:
        one = dataclasses.replace(config, probe_depths=config.probe_depths[:1], probe_trials=1)
        probes = study_probes(one, tok, int(seqs.input_ids.shape[1]))
        with _timer() as gen:
            answer_probes(model, tok, probes)
        probe = gen() / max(1, len(probes))
    return {
        "eval_load": load(),
        "eval_per_sequence": fwd() / n,
        "start_per_sequence": start_extra / n,
        "probe_per_prompt": probe,
    }


# ------------------------------------------------------------------ --dry-run
def dry_run(config: StudyConfig, log: Callable[[str], None] = print) -> None:
    """``tokenweight study --dry-run``: check every setting and print the plan
    (:func:`tokenweight.workflows.study.check_study`), then calibrate on this machine and print the
    cost of each part of the study."""
    checked = check_study(config, log)
    if checked.device is None:
        log(
            f"  cost: not estimated on this machine ({checked.device_error}); run --dry-run "
            "where the study runs"
        )
        return
    log("  calibrating the cost estimate on this machine ...")
    timings = calibrate(config, checked.model_dir, checked.device, log)
    parts = estimate(
        config, timings, train_sequences=_train_sequences(config), seq_len=sequence_length(config)
    )
    log(estimate_text(parts, timings))


def _train_sequences(config: StudyConfig) -> int:
    """Rows of the training data (synthetic: ``synth.sequences``)."""
    if config.data is None:
        return int(config.synth.get("sequences", 0))
    from tokenweight.data import read_manifest

    try:
        manifest = read_manifest(config.data)
    except TokenWeightError:
        manifest = read_manifest(config.data, "scored")["prepared"]
    return int(manifest["counts"]["sequences"])
