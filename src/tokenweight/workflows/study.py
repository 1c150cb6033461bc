"""A controlled comparison of weighting schemes (``tokenweight study CONFIG``).

From one start model and one dataset, every listed run (a scheme with its scorer, on all
or on selected data) is trained for the same steps with each seed (the same data order
per seed), and every trained model is evaluated on the same held-out sequences. The report
gives *paired* differences against the baseline run (same targets, same seeds) with
bootstrap intervals (:mod:`tokenweight.evaluation.paired`), for the NLL by position bucket (inside and
beyond the original context ``window``), for LongPPL's key tokens (chosen once, by the
start model as a fixed evaluator) and, on synthetic data, for the targets that depend on
context at each planted distance.

Steps reuse the pipeline's bookkeeping: each step's folder holds a fingerprint of its
settings, so a rerun reuses finished steps and continues an interrupted training run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.core.scorer_kinds import SCORERS, ScorerKind, scorer_kind, uniform_kind
from tokenweight.infra.config_files import load_raw_config
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from tokenweight.infra.schema import (
    apply_overrides,
    at_least_two,
    build_dataclass,
    checked,
    non_negative,
    one_of,
    positive,
    seed_range,
)
from tokenweight.workflows.steps import Steps, folder_fingerprint, run_dir_name

__all__ = [
    "CheckedStudy",
    "RunSpec",
    "StudyConfig",
    "check_study",
    "load_study_config",
    "plan_text",
    "run_study",
]

STUDY_FORMAT = "tokenweight.study"
EVAL_MARKER = "target_mask.npy"  # the first file the evaluation step writes


@dataclass
class RunSpec:
    """One arm of the study: ``scheme`` with ``scorer``, a kind of
    :data:`tokenweight.core.scorer_kinds.SCORERS` (``precomputed``: the start model's
    short-context NLL, scored once ahead; ``self``; ``reference``: ``reference_model``
    over the full sequence; ``frozen`` is the old name of ``precomputed``), trained on
    ``data`` ``all`` or ``selected``."""

    scheme: str = "uniform"
    scorer: str = field(default_factory=lambda: uniform_kind().name)
    data: str = "all"
    reference_model: str | None = None
    name: str | None = None

    @property
    def kind(self) -> ScorerKind:
        """The scorer kind of this run (from :data:`tokenweight.core.scorer_kinds.SCORERS`)."""
        return scorer_kind(self.scorer, "scorer")

    def label(self) -> str:
        if self.name:
            return self.name
        text = self.scheme if self.kind.uniform_only else f"{self.scheme} ({self.scorer})"
        return text + (" on selected" if self.data == "selected" else "")


@dataclass
class StudyConfig:
    """Every setting of a study; defaults are the CPU-sized study on synthetic data."""

    work_dir: str = "runs/study"
    cache_dir: str | None = None
    # the start model: a model folder / hub name / 'smollm2', or 'tiny': a small Llama built
    # here and trained on short-range synthetic data first (``tiny``, ``pretrain``)
    model: str = "tiny"
    tiny: dict[str, Any] = field(
        default_factory=lambda: {"layers": 2, "hidden": 128, "heads": 2, "words": 256}
    )
    # the tiny model's pretraining: ``steps`` x ``batch`` synthetic sequences of ``window``
    # tokens, like ``synth`` but with ``copies`` per class at ``distances`` inside the window
    pretrain: dict[str, Any] = field(
        default_factory=lambda: {
            "steps": 2000,
            "batch": 16,
            "distances": [[4, 120]],
            "copies": 6,
            "learning_rate": 3e-3,
            "seed": 0,
        }
    )
    # data: a prepared (or scored) folder, or None for synthetic data (``synth``)
    data: str | None = None
    eval_data: str | None = None
    synth: dict[str, Any] = field(
        default_factory=lambda: {
            "seq_len": 512,
            "sequences": 48,
            "distances": [48, 200, 400],
            "span": 2,
            "copies": 3,
            "words": 256,
            "content": "facts",
            "keys": 12,
            "values": 8,
            "filler": "document",
            "doc_words": 32,
            "seed": 0,
        }
    )
    eval_sequences: int = field(default=8, metadata=checked(positive))
    # the original context: scorer window, LongPPL window, inside/beyond buckets
    window: int = field(default=128, metadata=checked(at_least_two))
    stride: int | None = None
    rope_theta: float | None = None
    max_position_embeddings: int | None = None
    runs: list[dict[str, Any]] = field(
        default_factory=lambda: [{"scheme": "uniform"}, {"scheme": "dense:0.75", "scorer": "self"}]
    )
    baseline: int = 0  # index into runs
    select_top: float = 0.5  # for runs on ``selected`` data: top fraction by key share
    select_by: str = field(default="key_share", metadata=one_of("key_share", "mean_gain"))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    max_steps: int = field(default=8, metadata=checked(positive))
    micro_batch_size: int = field(default=1, metadata=checked(positive))
    gradient_accumulation_steps: int = field(default=1, metadata=checked(positive))
    learning_rate: float = field(default=1e-4, metadata=checked(positive))
    warmup_steps: int = 0
    dtype: str = "fp32"
    bf16: bool = False
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False
    device: str = field(default="auto", metadata=one_of("auto", "cpu", "cuda"))
    # retrieval probes (``tokenweight eval``'s tasks) answered by every model; paired
    # differences of accuracy over seeds and prompts. Off by default: they need a model
    # that reads natural-language instructions
    probes: list[str] = field(default_factory=list)
    probe_lengths: list[int] = field(default_factory=list)  # default: the sequence length
    probe_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    probe_trials: int = field(default=4, metadata=checked(positive))
    bootstrap_samples: int = field(default=2000, metadata=checked(positive))
    confidence: float = 0.95
    # the context check warns when the start model's largest gain from its whole context
    # inside the original window (nats, over windows of window / 8) is below this
    min_context_gain: float = field(default=0.05, metadata=checked(non_negative))

    def validate(self) -> None:
        from tokenweight.core.weighting import Scheme

        if not self.runs:
            raise TokenWeightError("runs: list at least the baseline, e.g. [{scheme: uniform}]")
        if not self.seeds:
            raise TokenWeightError("seeds: give at least one seed")
        if not 0 <= self.baseline < len(self.runs):
            raise TokenWeightError(f"baseline: {self.baseline} is not an index into runs")
        labels = [r.label() for r in self.run_specs]
        if len(set(labels)) != len(labels):
            raise TokenWeightError(f"runs: two runs share a label ({labels}); give them names")
        for i, r in enumerate(self.run_specs):
            try:
                scheme = Scheme.parse(r.scheme)
            except TokenWeightError as exc:
                raise TokenWeightError(f"runs[{i}].scheme: {exc}") from None
            kind = r.kind
            if kind.uniform_only != scheme.is_uniform:
                if scheme.is_uniform:
                    need = repr(uniform_kind().name)
                else:
                    need = ", ".join(k.name for k in SCORERS.values() if not k.uniform_only)
                raise TokenWeightError(f"runs[{i}]: scheme {r.scheme} needs scorer {need}")
            if kind.model == "required" and not r.reference_model:
                raise TokenWeightError(f"runs[{i}]: the {kind.name} scorer needs reference_model")
            if r.data not in ("all", "selected"):
                raise TokenWeightError(f"runs[{i}].data: all or selected, got {r.data!r}")
        if self.data is not None and self.eval_data is None:
            raise TokenWeightError("eval_data: give held-out prepared data beside data")
        if (
            self.model == "tiny"
            and self.data is None
            and int(self.tiny.get("words", 0)) != int(self.synth.get("words", 256))
        ):
            raise TokenWeightError(
                f"tiny.words ({self.tiny.get('words')}) must equal synth.words "
                f"({self.synth.get('words', 256)}): the start model's vocabulary is the "
                "synthetic data's words"
            )
        from tokenweight.evaluation.tasks import PROBE, task_names

        probes = task_names(PROBE)
        unknown = [t for t in self.probes if t not in probes]
        if unknown:
            raise TokenWeightError(f"probes: unknown {unknown}; choose from {', '.join(probes)}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.probe_lengths):
            raise TokenWeightError(
                f"probe_lengths: positive token counts, got {self.probe_lengths}"
            )
        if any(not 0 <= float(d) <= 1 for d in self.probe_depths) or not self.probe_depths:
            raise TokenWeightError(f"probe_depths: fractions in [0, 1], got {self.probe_depths}")
        if not 0 < self.confidence < 1:
            raise TokenWeightError(f"confidence: must be in (0, 1), got {self.confidence}")
        self._validate_numbers()
        self._validate_folders()

    def _validate_numbers(self) -> None:
        """Seeds, the window and its stride, the selection fraction: before any work."""
        from tokenweight.core.scoring import require_short_window

        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed_range(seed):
                raise TokenWeightError(
                    f"seeds: each seed must be an integer in [0, 4294967295], got {seed!r}"
                )
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise TokenWeightError(
                f"seeds: {', '.join(map(str, repeated))} given more than once; a repeated "
                "seed would count one training twice in the paired differences"
            )
        if self.stride is not None and not 1 <= self.stride < self.window:
            raise TokenWeightError(
                f"stride: must be at least 1 and smaller than window ({self.window}), "
                f"got {self.stride}"
            )
        if not 0 < self.select_top <= 1:
            raise TokenWeightError(
                f"select_top: must be a fraction in (0, 1], got {self.select_top}"
            )
        if self.data is None or (Path(self.data) / "manifest.json").is_file():
            # (data not prepared yet: checked when the study starts, after it is)
            require_short_window(self.window, _seq_len(self), "window")

    def _validate_folders(self) -> None:
        """``work_dir`` apart from every input and not a data folder; held-out data that
        differs from the training data."""
        from tokenweight.infra.files import check_output_place

        inputs = [p for p in (self.data, self.eval_data, self.model, self.cache_dir) if p]
        check_output_place(self.work_dir, inputs, "work_dir")
        if (Path(self.work_dir) / "manifest.json").is_file():
            raise TokenWeightError(
                f"work_dir: {self.work_dir} is a data folder (it holds manifest.json); "
                "choose a new folder for the study"
            )
        if self.data is not None and self.eval_data is not None:
            same = Path(self.data).resolve() == Path(self.eval_data).resolve()
            fingerprints = {_data_fingerprint(p) for p in (self.data, self.eval_data)}
            if same or (len(fingerprints) == 1 and None not in fingerprints):
                raise TokenWeightError(
                    f"eval_data: {self.eval_data} holds the same data as data ({self.data}); "
                    "held-out data must be other sequences than the training data"
                )

    @property
    def run_specs(self) -> list[RunSpec]:
        out = []
        for i, r in enumerate(self.runs):
            if not isinstance(r, dict):
                raise TokenWeightError(f"runs[{i}]: a mapping like {{scheme: dense:0.75}}")
            try:
                spec = RunSpec(**r)
            except TypeError as exc:
                raise TokenWeightError(f"runs[{i}]: {exc}") from None
            # the kind's own name (an old spelling such as ``frozen`` warns once, here)
            spec.scorer = scorer_kind(spec.scorer, f"runs[{i}].scorer").name
            out.append(spec)
        return out


def load_study_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> StudyConfig:
    """Defaults, then a YAML file, then ``key=value`` overrides; validated."""
    data: dict[str, Any] = load_raw_config(path) if path is not None else {}
    config = build_dataclass(StudyConfig, apply_overrides(data, overrides))
    config.validate()
    return config


# ------------------------------------------------------------------ planning
def _data_fingerprint(folder: str) -> str | None:
    """The content fingerprint in a data folder's manifest (``None``: none to read)."""
    from tokenweight.data.manifest import FINGERPRINT

    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get(FINGERPRINT) if isinstance(manifest, dict) else None


