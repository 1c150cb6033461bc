"""Evaluate one or more models side by side; write results.json, results.md and PNGs.

The tasks are the table :data:`~tokenweight.evaluation.tasks.EVAL_TASKS`:

- text tasks, on evaluation sequences (``data``): the runner computes each model's
  long-context NLL once and hands it to every text task's code
  (:mod:`tokenweight.evaluation.text_tasks`: perplexity by position, LongPPL). LongPPL's
  key tokens are judged by an *evaluator*: by default each model itself (its long NLL
  against its own short-window NLL), or with ``evaluator`` one fixed model for all (its
  long and short NLL), so that every model is measured on the same key tokens, as in Fang
  et al. (``docs/method.md#evaluation``);
- probes: greedy answers to offline retrieval prompts
  (:mod:`tokenweight.evaluation.probes`) at every ``length x depth x trial``, exact-match
  scored.

Models are loaded one at a time and released before the next is loaded.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from tokenweight.evaluation.probes import Probe, make_probes
from tokenweight.evaluation.tasks import (
    EVAL_TASKS,
    PROBE,
    TEXT,
    default_task_names,
    load,
    task_names,
    task_settings,
    tasks_of,
)
from tokenweight.evaluation.text_tasks import (
    KeyTokens,
    TextTaskInputs,
    evaluator_key_tokens,
    progress_bar,
)
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.models import rope_theta

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_TASKS",  # noqa: F822 (module __getattr__: read from the task table)
    "EvalConfig",
    "ModelSpec",
    "evaluate_models",
    "run_evaluation",
]


def __getattr__(name: str) -> Any:
    """The task names of the table, read when asked (tasks registered later included):
    ``ALL_TASKS`` (every task) and ``TEXT_TASKS`` (those that need ``data``)."""
    if name == "ALL_TASKS":
        return task_names()
    if name == "TEXT_TASKS":
        return task_names(TEXT)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ModelSpec:
    """A model to evaluate: a ``source`` to load (path, hub name, alias such as
    ``smollm2``) and/or an already loaded ``model`` and ``tokenizer``; ``label`` names it
    in tables and figures."""

    label: str
    source: str | None = None
    model: Any = None
    tokenizer: Any = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``LABEL=SOURCE`` or ``SOURCE`` (label: the folder name or the source)."""
        text = str(text).strip()
        label, sep, source = text.partition("=")
        if not sep or Path(text).exists() or not label or not source:
            label, source = Path(text.rstrip("/")).name or text, text
        return cls(label=label.strip(), source=source.strip())


