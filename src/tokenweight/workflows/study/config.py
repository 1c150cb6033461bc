"""A study's settings: :class:`StudyConfig` (defaults, then a YAML file, then ``key=value``
overrides, validated before any work), one :class:`RunSpec` per run, and the training
config of one run or of the tiny start model's pretraining (:func:`train_config`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenweight.core.scorer_kinds import SCORERS, ScorerKind, scorer_kind, uniform_kind
from tokenweight.infra.config_files import load_raw_config
from tokenweight.infra.config_sections import coerce_sections, expand_config, section
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import (
    at_least_two,
    build_dataclass,
    checked,
    non_negative,
    one_of,
    positive,
    seed_range,
)
from tokenweight.training.config import Config, TrainConfig

__all__ = [
    "TRAIN_DEFAULTS",
    "RunSpec",
    "StudyConfig",
    "data_fingerprint",
    "load_study_config",
    "sequence_length",
    "train_config",
]


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


# the study's own defaults for the training config's ``train`` section: short trainings
# at a constant learning rate, one checkpoint kept, no progress bars
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": 8,
    "micro_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-4,
    "warmup_steps": 0,
    "scheduler": "constant_with_warmup",
    "save_total_limit": 1,
    "logging_steps": 1,
    "training_arguments": {"disable_tqdm": True},
}


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
    # every run's training settings: the training config's ``train`` section with the
    # study's defaults; ``max_steps=50`` is short for ``train.max_steps=50``
    train: TrainConfig = section(
        TrainConfig,
        defaults=TRAIN_DEFAULTS,
        shorthand=(
            "max_steps",
            "micro_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "warmup_steps",
            "bf16",
        ),
        fixed={
            "output_dir": "set by the study: each run goes to work_dir/runs/<run>/seed<seed>",
            "seed": "set by the study: give the runs' seeds in seeds",
            "save_steps": "set by the study: one checkpoint, after train.max_steps",
            "use_cpu": "set by the study from device",
        },
    )
    dtype: str = "fp32"
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

    def __post_init__(self) -> None:
        coerce_sections(self)

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
        # the training config's own checks, on each run's config before any step runs
        for spec in self.run_specs:
            train_config(self, spec, self.seeds[0], Path("model"), Path("data"), Path("out"), "cpu")

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
            require_short_window(self.window, sequence_length(self), "window")

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
            fingerprints = {data_fingerprint(p) for p in (self.data, self.eval_data)}
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
    """Defaults, then a YAML file, then ``key=value`` overrides; validated. The training
    settings may be written flat (``max_steps: 8``, ``max_steps=8``) or in the ``train``
    section (``train: {max_steps: 8}``, ``train.max_steps=8``)."""
    data: dict[str, Any] = load_raw_config(path) if path is not None else {}
    config: StudyConfig = build_dataclass(StudyConfig, expand_config(StudyConfig, data, overrides))
    config.validate()
    return config


def data_fingerprint(folder: str) -> str | None:
    """The content fingerprint in a data folder's manifest (``None``: none to read)."""
    from tokenweight.data.manifest import FINGERPRINT

    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get(FINGERPRINT) if isinstance(manifest, dict) else None


def sequence_length(config: StudyConfig) -> int:
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


def train_config(
    config: StudyConfig,
    spec: RunSpec,
    seed: int,
    model_dir: Path,
    data: Path,
    out: Path,
    device: str,
    *,
    pretrain: bool = False,
) -> Config:
    """The training config of ``spec`` with ``seed`` (``config.train`` with the study's
    folders, seed and device), or with ``pretrain`` that of the tiny start model's
    pretraining, whose schedule comes from ``config.pretrain`` (only ``train.bf16`` and
    the model settings are shared). Validated like any training config."""
    from tokenweight.training.config import config_from_sections

    kind = spec.kind
    values: dict[str, Any] = {
        "model.source": str(model_dir),
        "model.dtype": config.dtype,
        "model.attn_implementation": config.attn_implementation,
        "model.gradient_checkpointing": config.gradient_checkpointing,
        "model.rope_theta": None if pretrain else config.rope_theta,
        "model.max_position_embeddings": None if pretrain else config.max_position_embeddings,
        "data.path": str(data),
        "scorer.kind": kind.name,
        "scorer.window": config.window if kind.window else None,
        "scorer.stride": config.stride if kind.window else None,
        "scorer.model": spec.reference_model if kind.uses_model else None,
        "train.output_dir": str(out),
        "train.seed": seed,
        "train.save_steps": config.train.max_steps,
        "train.use_cpu": device == "cpu",
    }
    if not pretrain:
        return config_from_sections(config, spec.scheme, values)
    p = config.pretrain
    steps, every = p["steps"], max(1, p["steps"] // 20)
    schedule = {
        "learning_rate": p["learning_rate"],
        "scheduler": "cosine",
        "warmup_steps": every,
        "max_steps": steps,
        "micro_batch_size": p["batch"],
        "gradient_accumulation_steps": 1,
        "save_steps": steps,
        "save_total_limit": 1,
        "logging_steps": every,
        "bf16": config.train.bf16,
        "training_arguments": {"disable_tqdm": True},
    }
    # not ``config.train``: the pretraining's schedule is its own
    values.update({f"train.{key}": value for key, value in schedule.items()})
    return config_from_sections(None, spec.scheme, values)