def _seq_len(config: StudyConfig) -> int:
    if config.data is None:
        return int(config.synth.get("seq_len", 512))
    path = Path(config.data) / "manifest.json"
    if not path.is_file():
        raise TokenWeightError(f"data: {config.data} is not a prepared or scored dataset")
    from tokenweight.infra.files import read_json

    manifest = read_json(path, "prepare (or score) the data again")
    seq_len = manifest.get("seq_len") if isinstance(manifest, dict) else None
    if seq_len is None and isinstance(manifest, dict):
        seq_len = (manifest.get("prepared") or {}).get("seq_len")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TokenWeightError(f"data: {path} is not a tokenweight manifest (no seq_len)")
    return seq_len


def plan_text(config: StudyConfig) -> str:
    """The plan: runs, data, steps and what each step does (the cost estimate of
    ``--dry-run`` follows it, :mod:`tokenweight.workflows.study_cost`)."""
    n = _seq_len(config)
    specs = config.run_specs
    tokens = config.max_steps * config.micro_batch_size * config.gradient_accumulation_steps * n
    lines = [
        f"study in {config.work_dir}: {len(specs)} runs x {len(config.seeds)} seeds "
        f"({', '.join(map(str, config.seeds))}) = {len(specs) * len(config.seeds)} trainings",
        f"  model {config.model}; original context {config.window} tokens; sequences of {n} "
        f"tokens ({n / config.window:g}x)"
        + (f"; RoPE theta {config.rope_theta:g}" if config.rope_theta else ""),
        "  data: "
        + (
            f"{config.data} (held out: {config.eval_data})"
            if config.data
            else f"synthetic {config.synth}"
        ),
        f"  each training: {config.max_steps} steps x {config.micro_batch_size * config.gradient_accumulation_steps} "
        f"sequences = {tokens:,} tokens",
    ]
    if config.model == "tiny":
        p = config.pretrain
        lines.append(
            f"  start model: a tiny Llama {config.tiny}, pretrained {p['steps']} steps x "
            f"{p['batch']} synthetic sequences of {config.window} tokens (copies at "
            f"{p['distances']})"
        )
    for i, r in enumerate(specs):
        tag = " (baseline)" if i == config.baseline else ""
        lines.append(f"  run {i}: {r.label()}{tag}")
    needs_scores = any(r.kind.stored_scores or r.data == "selected" for r in specs)
    if needs_scores:
        lines.append(f"  scoring: the start model, window {config.window}, with long NLL")
    if any(r.data == "selected" for r in specs):
        lines.append(f"  selection: top {config.select_top:.0%} of documents by {config.select_by}")
    models = len(specs) * len(config.seeds) + 1
    lines.append(
        f"  evaluation: {models} models x {config.eval_sequences} held-out sequences; "
        f"start model also at windows of {config.window} (LongPPL key tokens)"
    )
    if config.probes:
        lengths = config.probe_lengths or [n]
        count = len(config.probes) * len(lengths) * len(config.probe_depths)
        lines.append(
            f"  probes: {', '.join(config.probes)} at {lengths} tokens, depths "
            f"{config.probe_depths}, {config.probe_trials} trials = "
            f"{count * config.probe_trials} prompts per model"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the study
def _train_config(
    config: StudyConfig,
    spec: RunSpec,
    seed: int,
    model_dir: Path,
    data: Path,
    out: Path,
    device: str,
    *,
    pretrain: bool = False,
) -> Any:
    from tokenweight.training.config import Config

    p = config.pretrain

    kind = spec.kind
    return Config.from_dict(
        {
            "model": {
                "source": str(model_dir),
                "dtype": config.dtype,
                "attn_implementation": config.attn_implementation,
                "gradient_checkpointing": config.gradient_checkpointing,
                "rope_theta": None if pretrain else config.rope_theta,
                "max_position_embeddings": None if pretrain else config.max_position_embeddings,
            },
            "data": {"path": str(data)},
            "scheme": spec.scheme,
            "scorer": {
                "kind": kind.name,
                "window": config.window if kind.window else None,
                "stride": config.stride if kind.window else None,
                "model": spec.reference_model if kind.uses_model else None,
            },
            "train": {
                "output_dir": str(out),
                "learning_rate": p["learning_rate"] if pretrain else config.learning_rate,
                "scheduler": "cosine" if pretrain else "constant_with_warmup",
                "warmup_steps": max(1, p["steps"] // 20) if pretrain else config.warmup_steps,
                "max_steps": p["steps"] if pretrain else config.max_steps,
                "micro_batch_size": p["batch"] if pretrain else config.micro_batch_size,
                "gradient_accumulation_steps": 1
                if pretrain
                else config.gradient_accumulation_steps,
                "seed": seed,
                "save_steps": p["steps"] if pretrain else config.max_steps,
                "save_total_limit": 1,
                "logging_steps": max(1, p["steps"] // 20) if pretrain else 1,
                "bf16": config.bf16,
                "use_cpu": device == "cpu",
                "training_arguments": {"disable_tqdm": True},
            },
        }
    )


def _save_array(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


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


@dataclass(frozen=True)
class CheckedStudy:
    """A study whose settings passed every check: the start model's folder, and the
    device (``None`` when this machine lacks it, ``device_error`` saying why)."""

    model_dir: Path
    device: str | None
    device_error: str | None = None


def check_study(config: StudyConfig, log: Callable[[str], None] = print) -> CheckedStudy:
    """Check every setting (the config, the start model, the data folders, the device)
    and print the plan; nothing is written."""
    from tokenweight.infra.models import default_cache_dir, ensure_local_model, resolve_device

    config.validate()
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    work = Path(config.work_dir)
    model_dir = (
        work / "start" / "model"
        if config.model == "tiny"
        else Path(str(ensure_local_model(config.model, cache)))
    )
    _check_data(config)
    log(plan_text(config))
    try:
        return CheckedStudy(model_dir, str(resolve_device(config.device)))
    except TokenWeightError as exc:
        return CheckedStudy(model_dir, None, str(exc))


def run_study(
    config: StudyConfig, log: Callable[[str], None] = print, *, dry_run: bool = False
) -> Path | None:
    """Run (or with ``dry_run`` only check and print the plan of) the study; returns
    ``study.md``. The calibrated cost estimate of ``--dry-run`` is
    :func:`tokenweight.workflows.study_cost.dry_run`.

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
        Steps(total=_step_count(config), log=log, owner="study"),
        log,
    )
    t_start = time.perf_counter()
    if tiny:
        _pretrain_tiny(config, work / "start", model_dir, device, study.steps)
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


def _check_data(config: StudyConfig) -> None:
    """``data`` and ``eval_data``, when given, are prepared (or scored) folders."""
    from tokenweight.data import read_manifest

    for key in ("data", "eval_data"):
        folder = getattr(config, key)
        if folder is None:
            continue
        try:
            read_manifest(folder)
        except TokenWeightError as exc:
            try:
                read_manifest(folder, "scored")
            except TokenWeightError:
                raise TokenWeightError(f"{key}: {exc}") from None


def _step_count(config: StudyConfig) -> int:
    """How many steps :func:`run_study` logs (for the ``[k/total]`` prefix)."""
    specs = config.run_specs
    needs_scores = any(r.kind.stored_scores or r.data == "selected" for r in specs)
    needs_select = any(r.data == "selected" for r in specs)
    tiny = config.model == "tiny"
    # (pretrain) data (score) (select) trainings evaluate report
    return tiny + 1 + needs_scores + needs_select + len(specs) * len(config.seeds) + 2


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

    tc = _train_config(study.config, spec, seed, study.model_dir, data, out, study.device)

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
        "local_window": _local_window(config),
        "probes": [config.probes, config.probe_lengths, config.probe_depths, config.probe_trials],
        "rope": [config.rope_theta, config.max_position_embeddings],
    }

    def do_eval() -> str:
        _evaluate(config, models, eval_data, eval_dir, study.device, study.log)
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


def _build_tiny_llama(config: StudyConfig, init: Path) -> Any:
    """Step: a randomly initialised small Llama (sizes from ``tiny``) and its word
    tokenizer, saved in ``init``; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenweight.workflows.synth import build_word_tokenizer

    t = config.tiny
    build_word_tokenizer(init, int(t["words"]))
    torch.manual_seed(int(config.pretrain.get("seed", 0)))
    h = int(t["hidden"])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=int(t["words"]) + 4,
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=int(t["layers"]),
            num_attention_heads=int(t["heads"]),
            num_key_value_heads=int(t["heads"]),
            max_position_embeddings=config.window,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(init)
    return model


def _pretrain_synth(config: StudyConfig) -> Any:
    """The pretraining corpus: ``synth`` (its words, content and filler, so the word
    roles match the study's data) in sequences of ``window`` tokens, with the
    ``pretrain`` distances, copies and seed."""
    from tokenweight.workflows.synth import SynthConfig

    p = config.pretrain
    return SynthConfig(
        **{
            **config.synth,
            "seq_len": config.window,
            "sequences": int(p["steps"]) * int(p["batch"]),
            "distances": list(p["distances"]),
            "copies": int(p["copies"]),
            "span": int(p.get("span", config.synth.get("span", 8))),
            "seed": int(p.get("seed", 0)) + 2000,
        }
    )


def _pretrain_tiny(
    config: StudyConfig, folder: Path, model_dir: Path, device: str, steps: Steps
) -> None:
    """Build a small Llama over a synthetic word vocabulary and train it on short-range
    synthetic data (sequences of ``window`` tokens, copies at ``pretrain.distances``)."""
    t, p = config.tiny, config.pretrain
    init, data = folder / "init", folder / "data"

    def do_build() -> str:
        from tokenweight.workflows.synth import write_synth

        model = _build_tiny_llama(config, init)
        write_synth(_pretrain_synth(config), init, data, overwrite=True)
        tc = _train_config(
            config, RunSpec(), int(p.get("seed", 0)), init, data, model_dir, device, pretrain=True
        )
        from tokenweight.training.run import train

        result = train(tc)
        return (
            f"{sum(x.numel() for x in model.parameters()) / 1e6:.2f}M parameters, "
            f"{result.global_step} steps on {config.window}-token synthetic sequences, "
            f"final mean loss {result.train_loss:.3f}"
        )

    steps.run(
        "build and pretrain the tiny start model (short-range synthetic data)",
        folder,
        {"tiny": t, "pretrain": p, "window": config.window, "synth": config.synth},
        do_build,
    )


def _evaluate(
    config: StudyConfig,
    models: dict[str, Path],
    eval_data: Path,
    out: Path,
    device: str,
    log: Callable[[str], None],
) -> None:
    """``out/<key>.npy``: ``(S, N - 1)`` long-context NLL of every model; the start model's
    short-context NLL too (``start-short.npy``), for LongPPL's key tokens."""
    import torch

    from tokenweight.evaluation.perplexity import long_context_nll, short_context_nll_of
    from tokenweight.evaluation.sequences import load_eval_sequences
    from tokenweight.infra.models import load_model, load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(models["start"])
    seqs = load_eval_sequences(str(eval_data), tok, seq_len=0, max_sequences=config.eval_sequences)
    _save_array(out / EVAL_MARKER, seqs.target_mask.numpy())
    rope: dict[str, Any] = {
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
    }
    probes = _make_probes(config, tok, int(seqs.input_ids.shape[1]))
    if probes:
        atomic_write_json(out / "probes.json", [p.summary() for p in probes])
    for k, (key, path) in enumerate(models.items()):
        t0 = time.perf_counter()
        # the start model at its own settings; trained checkpoints carry the extended RoPE
        model = load_model(
            path, dtype=config.dtype, device=device, attn_implementation=config.attn_implementation
        )
        long = long_context_nll(model, seqs)
        _save_array(out / f"{key}.npy", long.numpy())
        if probes:
            _save_array(out / f"{key}-probes.npy", _answer_probes(model, tok, probes))
        if key == "start":
            stride = config.stride or max(1, config.window // 4)
            short = short_context_nll_of(model, seqs, long, window=config.window, stride=stride)
            _save_array(out / "start-short.npy", short.numpy())
            local = _local_window(config)  # does it use its context inside the window?
            near = short_context_nll_of(model, seqs, long, window=local, stride=max(1, local // 4))
            _save_array(out / "start-local.npy", near.numpy())
            if any(rope.values()):  # the start model with the extended RoPE, untrained
                ext = load_model(
                    path,
                    dtype=config.dtype,
                    device=device,
                    attn_implementation=config.attn_implementation,
                    **rope,
                )
                _save_array(out / "start-extended.npy", long_context_nll(ext, seqs).numpy())
                del ext
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        log(f"    evaluated {key} ({k + 1}/{len(models)}) in {time.perf_counter() - t0:.0f} s")


def _make_probes(config: StudyConfig, tok: Any, seq_len: int) -> list[Any]:
    """The probe prompts every model answers (none unless ``probes`` lists tasks)."""
    if not config.probes:
        return []
    from tokenweight.evaluation.probes import make_probes

    return make_probes(
        tok,
        config.probes,
        config.probe_lengths or [seq_len],
        config.probe_depths,
        trials=config.probe_trials,
        seed=0,
    )


def _answer_probes(model: Any, tok: Any, probes: list[Any]) -> np.ndarray:
    """``(P,)`` int8: 1 where the model's greedy answer to probe ``p`` is right."""
    from tokenweight.evaluation.generate import greedy_generate

    outputs = greedy_generate(
        model,
        tok,
        [p.input_ids for p in probes],
        max_new_tokens=[p.max_new_tokens for p in probes],
    )
    return np.array([p.score(o) for p, o in zip(probes, outputs)], dtype=np.int8)


def _local_window(config: StudyConfig) -> int:
    """The short context of the inside-the-window check: an eighth of ``window``."""
    return max(2, config.window // 8)


def _metric_masks(
    config: StudyConfig, eval_dir: Path, eval_data: Path
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Named ``(S, N - 1)`` bool masks of the targets each metric pools, and the family
    of each metric (:mod:`tokenweight.workflows.study_verdict`: long-range or other targets)."""
    from tokenweight.evaluation.metrics import is_key_token
    from tokenweight.workflows.study_verdict import LONG_RANGE, OTHER

    valid = _load_array(eval_dir / EVAL_MARKER).astype(bool)
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
    long = _load_array(eval_dir / "start.npy")
    short = _load_array(eval_dir / "start-short.npy")
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


def study_results(config: StudyConfig, eval_dir: Path, eval_data: Path) -> dict[str, Any]:
    """Paired differences of every run against the baseline for every metric."""
    from tokenweight.workflows.study_verdict import PROBES, apply_holm, context_verdict

    specs = config.run_specs
    masks, families = _metric_masks(config, eval_dir, eval_data)
    differences = _differences(config, eval_dir, masks)
    metrics = list(dict.fromkeys([*masks, *(d["metric"] for d in differences)]))
    for d in differences:
        d["family"] = families.get(d["metric"], PROBES)
    check = _context_check(config, eval_dir, masks)
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


def _context_check(
    config: StudyConfig, eval_dir: Path, masks: dict[str, np.ndarray]
) -> dict[str, Any]:
    """How the start model does inside and beyond the original context, with whole
    sequences and with windows of it (mean NLL, nats), and per metric."""
    start = _load_array(eval_dir / "start.npy")
    short = _load_array(eval_dir / "start-short.npy")
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
        local = _load_array(eval_dir / "start-local.npy")
        inside = valid & ~beyond
        rows = {"all targets inside": inside} | {
            f"{k}, inside": m & inside
            for k, m in masks.items()
            if k.startswith("copied at") or k == "not copied"
        }
        check["local_window"] = _local_window(config)
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
        ext = _load_array(eval_dir / "start-extended.npy")
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


def _differences(
    config: StudyConfig, eval_dir: Path, masks: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """One row per metric and non-baseline run: the paired difference against the baseline
    over the seeds and held-out sequences (:func:`_paired_rows`), then the probe rows."""
    nll = {
        (i, s): _load_array(eval_dir / f"{i}-{s}.npy")
        for i in range(len(config.run_specs))
        for s in config.seeds
    }
    table = []
    for metric, m in masks.items():
        sums = {key: np.where(m, a.astype(np.float64), 0.0).sum(axis=1) for key, a in nll.items()}
        table += _paired_rows(config, metric, sums, m.sum(axis=1))
    return table + _probe_differences(config, eval_dir)


def _probe_differences(config: StudyConfig, eval_dir: Path) -> list[dict[str, Any]]:
    """One row per probe task and non-baseline run: the paired difference in accuracy
    (run minus baseline; positive = better) over seeds and prompts."""
    if not (eval_dir / "probes.json").is_file():
        return []
    tasks = [p["task"] for p in json.loads((eval_dir / "probes.json").read_text("utf-8"))]
    correct = {
        (i, s): _load_array(eval_dir / f"{i}-{s}-probes.npy").astype(np.float64)
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


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def write_study_report(results: dict[str, Any], work: Path) -> Path:
    """``study.md``, ``study.json`` and ``study.png`` in ``work``; returns the markdown.
    Run names and metrics are user text: escaped in tables and prose alike."""
    from tokenweight.infra.markdown import md_escape
    from tokenweight.workflows.study_verdict import bottom_line, context_warning

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
    """Markdown: does the start model use its context (:func:`_context_check`)?"""
    from tokenweight.infra.markdown import markdown_table

    extended = "start_extended_by_metric" in c
    lines = [
        "## Does the start model use its context?",
        "",
        f"Start model, held-out targets beyond the original context: NLL "
        f"{_fmt(c['start_nll_beyond'])} with the whole sequence vs {_fmt(c['start_short_nll_beyond'])} "
        f"from windows of the original context (gain {_fmt(c['start_gain_beyond'])} nats); "
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
                        _fmt(v["whole"]),
                        _fmt(v["local"]),
                        _fmt(v["local"] - v["whole"], sign=True),
                    ]
                    for k, v in inside.items()
                ],
            ),
            "",
        ]
    return lines + markdown_table(
        ["targets", "start model NLL"] + (["start, extended RoPE, untrained"] if extended else []),
        [
            [k, _fmt(v)] + ([_fmt(c["start_extended_by_metric"][k])] if extended else [])
            for k, v in c["start_by_metric"].items()
        ],
    )


def _differences_table(differences: list[dict[str, Any]], conf: float) -> list[str]:
    """Markdown table of every paired difference (:func:`_differences`)."""
    from tokenweight.infra.markdown import markdown_table

    rows = [
        [
            d["metric"],
            d["run"],
            f"{d['targets']:,}",
            _fmt(d["baseline"]),
            _fmt(d["diff"], sign=True),
            f"[{_fmt(d['low'], sign=True)}, {_fmt(d['high'], sign=True)}]",
            d["verdict"],
            *([_fmt(d["p_holm"]), d["holds"] or "-"] if "p_holm" in d else []),
        ]
        for d in differences
    ]
    header = ["targets", "run", "count", "baseline NLL", "difference", f"{conf:.0%} interval"]
    holm = ["p (Holm)", "holds after Holm"] if any("p_holm" in d for d in differences) else []
    return markdown_table([*header, "verdict", *holm], rows)


def _in_words(results: dict[str, Any]) -> list[str]:
    """One bullet per run: its first metric and how many metrics it is better or worse on."""
    from tokenweight.infra.markdown import md_escape

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
            f"{_fmt(head['diff'], sign=True)} nats "
            f"[{_fmt(head['low'], sign=True)}, {_fmt(head['high'], sign=True)}], "
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