def _as_spec(item: ModelSpec | str | tuple[str, Any, Any]) -> ModelSpec:
    if isinstance(item, ModelSpec):
        return item
    if isinstance(item, str):
        return ModelSpec.parse(item)
    if isinstance(item, tuple) and len(item) == 3:
        return ModelSpec(label=str(item[0]), model=item[1], tokenizer=item[2])
    raise TokenWeightError(
        f"a model to evaluate must be a ModelSpec, 'LABEL=SOURCE' text or a "
        f"(label, model, tokenizer) tuple, got {type(item).__name__}"
    )


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokenWeightError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True, init=False)
class EvalConfig:
    """Settings of one evaluation, validated at construction (every setting is a CLI option
    of ``tokenweight eval``; :func:`evaluate_models` documents each one).

    The fields below are the settings every evaluation has; the tasks' own settings
    (``bucket_size``, ``longppl_alpha``, ``hops`` ...) come from the task table
    (:func:`~tokenweight.evaluation.tasks.task_settings`): they are keywords of the
    constructor and attributes like the fields, held in ``task_settings``.

    ``tasks=None`` means the table's default tasks: its default probes, plus its default
    text tasks when ``data`` is given. Sequences may be given as lists; they are stored as
    tuples. Keywords only, except ``tasks``.
    """

    tasks: tuple[str, ...] | None = None
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    trials: int = 1
    seed: int = 0
    batch_size: int = 1
    data: tuple[str, ...] = ()
    seq_len: int | None = None
    max_sequences: int | None = 16
    text_field: str = "text"
    glob: str | None = None
    encoding_errors: str = "strict"
    hf_split: str | None = None
    allow_beyond_positions: bool = False
    # (name, value) of every task setting of the table, in table order
    task_settings: tuple[tuple[str, Any], ...] = ()

    def __init__(self, tasks: Any = None, **options: Any) -> None:
        own = {f.name: f for f in fields(self) if f.name != "task_settings"}
        given = dict(options.pop("task_settings", None) or ())
        settings = {s.name: s for s in task_settings()}
        clash = sorted(set(settings) & set(own))
        if clash:
            raise TokenWeightError(
                f"task setting(s) {', '.join(clash)} would hide an evaluation setting; "
                "rename them in the task table"
            )
        unknown = sorted(set(options) - set(own) - set(settings))
        if unknown:
            raise TokenWeightError(
                f"unknown evaluation setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted({*own, *settings}))}"
            )
        options["tasks"] = tasks
        for name, f in own.items():
            object.__setattr__(self, name, options.get(name, f.default))
        values = {n: options.get(n, given.get(n, s.default)) for n, s in settings.items()}
        object.__setattr__(self, "task_settings", tuple(values.items()))
        self._validate()

    def __getattr__(self, name: str) -> Any:
        """A task setting by its name (``cfg.bucket_size``)."""
        if name != "task_settings":
            for key, value in self.__dict__.get("task_settings", ()):
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__!r} has no setting {name!r}")

    def _validate(self) -> None:
        data = (self.data,) if isinstance(self.data, (str, Path)) else self.data
        object.__setattr__(self, "data", tuple(str(p) for p in data))
        object.__setattr__(self, "tasks", self._checked_tasks())
        if self.probe_tasks:
            self._check_probe_grid()
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        for name in ("trials", "batch_size"):
            _positive_int(getattr(self, name), name)
        checks = {s.name: s.check for s in task_settings()}
        for name, value in self.task_settings:
            check = checks.get(name)
            if check is not None:
                check(value, name)
        self._check_text_settings()

    @classmethod
    def option_names(cls) -> list[str]:
        """Every setting's name: the fields, then the task settings in table order (the
        options of ``tokenweight eval``, underscores as dashes)."""
        names = [f.name for f in fields(cls) if f.name != "task_settings"]
        return names + [s.name for s in task_settings()]

    @classmethod
    def from_options(cls, **options: Any) -> EvalConfig:
        """An ``EvalConfig`` from keyword options named as its settings (an unknown name
        is an error, not silently ignored)."""
        return cls(**options)

    def _checked_tasks(self) -> tuple[str, ...]:
        if self.tasks is None:
            defaults = default_task_names()
            return tuple(t for t in defaults if self.data or EVAL_TASKS[t].kind != TEXT)
        tasks = tuple(dict.fromkeys(str(t).strip().lower() for t in self.tasks))
        unknown = [t for t in tasks if t not in EVAL_TASKS]
        if unknown or not tasks:
            raise TokenWeightError(
                f"unknown evaluation task(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(task_names())}"
            )
        return tasks

    def _check_probe_grid(self) -> None:
        if not self.lengths or not self.depths:
            raise TokenWeightError("probes need at least one length and one depth")
        for n in self.lengths:
            _positive_int(n, "every probe length")
        for d in self.depths:
            if isinstance(d, bool) or not 0.0 <= float(d) <= 1.0:
                raise TokenWeightError(f"every depth must be in [0, 1], got {d!r}")

    def _check_text_settings(self) -> None:
        if self.seq_len is not None:
            if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int):
                raise TokenWeightError(f"--seq-len must be an integer, got {self.seq_len!r}")
            if self.seq_len < 2:
                raise TokenWeightError(f"--seq-len must be >= 2 tokens, got {self.seq_len}")
        if self.text_tasks and not self.data:
            raise TokenWeightError(
                f"task(s) {', '.join(self.text_tasks)} need evaluation text: pass --data "
                "(a prepared dataset folder or text files)"
            )

    @property
    def probe_tasks(self) -> tuple[str, ...]:
        """The probes among ``tasks``, in the order given."""
        probes = task_names(PROBE)
        return tuple(t for t in self.tasks or () if t in probes)

    @property
    def text_tasks(self) -> tuple[str, ...]:
        """The text tasks among ``tasks``, in the order given."""
        text = task_names(TEXT)
        return tuple(t for t in self.tasks or () if t in text)

    @property
    def probe_settings(self) -> dict[str, Any]:
        """The values of the probe tasks' settings (what :func:`make_probes` takes)."""
        names = {s.name for s in task_settings(PROBE)}
        return {n: v for n, v in self.task_settings if n in names}

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (``results.json``'s ``settings``)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "task_settings"}
        return {**own, **dict(self.task_settings)}


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _tokenizer_key(tokenizer: Any) -> tuple:
    from tokenweight.infra.models import IDENTITY_FIELDS, tokenizer_identity

    ident = tokenizer_identity(tokenizer)
    return tuple(ident.get(k) for k in IDENTITY_FIELDS)


def _text_length(cfg: EvalConfig) -> int | None:
    """Tokens per evaluation sequence of the text tasks: a prepared dataset's
    ``seq_len`` (``None`` when it has no manifest), else ``--seq-len`` or the longest
    probe length."""
    from tokenweight.evaluation.sequences import is_prepared_dataset

    if len(cfg.data) == 1 and is_prepared_dataset(cfg.data[0]):
        if not (Path(cfg.data[0]) / "manifest.json").is_file():
            return None
        from tokenweight.data.manifest import read_manifest

        return int(read_manifest(cfg.data[0])["seq_len"])
    return cfg.seq_len or max(cfg.lengths)


def _positions(spec: ModelSpec, load_kwargs: dict[str, Any]) -> int | None:
    """``max_position_embeddings`` the model will have, from its config alone."""
    from tokenweight.infra.models import load_config, max_positions

    if spec.model is not None:
        return max_positions(spec.model)
    if spec.source is None:
        return None
    config = load_config(
        spec.source,
        trust_remote_code=bool(load_kwargs.get("trust_remote_code", False)),
        rope_theta=load_kwargs.get("rope_theta"),
        max_position_embeddings=load_kwargs.get("max_position_embeddings"),
    )
    return max_positions(config)


def _check_before_computing(
    specs: Sequence[ModelSpec],
    evaluator: ModelSpec | None,
    cfg: EvalConfig,
    load_kwargs: dict[str, Any],
    probe_cache: dict[tuple, list[Probe]],
) -> None:
    """Step: before any model call, the device, every length against every model's
    positions and every probe task's prompts (into ``probe_cache``), all problems of a
    kind reported together."""
    from tokenweight.evaluation.preflight import asked_lengths, build_all_probes, check_positions
    from tokenweight.infra.models import resolve_device

    if load_kwargs.get("device") is not None:
        resolve_device(load_kwargs["device"])  # refuses a device this machine lacks
    text = _text_length(cfg) if cfg.text_tasks else None
    asked = asked_lengths(cfg.lengths if cfg.probe_tasks else (), text)
    models = [(s.label, _positions(s, load_kwargs), asked) for s in specs]
    if evaluator is not None:
        only_text = asked_lengths((), text)
        models.append((evaluator.label, _positions(evaluator, load_kwargs), only_text))
    check_positions(models, cfg.allow_beyond_positions)
    if not cfg.probe_tasks:
        return
    for spec in specs:
        tokenizer = spec.tokenizer
        if tokenizer is None:
            from tokenweight.infra.models import load_tokenizer

            if spec.source is None:
                continue  # refused when loading (_Loaded)
            trust = bool(load_kwargs.get("trust_remote_code", False))
            tokenizer = load_tokenizer(spec.source, trust_remote_code=trust)
        key = _tokenizer_key(tokenizer)
        if key not in probe_cache:
            probe_cache[key] = build_all_probes(
                cfg.probe_tasks, functools.partial(_make_probes, tokenizer, cfg=cfg)
            )


class _Loaded:
    """A model and tokenizer for the duration of a ``with`` block (released after, when
    this block loaded them)."""

    def __init__(self, spec: ModelSpec, load_kwargs: dict[str, Any]) -> None:
        self.spec = spec
        self.load_kwargs = load_kwargs
        self.owned = spec.model is None

    def __enter__(self) -> tuple[Any, Any, float]:
        start = time.perf_counter()
        model, tokenizer = self.spec.model, self.spec.tokenizer
        if model is None or tokenizer is None:
            if self.spec.source is None:
                raise TokenWeightError(
                    f"model {self.spec.label!r} has neither a source nor a loaded model and "
                    "tokenizer"
                )
            from tokenweight.infra.models import load_model, load_tokenizer

            if tokenizer is None:
                tokenizer = load_tokenizer(
                    self.spec.source,
                    trust_remote_code=bool(self.load_kwargs.get("trust_remote_code", False)),
                )
            if model is None:
                model = load_model(self.spec.source, **self.load_kwargs)
        self.was_training = bool(getattr(model, "training", False))
        model.eval()
        self.model = model
        return model, tokenizer, time.perf_counter() - start

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()
        if self.owned:
            del self.model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _probe_result(probes: Sequence[Probe], outputs: Sequence[str], cfg: EvalConfig) -> dict:
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


def _load_sequences(cfg: EvalConfig, tokenizer: Any) -> Any:
    """The evaluation text ``cfg.data`` as ``EvalSequences`` of ``cfg.seq_len`` tokens
    (default: the longest probe length)."""
    from tokenweight.evaluation.sequences import load_eval_sequences

    return load_eval_sequences(
        cfg.data,
        tokenizer,
        seq_len=cfg.seq_len or max(cfg.lengths),
        max_sequences=cfg.max_sequences,
        text_field=cfg.text_field,
        glob=cfg.glob,
        encoding_errors=cfg.encoding_errors,
        hf_split=cfg.hf_split,
    )


def _long_nll(
    model: Any, seqs: Any, cfg: EvalConfig, desc: str, progress: bool
) -> tuple[torch.Tensor, float]:
    """Long-context NLL ``[n, T-1]`` (nats) of ``seqs`` and the seconds it took."""
    from tokenweight.evaluation.perplexity import long_context_nll

    start = time.perf_counter()
    with progress_bar(seqs.input_ids.shape[0], desc, progress) as bar:
        long = long_context_nll(model, seqs, batch_size=cfg.batch_size, on_done=bar.update)
    return long, time.perf_counter() - start


def _uses_evaluator(cfg: EvalConfig) -> bool:
    """Whether a chosen text task reads the LongPPL evaluator's key tokens."""
    return any(t.uses_evaluator for t in tasks_of(cfg.text_tasks, TEXT))


def _load_evaluator_key_tokens(
    evaluator: ModelSpec, cfg: EvalConfig, load_kwargs: dict[str, Any], progress: bool
) -> KeyTokens:
    """Step: load the LongPPL evaluator once and judge the key tokens."""
    with _Loaded(evaluator, load_kwargs) as (model, tokenizer, _):
        seqs = _load_sequences(cfg, tokenizer)
        desc = f"{evaluator.label}: evaluator long NLL"
        long, long_s = _long_nll(model, seqs, cfg, desc, progress)
        key = _tokenizer_key(tokenizer)
        return evaluator_key_tokens(evaluator.label, model, seqs, long, long_s, key, cfg, progress)


def _same_model(spec: ModelSpec, evaluator: ModelSpec | None) -> bool:
    """Whether ``spec`` loads exactly the LongPPL evaluator (same source, or same object)."""
    if evaluator is None:
        return False
    if spec.model is not None or evaluator.model is not None:
        return spec.model is not None and spec.model is evaluator.model
    return spec.source is not None and spec.source == evaluator.source


def _model_entry(spec: ModelSpec, model: Any, load_s: float) -> dict[str, Any]:
    """The start of a model's results: what it is and how long it took to load."""
    config = getattr(model, "config", None)
    return {
        "label": spec.label,
        "source": spec.source,
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "rope_theta": rope_theta(config),
        "timing": {"load_s": load_s},
    }


def _text_sequences(
    spec: ModelSpec, tokenizer: Any, cfg: EvalConfig, key_tokens: KeyTokens | None
) -> Any:
    """Step: the evaluation sequences, the evaluator's when it judges (same tokens)."""
    if key_tokens is None:
        return _load_sequences(cfg, tokenizer)
    if key_tokens.tokenizer_key != _tokenizer_key(tokenizer):
        raise TokenWeightError(
            f"model {spec.label!r} does not share the LongPPL evaluator's "
            "tokenizer; key tokens can only be compared on the same tokens"
        )
    return key_tokens.seqs


def _run_text_tasks(
    entry: dict[str, Any],
    spec: ModelSpec,
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    key_tokens: KeyTokens | None,
    is_evaluator: bool,
    progress: bool,
) -> None:
    """Step: the model's long-context NLL of the evaluation sequences (once), then every
    chosen text task on it, in table order, each result into ``entry``."""
    seqs = _text_sequences(spec, tokenizer, cfg, key_tokens)
    mask, timing = seqs.target_mask, entry["timing"]
    if key_tokens is not None and is_evaluator:
        # the LongPPL evaluator is this very model: computed once, timed there
        long, ppl_s = key_tokens.long, key_tokens.long_s
    else:
        long, ppl_s = _long_nll(model, seqs, cfg, f"{spec.label}: long-context NLL", progress)
    timing["perplexity_s"] = ppl_s
    timing["perplexity_tokens_per_s"] = int(mask.sum()) / max(ppl_s, 1e-9)
    inputs = TextTaskInputs(spec.label, model, seqs, long, cfg, timing, progress, key_tokens)
    for task in tasks_of(cfg.text_tasks, TEXT):
        entry[task.key] = load(task.run)(inputs)


def _probes_for(tokenizer: Any, cfg: EvalConfig, cache: dict[tuple, list[Probe]]) -> list[Probe]:
    """The probe prompts in this tokenizer (made once per tokenizer, shared by models)."""
    key = _tokenizer_key(tokenizer)
    if key not in cache:
        cache[key] = _make_probes(tokenizer, cfg.probe_tasks, cfg)
    return cache[key]


def _make_probes(tokenizer: Any, tasks: Sequence[str], cfg: EvalConfig) -> list[Probe]:
    return make_probes(
        tokenizer,
        tasks,
        cfg.lengths,
        cfg.depths,
        trials=cfg.trials,
        seed=cfg.seed,
        **cfg.probe_settings,
    )


def _run_probes(
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

    probes = _probes_for(tokenizer, cfg, probe_cache)
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
    entry["probes"] = _probe_result(probes, outputs, cfg)
    entry["timing"]["probes_s"] = took
    entry["timing"]["probe_prompts_per_s"] = len(probes) / max(took, 1e-9)
    prompt_tokens = sum(len(p.input_ids) for p in probes)
    entry["timing"]["probe_tokens_per_s"] = prompt_tokens / max(took, 1e-9)


def _evaluate_one(
    spec: ModelSpec,
    cfg: EvalConfig,
    load_kwargs: dict[str, Any],
    progress: bool,
    key_tokens: KeyTokens | None,
    probe_cache: dict[tuple, list[Probe]],
    is_evaluator: bool = False,
) -> dict[str, Any]:
    """Load one model, run every task on it, release it; its entry of ``results.json``."""
    with _Loaded(spec, load_kwargs) as (model, tokenizer, load_s):
        entry = _model_entry(spec, model, load_s)
        if cfg.text_tasks:
            args = (cfg, key_tokens, is_evaluator, progress)
            _run_text_tasks(entry, spec, model, tokenizer, *args)
        if cfg.probe_tasks:
            _run_probes(entry, spec, model, tokenizer, cfg, probe_cache, progress)
    return entry


def _check_out_dir(out_dir: str | Path | None) -> None:
    """Step: refuse an output folder holding files this command did not write."""
    if out_dir is None:
        return
    from tokenweight.evaluation.report import EVAL_FILES
    from tokenweight.infra.files import check_output_dir

    check_output_dir(out_dir, "tokenweight eval output", markers=EVAL_FILES[:1], known=EVAL_FILES)


def _model_specs(models: Sequence[ModelSpec | str | tuple[str, Any, Any]]) -> list[ModelSpec]:
    """Step: the models to evaluate, with distinct labels."""
    specs = [_as_spec(m) for m in models]
    if not specs:
        raise TokenWeightError("give at least one model to evaluate")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise TokenWeightError(
            f"model labels must differ, got {', '.join(labels)}; name them LABEL=SOURCE"
        )
    return specs


def _results_header(cfg: EvalConfig, evaluator: ModelSpec | str | None) -> dict[str, Any]:
    """The start of ``results.json``: version and settings (with the LongPPL evaluator's
    label), no models yet."""
    from tokenweight import __version__

    settings = cfg.as_dict()
    label = None if evaluator is None else str(getattr(evaluator, "label", evaluator))
    settings["longppl_evaluator"] = label
    return {"tokenweight_version": __version__, "settings": settings, "models": []}


def _evaluator_argument(
    evaluator: ModelSpec | str | None, scorer: ModelSpec | str | None
) -> ModelSpec | str | None:
    """``evaluator``, or ``scorer``, its old name (with a deprecation message)."""
    if scorer is None:
        return evaluator
    warnings.warn(
        "the scorer argument is now called evaluator (the LongPPL evaluator); the old name "
        "will be removed",
        FutureWarning,
        stacklevel=3,
    )
    if evaluator is not None:
        raise TokenWeightError(
            "give the LongPPL evaluator once, as evaluator (scorer is its old name)"
        )
    return scorer


def _write_results(results: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
    """Step: the JSON-safe results, written with the report and figures to ``out_dir``."""
    results = _clean(results)
    if out_dir is not None:
        from tokenweight.evaluation.report import write_outputs

        results["files"] = write_outputs(results, out_dir)
    return results


def run_evaluation(
    models: Sequence[ModelSpec | str | tuple[str, Any, Any]],
    cfg: EvalConfig,
    *,
    out_dir: str | Path | None,
    evaluator: ModelSpec | str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    scorer: ModelSpec | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` with the settings ``cfg``; the recipe behind
    :func:`evaluate_models` (which documents the arguments and the result; ``scorer`` is
    the old name of ``evaluator``)."""
    evaluator = _evaluator_argument(evaluator, scorer)
    _check_out_dir(out_dir)
    specs = _model_specs(models)
    load_kwargs = {"device": "auto", **(load_kwargs or {})}
    key_tokens, evaluator_spec = None, None
    if evaluator is not None and _uses_evaluator(cfg):
        evaluator_spec = _as_spec(evaluator)
    probe_cache: dict[tuple, list[Probe]] = {}
    _check_before_computing(specs, evaluator_spec, cfg, load_kwargs, probe_cache)
    if evaluator_spec is not None:
        key_tokens = _load_evaluator_key_tokens(evaluator_spec, cfg, load_kwargs, progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results = _results_header(cfg, evaluator)
    for spec in specs:
        is_evaluator = _same_model(spec, evaluator_spec)
        entry = _evaluate_one(
            spec, cfg, load_kwargs, progress, key_tokens, probe_cache, is_evaluator
        )
        results["models"].append(entry)
    return _write_results(results, out_dir)


def evaluate_models(
    models: Sequence[ModelSpec | str | tuple[str, Any, Any]],
    *,
    out_dir: str | Path | None,
    config: EvalConfig | None = None,
    evaluator: ModelSpec | str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    scorer: ModelSpec | str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``models`` side by side and (with ``out_dir``) write every output file.

    Args:
        models: ``ModelSpec``, ``"LABEL=SOURCE"`` text, or ``(label, model, tokenizer)``.
        out_dir: folder for ``results.json``, ``results.md`` and PNGs (``None``: no files).
        config: the evaluation settings as an :class:`EvalConfig`; or, instead, give them
            as keyword ``settings`` named as its settings (not both):
        tasks: names of the task table
            (:data:`~tokenweight.evaluation.tasks.EVAL_TASKS`, :data:`ALL_TASKS`); default
            the table's default probes (``passkey``, ``needle``), plus its default text
            tasks (``ppl``, ``longppl``) when ``data`` is given.
        lengths / depths / trials: probe prompt lengths (tokens), needle depths
            (fractions) and prompts per (length, depth) cell.
        seed: selects the probe values and positions (same seed, same prompts).
        batch_size: prompts decoded together / sequences per forward pass.
        distractors / hops: multikey distractor needles / vartrack chain links.
        data: prepared dataset folder or corpus files for ``ppl`` / ``longppl``.
        glob / encoding_errors / hf_split / text_field: how corpus ``data`` is read, the
            options of ``tokenweight prepare`` (files taken from folders, undecodable
            bytes, Hugging Face dataset split, JSONL/Parquet/dataset text field).
        seq_len: sequence length for corpus data (default: the longest probe length).
        max_sequences: evaluation sequences used at most.
        bucket_size: position bucket width (tokens) of the perplexity table.
        longppl_window / longppl_stride: short context of LongPPL (default
            ``min(4096, seq_len // 2)`` and a quarter of it, see
            :func:`~tokenweight.evaluation.perplexity.default_short_window`).
        longppl_alpha / longppl_beta: key token if ``s - l > alpha`` and ``l < beta``.
        allow_beyond_positions: evaluate lengths beyond a model's
            ``max_position_embeddings`` (with a warning) instead of refusing them. Every
            length and every probe task's minimum length are checked before any model
            call.
        evaluator: the LongPPL evaluator, one model that judges the key tokens for every
            model (default: each model judges its own); ``scorer`` is its old name.
        load_kwargs: passed to :func:`tokenweight.infra.models.load_model` (default
            ``device="auto"``).
        progress: show tqdm progress bars (stderr).

    Returns:
        The content of ``results.json``: ``{"settings": ..., "models": [entry, ...]}``.
    """
    if config is not None and settings:
        raise TokenWeightError(
            f"give evaluation settings either as config or as keywords, not both "
            f"(got config and {', '.join(sorted(settings))})"
        )
    cfg = config if config is not None else EvalConfig.from_options(**settings)
    return run_evaluation(
        models,
        cfg,
        out_dir=out_dir,
        evaluator=_evaluator_argument(evaluator, scorer),
        load_kwargs=load_kwargs,
        progress=progress,
    )
