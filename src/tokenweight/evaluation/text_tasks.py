"""The text tasks' code: perplexity by position and LongPPL of one model.

Both read the model's long-context NLL of the evaluation sequences, computed once by the
runner (:mod:`tokenweight.evaluation.runner`) and handed to every text task of the task
table (:mod:`tokenweight.evaluation.tasks`) as :class:`TextTaskInputs`; each returns its
JSON-safe result. LongPPL's key tokens are judged by the *evaluator*: the model itself
(its long NLL against its own short-window NLL), or one fixed model for all
(``--longppl-evaluator``), whose judgement the runner makes once (:class:`KeyTokens`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from tokenweight.evaluation.metrics import (
    key_token_mask,
    longppl,
    position_bucket_nll,
    position_curve,
)

if TYPE_CHECKING:
    from tokenweight.evaluation.runner import EvalConfig

__all__ = [
    "KeyTokens",
    "TextTaskInputs",
    "evaluator_key_tokens",
    "progress_bar",
    "run_longppl",
    "run_perplexity",
]


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "seq") -> Any:
    """A tqdm bar on stderr (``enabled=False``: a silent one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True)


@dataclass(frozen=True)
class KeyTokens:
    """LongPPL key tokens judged by the evaluator model for every evaluated model.

    ``mask`` is ``[n, T-1]`` bool over the targets of ``seqs``; ``long`` is the
    evaluator's own long-context NLL ``[n, T-1]`` (nats) and ``long_s`` the seconds it
    took, both reused when the evaluator is also evaluated; ``info`` holds the short
    window and the evaluator's label (``key_tokens_from``)."""

    mask: torch.Tensor
    tokenizer_key: tuple
    seqs: Any
    info: dict[str, Any]
    long: torch.Tensor
    long_s: float


@dataclass
class TextTaskInputs:
    """What a text task reads: the evaluated model (``label``, ``model``), the evaluation
    sequences ``seqs`` (``input_ids [n, T]``, ``target_mask [n, T-1]``), the model's
    long-context NLL ``long [n, T-1]`` (nats), the settings ``cfg`` (a task reads its own
    settings as attributes, ``cfg.bucket_size``), the model's ``timing`` entry (a task may
    add its seconds), whether to show progress bars, and the evaluator's key tokens
    (``None``: each model judges its own)."""

    label: str
    model: Any
    seqs: Any
    long: torch.Tensor
    cfg: EvalConfig
    timing: dict[str, float] = field(default_factory=dict)
    progress: bool = False
    key_tokens: KeyTokens | None = None


def key_token_mask_of(
    model: Any, seqs: Any, long: torch.Tensor, cfg: EvalConfig, desc: str, progress: bool
) -> tuple[torch.Tensor, dict[str, int]]:
    """LongPPL key tokens ``[n, T-1]`` of ``seqs`` as judged by ``model`` (its long NLL
    ``long`` against its short-window NLL) and the short window used."""
    from tokenweight.evaluation.perplexity import default_short_window, short_context_nll_of

    window, stride = default_short_window(
        seqs.input_ids.shape[1], cfg.longppl_window, cfg.longppl_stride
    )
    with progress_bar(seqs.input_ids.shape[0], desc, progress) as bar:
        short = short_context_nll_of(
            model, seqs, long, window=window, stride=stride, on_done=bar.update
        )
    mask = key_token_mask(
        long, short, seqs.target_mask, alpha=cfg.longppl_alpha, beta=cfg.longppl_beta
    )
    return mask, {"window": window, "stride": stride}


def evaluator_key_tokens(
    label: str,
    model: Any,
    seqs: Any,
    long: torch.Tensor,
    long_s: float,
    tokenizer_key: tuple,
    cfg: EvalConfig,
    progress: bool,
) -> KeyTokens:
    """The evaluator ``model``'s key tokens of ``seqs`` (``long``: its long NLL)."""
    mask, window = key_token_mask_of(
        model, seqs, long, cfg, f"{label}: evaluator short NLL", progress
    )
    info = {**window, "key_tokens_from": label}
    return KeyTokens(mask, tokenizer_key, seqs, info, long, long_s)


def run_perplexity(inputs: TextTaskInputs) -> dict[str, Any]:
    """Perplexity by position: mean NLL per bucket of ``cfg.bucket_size`` positions, over
    all targets, and a 64-point NLL-against-position curve."""
    nll, mask, bucket_size = inputs.long, inputs.seqs.target_mask, inputs.cfg.bucket_size
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


def run_longppl(inputs: TextTaskInputs) -> dict[str, Any]:
    """LongPPL: ``exp`` of the model's mean long NLL over the key tokens, judged by the
    evaluator (or by the model itself); its seconds go to ``timing["longppl_s"]``."""
    start = time.perf_counter()
    cfg, from_evaluator = inputs.cfg, inputs.key_tokens
    if from_evaluator is None:
        desc = f"{inputs.label}: short-context NLL"
        key, window = key_token_mask_of(
            inputs.model, inputs.seqs, inputs.long, cfg, desc, inputs.progress
        )
        info: dict[str, Any] = {**window, "key_tokens_from": "self"}
    else:
        key, info = from_evaluator.mask, from_evaluator.info
    result = {
        **longppl(inputs.long, key, inputs.seqs.target_mask).as_dict(),
        **info,
        "alpha": cfg.longppl_alpha,
        "beta": cfg.longppl_beta,
    }
    inputs.timing["longppl_s"] = time.perf_counter() - start
    return result
