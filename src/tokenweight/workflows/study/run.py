"""``tokenweight study``: the steps in order, each cached by a fingerprint of its settings
(:class:`tokenweight.workflows.steps.Steps`): (build and pretrain the tiny start model,)
data, scores, selection, every run with every seed, evaluation, report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.steps import Steps, folder_fingerprint, run_dir_name
from tokenweight.workflows.study.config import RunSpec, StudyConfig, train_config
from tokenweight.workflows.study.evaluate import EVAL_MARKER, evaluate_held_out, local_window
from tokenweight.workflows.study.plan import check_study, step_count
from tokenweight.workflows.study.pretrain import pretrain_tiny
from tokenweight.workflows.study.report import write_study_report
from tokenweight.workflows.study.stats import study_results

__all__ = ["run_study"]


@dataclass
class _Study:
    """What every step of a running study needs: its settings, its folder, the start model,
    the device, the step bookkeeping and the log."""

    config: StudyConfig
    work: Path
    model_dir: Path
    device: str
    steps: Steps
    log: Callable[[str], None]


def run_study(
    config: StudyConfig, log: Callable[[str], None] = print, *, dry_run: bool = False
) -> Path | None:
    """Run (or with ``dry_run`` only check and print the plan of) the study; returns
    ``study.md``. The calibrated cost estimate of ``--dry-run`` is
    :func:`tokenweight.workflows.study.cost.dry_run`.

    The steps: (0. build and pretrain the tiny start model,) 1. data, 2. frozen scores of
    the training data, 3. selection, 4. train every run with every seed, 5. evaluate every
    model on the same held-out sequences, 6. report. 2 and 3 run only when a run needs them.
    """
    checked = check_study(config, log)
    if dry_run:
        return None
    if checked.device is None:
        raise TokenWeightError(str(checked.device_error))
    work, model_dir, device, tiny = (
        Path(config.work_dir),
        checked.model_dir,
        checked.device,
        config.model == "tiny",
    )
    work.mkdir(parents=True, exist_ok=True)
    study = _Study(
        config,
        work,
        model_dir,
        device,
        Steps(total=step_count(config), log=log, owner="study"),
        log,
    )
    t_start = time.perf_counter()
    if tiny:
        pretrain_tiny(config, work / "start", model_dir, device, study.steps)
    train_data, eval_data, data_fp = _study_data(study)
    scored, selected = work / "scored", work / "selected"
    specs = config.run_specs
    if any(r.kind.stored_scores or r.data == "selected" for r in specs):
        _score_training_data(study, train_data, scored, data_fp)
    if any(r.data == "selected" for r in specs):
        _select_training_data(study, scored, train_data, selected)
    runs = _train_runs(study, train_data, scored, selected, data_fp)
    eval_dir = _evaluate_models(study, runs, eval_data, data_fp)
    return _report(study, eval_dir, eval_data, t_start)


def _study_data(study: _Study) -> tuple[Path, Path, str]:
    """Step 1: the training and held-out data (synthetic unless ``data`` is given) and a
    fingerprint of the training data."""
    config, work, steps = study.config, study.work, study.steps
    if config.data is None:
        train_data, eval_data = work / "data" / "train", work / "data" / "heldout"

        def do_synth() -> str:
            from tokenweight.workflows.synth import SynthConfig, write_synth

            sc = SynthConfig(**config.synth)
            write_synth(sc, study.model_dir, train_data, overwrite=True)
            held = dataclasses.replace(sc, sequences=config.eval_sequences, seed=sc.seed + 1000)
            write_synth(held, study.model_dir, eval_data, overwrite=True)
            return f"{sc.sequences} training and {held.sequences} held-out synthetic sequences"

        steps.run(
            "synthetic data",
            work / "data",
            {"synth": config.synth, "model": str(study.model_dir), "n": config.eval_sequences},
            do_synth,
        )
        return train_data, eval_data, folder_fingerprint(work / "data")
    train_data, eval_data = Path(config.data), Path(config.eval_data or "")
    steps.announce(f"data {train_data}, held out {eval_data}")
    return train_data, eval_data, str(train_data)


def _score_training_data(study: _Study, train_data: Path, scored: Path, data_fp: str) -> None:
    """Step 2: short- and long-context NLL of the training data by the frozen start model."""
    from tokenweight.data.manifest import RUN_FILE

    config = study.config

    def do_score() -> str:
        from tokenweight.data import score_dataset

        r = score_dataset(
            train_data,
            scored,
            scorer=str(study.model_dir),
            window=config.window,
            stride=config.stride,
            batch_size=1,
            device=study.device,
            with_long=True,
            progress=False,
        )
        return f"{r.rows} sequences scored"

    study.steps.run(
        "score the training data (start model, short and long)",
        scored,
        {
            "data": data_fp,
            "window": config.window,
            "stride": config.stride,
            "model": str(study.model_dir),
        },
        do_score,
        resumable=True,
        markers=(RUN_FILE,),  # scoring cut off by a kill resumes from its finished shards
    )


def _select_training_data(study: _Study, scored: Path, train_data: Path, selected: Path) -> None:
    """Step 3: the top ``select_top`` of the documents by ``select_by``."""
    config = study.config

    def do_select() -> str:
        from tokenweight.workflows.selection import select_dataset

        r = select_dataset(
            scored,
            train_data,
            selected,
            by=config.select_by,
            level="document",
            top=config.select_top,
            overwrite=True,
        )
        return f"{r.summary['sequences_kept']} of {r.summary['sequences']} sequences kept"

    study.steps.run(
        "select long-range data",
        selected,
        {
            "scored": folder_fingerprint(scored),
            "top": config.select_top,
            "by": config.select_by,
        },
        do_select,
    )


def _train_runs(
    study: _Study, train_data: Path, scored: Path, selected: Path, data_fp: str
) -> dict[tuple[int, int], Path]:
    """Step 4: train every run with every seed; ``(run index, seed)`` -> output folder."""
    runs: dict[tuple[int, int], Path] = {}
    for i, spec in enumerate(study.config.run_specs):
        for seed in study.config.seeds:
            out = study.work / "runs" / f"{i:02d}-{run_dir_name(spec.label())}" / f"seed{seed}"
            runs[(i, seed)] = out
            data = (
                selected
                if spec.data == "selected"
                else (scored if spec.kind.stored_scores else train_data)
            )
            _train_one(study, spec, seed, data, out, data_fp)
    return runs


def _train_one(
    study: _Study, spec: RunSpec, seed: int, data: Path, out: Path, data_fp: str
) -> None:
    """Train one run with one seed into ``out`` (continuing an interrupted training)."""
    from tokenweight.training.run import TRAIN_MARKERS

    tc = train_config(study.config, spec, seed, study.model_dir, data, out, study.device)

    def do_train(tc=tc) -> str:
        from tokenweight.training.run import find_last_checkpoint, train

        result = train(tc, resume=find_last_checkpoint(tc.train.output_dir) is not None)
        loss = f"{result.train_loss:.3f}" if result.train_loss is not None else "-"
        return f"{result.global_step} steps, mean training loss {loss}"

    settings = {**tc.to_dict(), "data_fp": data_fp}
    study.steps.run(
        f"train {spec.label()} seed {seed}",
        out,
        settings,
        do_train,
        resumable=True,
        markers=TRAIN_MARKERS,  # a training cut off before its first checkpoint resumes too
    )


def _evaluate_models(
    study: _Study, runs: dict[tuple[int, int], Path], eval_data: Path, data_fp: str
) -> Path:
    """Step 5: per-target NLL of every model on the same held-out sequences; returns the
    folder of the arrays."""
    config = study.config
    eval_dir = study.work / "eval"
    models = {"start": study.model_dir} | {f"{i}-{s}": p for (i, s), p in runs.items()}
    eval_settings = {
        "models": {
            k: (str(p) if k == "start" else folder_fingerprint(p)) for k, p in models.items()
        },
        "data": str(eval_data),
        "data_fp": data_fp,
        "n": config.eval_sequences,
        "window": config.window,
        "local_window": local_window(config),
        "probes": [config.probes, config.probe_lengths, config.probe_depths, config.probe_trials],
        "rope": [config.rope_theta, config.max_position_embeddings],
    }

    def do_eval() -> str:
        evaluate_held_out(config, models, eval_data, eval_dir, study.device, study.log)
        return f"{len(models)} models on {config.eval_sequences} held-out sequences"

    study.steps.run(
        "evaluate every model on the held-out sequences",
        eval_dir,
        eval_settings,
        do_eval,
        markers=(EVAL_MARKER,),  # an evaluation cut off by a kill is redone
    )
    return eval_dir


def _report(study: _Study, eval_dir: Path, eval_data: Path, t_start: float) -> Path:
    """Step 6: the paired differences and the report; returns ``study.md``."""
    steps = study.steps
    head = steps.announce("report ...")
    results = study_results(study.config, eval_dir, eval_data)
    results["seconds"] = time.perf_counter() - t_start
    results["step_seconds"] = sum(r.seconds for r in steps.records)  # cached steps included
    results["steps"] = [dataclasses.asdict(r) for r in steps.records]
    report = write_study_report(results, study.work)
    study.log(f"{head} report: {report}")
    return report
