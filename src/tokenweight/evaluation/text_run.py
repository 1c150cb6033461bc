"""The text tasks of one model: its long-context NLL of the evaluation sequences, computed
once, handed to every chosen text task of the table; and the LongPPL evaluator's key
tokens, judged once before the evaluated models run."""

from __future__ import annotations

import time
from typing import Any

import torch

from tokenweight.evaluation.config import EvalConfig, ModelSpec
from tokenweight.evaluation.loading import LoadedModel, tokenizer_key
from tokenweight.evaluation.tasks import TEXT, load, tasks_of
from tokenweight.evaluation.text_tasks import (
    KeyTokens,
    TextTaskInputs,
    evaluator_key_tokens,
    progress_bar,
)
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "load_evaluator_key_tokens",
    "load_sequences",
    "long_nll",
    "run_text_tasks",
    "text_sequences",
    "uses_evaluator",
]


def load_sequences(cfg: EvalConfig, tokenizer: Any) -> Any:
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


def long_nll(
    model: Any, seqs: Any, cfg: EvalConfig, desc: str, progress: bool
) -> tuple[torch.Tensor, float]:
    """Long-context NLL ``[n, T-1]`` (nats) of ``seqs`` and the seconds it took."""
    from tokenweight.evaluation.perplexity import long_context_nll

    start = time.perf_counter()
    with progress_bar(seqs.input_ids.shape[0], desc, progress) as bar:
        long = long_context_nll(model, seqs, batch_size=cfg.batch_size, on_done=bar.update)
    return long, time.perf_counter() - start


def uses_evaluator(cfg: EvalConfig) -> bool:
    """Whether a chosen text task reads the LongPPL evaluator's key tokens."""
    return any(t.uses_evaluator for t in tasks_of(cfg.text_tasks, TEXT))


def load_evaluator_key_tokens(
    evaluator: ModelSpec, cfg: EvalConfig, load_kwargs: dict[str, Any], progress: bool
) -> KeyTokens:
    """Step: load the LongPPL evaluator once and judge the key tokens."""
    with LoadedModel(evaluator, load_kwargs) as (model, tokenizer, _):
        seqs = load_sequences(cfg, tokenizer)
        desc = f"{evaluator.label}: evaluator long NLL"
        long, long_s = long_nll(model, seqs, cfg, desc, progress)
        key = tokenizer_key(tokenizer)
        return evaluator_key_tokens(evaluator.label, model, seqs, long, long_s, key, cfg, progress)


def text_sequences(
    spec: ModelSpec, tokenizer: Any, cfg: EvalConfig, key_tokens: KeyTokens | None
) -> Any:
    """Step: the evaluation sequences, the evaluator's when it judges (same tokens)."""
    if key_tokens is None:
        return load_sequences(cfg, tokenizer)
    if key_tokens.tokenizer_key != tokenizer_key(tokenizer):
        raise TokenWeightError(
            f"model {spec.label!r} does not share the LongPPL evaluator's "
            "tokenizer; key tokens can only be compared on the same tokens"
        )
    return key_tokens.seqs


def run_text_tasks(
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
    seqs = text_sequences(spec, tokenizer, cfg, key_tokens)
    mask, timing = seqs.target_mask, entry["timing"]
    if key_tokens is not None and is_evaluator:
        # the LongPPL evaluator is this very model: computed once, timed there
        long, ppl_s = key_tokens.long, key_tokens.long_s
    else:
        long, ppl_s = long_nll(model, seqs, cfg, f"{spec.label}: long-context NLL", progress)
    timing["perplexity_s"] = ppl_s
    timing["perplexity_tokens_per_s"] = int(mask.sum()) / max(ppl_s, 1e-9)
    inputs = TextTaskInputs(spec.label, model, seqs, long, cfg, timing, progress, key_tokens)
    for task in tasks_of(cfg.text_tasks, TEXT):
        entry[task.key] = load(task.run)(inputs)
