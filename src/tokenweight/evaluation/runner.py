"""Evaluate one or more models side by side; write results.json, results.md and PNGs.

Tasks:

- ``ppl``: mean NLL by target-position bucket on evaluation sequences (``data``), and the
  NLL-against-position curve.
- ``longppl``: LongPPL (Fang et al.; ``docs/method.md#evaluation``). Key tokens are judged by an *evaluator*:
  by default each model itself (its long NLL against its own short-window NLL), or with
  ``scorer`` one fixed model for all (its long and short NLL), so that every model is
  measured on the same key tokens, as in Fang et al. LongPPL = exp(mean of the evaluated
  model's long NLL over the key tokens).
- probes (:data:`~tokenweight.evaluation.probes.TASKS`): greedy answers to offline
  retrieval prompts at every ``length x depth x trial``, exact-match scored.

Models are loaded one at a time and released before the next is loaded.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tokenweight.errors import TokenWeightError
from tokenweight.evaluation.metrics import (
    key_token_mask,
    longppl,
    position_bucket_nll,
    position_curve,
)
from tokenweight.evaluation.probes import TASKS as PROBE_TASKS
from tokenweight.evaluation.probes import Probe, make_probes
from tokenweight.models import rope_theta

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_TASKS",
    "EvalConfig",
    "ModelSpec",
    "evaluate_models",
]

ALL_TASKS = ("ppl", "longppl", *PROBE_TASKS)


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


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation (every field is a CLI option of ``tokenweight eval``)."""

    tasks: tuple[str, ...] = ("passkey", "needle")
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    trials: int = 1
    seed: int = 0
    batch_size: int = 1
    distractors: int = 3
    hops: int = 4
    data: tuple[str, ...] = ()
    seq_len: int | None = None
    max_sequences: int | None = 16
    text_field: str = "text"
    bucket_size: int = 1024
    longppl_window: int | None = None
    longppl_stride: int | None = None
    longppl_alpha: float = 2.0
    longppl_beta: float = 2.0
    glob: str | None = None
    encoding_errors: str = "strict"
    hf_split: str | None = None

    def __post_init__(self) -> None:
        tasks = tuple(dict.fromkeys(str(t).strip().lower() for t in self.tasks))
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown or not tasks:
            raise TokenWeightError(
                f"unknown evaluation task(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(ALL_TASKS)}"
            )
        object.__setattr__(self, "tasks", tasks)
        if self.probe_tasks:
            if not self.lengths or not self.depths:
                raise TokenWeightError("probes need at least one length and one depth")
            for n in self.lengths:
                _positive_int(n, "every probe length")
            for d in self.depths:
                if isinstance(d, bool) or not 0.0 <= float(d) <= 1.0:
                    raise TokenWeightError(f"every depth must be in [0, 1], got {d!r}")
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        for name in ("trials", "batch_size", "bucket_size", "hops"):
            _positive_int(getattr(self, name), name)
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
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
        return tuple(t for t in self.tasks if t in PROBE_TASKS)

    @property
    def text_tasks(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if t in ("ppl", "longppl"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _bar(total: int, desc: str, enabled: bool, unit: str = "seq"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True)


def _tokenizer_key(tokenizer: Any) -> tuple:
    from tokenweight.models import IDENTITY_FIELDS, tokenizer_identity

    ident = tokenizer_identity(tokenizer)
    return tuple(ident.get(k) for k in IDENTITY_FIELDS)


def _warn_beyond_positions(label: str, max_positions: int | None, cfg: EvalConfig) -> None:
    """Say loudly, before any compute, when prompts or sequences are longer than the
    model's positions (outputs past them are usually meaningless, or an error)."""
    lengths = list(cfg.lengths) if cfg.probe_tasks else []
    if cfg.text_tasks:
        lengths.append(cfg.seq_len or max(cfg.lengths))
    too_long = sorted({n for n in lengths if max_positions and n > max_positions})
    if too_long:
        logger.warning(
            "warning: model %r has %d positions (max_position_embeddings) but is asked for "
            "%s tokens; pass --max-position-embeddings (and --rope-theta) to extend its "
            "context, or use shorter --lengths / --seq-len",
            label,
            max_positions,
            ", ".join(map(str, too_long)),
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
            from tokenweight.models import load_model, load_tokenizer

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


def _perplexity_result(nll: torch.Tensor, mask: torch.Tensor, bucket_size: int) -> dict:
    buckets = position_bucket_nll(nll, mask, bucket_size=bucket_size)
    positions, curve = position_curve(nll, mask, points=64)
    tokens = sum(b.tokens for b in buckets)
    mean = sum(b.sum_nll for b in buckets) / tokens if tokens else math.nan
    return {
        "sequences": int(nll.shape[0]),
        "seq_len": int(nll.shape[1]) + 1,
        "tokens": tokens,
        "mean_nll": mean,
        "perplexity": math.exp(mean) if tokens else math.nan,
        "bucket_size": bucket_size,
        "buckets": [
            {
                "start": b.start,
                "end": b.end,
                "tokens": b.tokens,
                "mean_nll": b.mean_nll,
                "perplexity": b.perplexity,
            }
            for b in buckets
        ],
        "curve": {"positions": positions, "mean_nll": curve},
    }


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


def _key_mask_from_scorer(
    scorer: ModelSpec, cfg: EvalConfig, load_kwargs: dict[str, Any], progress: bool
) -> tuple[torch.Tensor, tuple, Any, dict[str, Any], torch.Tensor, float]:
    """LongPPL key tokens judged by ``scorer``: (key mask, tokenizer key, sequences, info,
    the evaluator's own long NLL and the seconds it took, both reused when the evaluator
    is also evaluated)."""
    from tokenweight.evaluation.perplexity import (
        default_short_window,
        long_context_nll,
        short_context_nll_of,
    )

    with _Loaded(scorer, load_kwargs) as (model, tokenizer, _):
        seqs = _load_sequences(cfg, tokenizer)
        window, stride = default_short_window(
            seqs.input_ids.shape[1], cfg.longppl_window, cfg.longppl_stride
        )
        n = seqs.input_ids.shape[0]
        start = time.perf_counter()
        with _bar(n, f"{scorer.label}: evaluator long NLL", progress) as bar:
            long = long_context_nll(model, seqs, batch_size=cfg.batch_size, on_done=bar.update)
        long_s = time.perf_counter() - start
        with _bar(n, f"{scorer.label}: evaluator short NLL", progress) as bar:
            short = short_context_nll_of(
                model, seqs, long, window=window, stride=stride, on_done=bar.update
            )
        key = key_token_mask(
            long, short, seqs.target_mask, alpha=cfg.longppl_alpha, beta=cfg.longppl_beta
        )
        info = {"window": window, "stride": stride, "key_tokens_from": scorer.label}
        return key, _tokenizer_key(tokenizer), seqs, info, long, long_s


def _same_model(spec: ModelSpec, scorer: ModelSpec | None) -> bool:
    """Whether ``spec`` loads exactly the LongPPL evaluator (same source, or same object)."""
    if scorer is None:
        return False
    if spec.model is not None or scorer.model is not None:
        return spec.model is not None and spec.model is scorer.model
    return spec.source is not None and spec.source == scorer.source


def _evaluate_one(
    spec: ModelSpec,
    cfg: EvalConfig,
    load_kwargs: dict[str, Any],
    progress: bool,
    scorer_key: tuple[torch.Tensor, tuple, Any, dict[str, Any], torch.Tensor, float] | None,
    probe_cache: dict[tuple, list[Probe]],
    is_scorer: bool = False,
) -> dict[str, Any]:
    from tokenweight.evaluation.generate import greedy_generate
    from tokenweight.evaluation.perplexity import (
        default_short_window,
        long_context_nll,
        short_context_nll_of,
    )

    with _Loaded(spec, load_kwargs) as (model, tokenizer, load_s):
        config = getattr(model, "config", None)
        entry: dict[str, Any] = {
            "label": spec.label,
            "source": spec.source,
            "max_position_embeddings": getattr(config, "max_position_embeddings", None),
            "rope_theta": rope_theta(config),
            "timing": {"load_s": load_s},
        }
        _warn_beyond_positions(spec.label, entry["max_position_embeddings"], cfg)
        tok_key = _tokenizer_key(tokenizer)
        if cfg.text_tasks:
            if scorer_key is not None and "longppl" in cfg.tasks:
                key_mask, scorer_tok, seqs, info, scorer_long, scorer_long_s = scorer_key
                if scorer_tok != tok_key:
                    raise TokenWeightError(
                        f"model {spec.label!r} does not share the LongPPL evaluator's "
                        "tokenizer; key tokens can only be compared on the same tokens"
                    )
            else:
                seqs = _load_sequences(cfg, tokenizer)
            mask = seqs.target_mask
            n = seqs.input_ids.shape[0]
            start = time.perf_counter()
            if is_scorer and scorer_key is not None and "longppl" in cfg.tasks:
                # the LongPPL evaluator is this very model: computed once, timed there
                long, ppl_s = scorer_long, scorer_long_s
            else:
                with _bar(n, f"{spec.label}: long-context NLL", progress) as bar:
                    long = long_context_nll(
                        model, seqs, batch_size=cfg.batch_size, on_done=bar.update
                    )
                ppl_s = time.perf_counter() - start
            entry["timing"]["perplexity_s"] = ppl_s
            entry["timing"]["perplexity_tokens_per_s"] = int(mask.sum()) / max(ppl_s, 1e-9)
            if "ppl" in cfg.tasks:
                entry["perplexity"] = _perplexity_result(long, mask, cfg.bucket_size)
            if "longppl" in cfg.tasks:
                start = time.perf_counter()
                if scorer_key is None:
                    window, stride = default_short_window(
                        seqs.input_ids.shape[1], cfg.longppl_window, cfg.longppl_stride
                    )
                    with _bar(n, f"{spec.label}: short-context NLL", progress) as bar:
                        short = short_context_nll_of(
                            model, seqs, long, window=window, stride=stride, on_done=bar.update
                        )
                    key_mask = key_token_mask(
                        long, short, mask, alpha=cfg.longppl_alpha, beta=cfg.longppl_beta
                    )
                    info = {"window": window, "stride": stride, "key_tokens_from": "self"}
                result = longppl(long, key_mask, mask)
                entry["longppl"] = {
                    **result.as_dict(),
                    **info,
                    "alpha": cfg.longppl_alpha,
                    "beta": cfg.longppl_beta,
                }
                entry["timing"]["longppl_s"] = time.perf_counter() - start
        if cfg.probe_tasks:
            if tok_key not in probe_cache:
                probe_cache[tok_key] = make_probes(
                    tokenizer,
                    cfg.probe_tasks,
                    cfg.lengths,
                    cfg.depths,
                    trials=cfg.trials,
                    seed=cfg.seed,
                    distractors=cfg.distractors,
                    hops=cfg.hops,
                )
            probes = probe_cache[tok_key]
            torch.manual_seed(cfg.seed)
            start = time.perf_counter()
            with _bar(len(probes), f"{spec.label}: probes", progress, "prompt") as bar:
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
            entry["timing"]["probe_tokens_per_s"] = sum(len(p.input_ids) for p in probes) / max(
                took, 1e-9
            )
    return entry


def evaluate_models(
    models: Sequence[ModelSpec | str | tuple[str, Any, Any]],
    *,
    out_dir: str | Path | None,
    tasks: Sequence[str] | None = None,
    lengths: Sequence[int] = (1024, 2048, 4096),
    depths: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    trials: int = 1,
    seed: int = 0,
    batch_size: int = 1,
    distractors: int = 3,
    hops: int = 4,
    data: str | Sequence[str] = (),
    seq_len: int | None = None,
    max_sequences: int | None = 16,
    text_field: str = "text",
    bucket_size: int = 1024,
    longppl_window: int | None = None,
    longppl_stride: int | None = None,
    longppl_alpha: float = 2.0,
    longppl_beta: float = 2.0,
    glob: str | None = None,
    encoding_errors: str = "strict",
    hf_split: str | None = None,
    scorer: ModelSpec | str | None = None,
    load_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``models`` side by side and (with ``out_dir``) write every output file.

    Args:
        models: ``ModelSpec``, ``"LABEL=SOURCE"`` text, or ``(label, model, tokenizer)``.
        out_dir: folder for ``results.json``, ``results.md`` and PNGs (``None``: no files).
        tasks: subset of :data:`ALL_TASKS`; default ``passkey`` and ``needle``, plus
            ``ppl`` and ``longppl`` when ``data`` is given.
        lengths / depths / trials: probe prompt lengths (tokens), needle depths
            (fractions) and prompts per (length, depth) cell.
        seed: selects the probe values and positions (same seed, same prompts).
        batch_size: prompts decoded together / sequences per forward pass.
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
        scorer: LongPPL evaluator for every model (default: each model judges itself).
        load_kwargs: passed to :func:`tokenweight.models.load_model` (default
            ``device="auto"``).
        progress: show tqdm progress bars (stderr).

    Returns:
        The content of ``results.json``: ``{"settings": ..., "models": [entry, ...]}``.
    """
    if out_dir is not None:
        from tokenweight.evaluation.report import EVAL_FILES
        from tokenweight.files import check_output_dir

        check_output_dir(
            out_dir, "tokenweight eval output", markers=EVAL_FILES[:1], known=EVAL_FILES
        )
    specs = [_as_spec(m) for m in models]
    if not specs:
        raise TokenWeightError("give at least one model to evaluate")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise TokenWeightError(
            f"model labels must differ, got {', '.join(labels)}; name them LABEL=SOURCE"
        )
    data = (data,) if isinstance(data, (str, Path)) else tuple(data)
    if tasks is None:
        tasks = ("ppl", "longppl", "passkey", "needle") if data else ("passkey", "needle")
    cfg = EvalConfig(
        tasks=tuple(tasks),
        lengths=tuple(lengths),
        depths=tuple(depths),
        trials=trials,
        seed=seed,
        batch_size=batch_size,
        distractors=distractors,
        hops=hops,
        data=data,
        seq_len=seq_len,
        max_sequences=max_sequences,
        text_field=text_field,
        bucket_size=bucket_size,
        longppl_window=longppl_window,
        longppl_stride=longppl_stride,
        longppl_alpha=longppl_alpha,
        longppl_beta=longppl_beta,
        glob=glob,
        encoding_errors=encoding_errors,
        hf_split=hf_split,
    )
    load_kwargs = {"device": "auto", **(load_kwargs or {})}
    scorer_key = None
    scorer_spec = None
    if scorer is not None and "longppl" in cfg.tasks:
        scorer_spec = scorer if isinstance(scorer, ModelSpec) else ModelSpec.parse(scorer)
        scorer_key = _key_mask_from_scorer(scorer_spec, cfg, load_kwargs, progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    from tokenweight import __version__

    settings = cfg.as_dict()
    settings["longppl_scorer"] = None if scorer is None else str(getattr(scorer, "label", scorer))
    results: dict[str, Any] = {
        "tokenweight_version": __version__,
        "settings": settings,
        "models": [],
    }
    probe_cache: dict[tuple, list[Probe]] = {}
    for spec in specs:
        results["models"].append(
            _evaluate_one(
                spec,
                cfg,
                load_kwargs,
                progress,
                scorer_key,
                probe_cache,
                is_scorer=_same_model(spec, scorer_spec),
            )
        )
    results = _clean(results)
    if out_dir is not None:
        from tokenweight.evaluation.report import write_outputs

        results["files"] = write_outputs(results, out_dir)
    return results
