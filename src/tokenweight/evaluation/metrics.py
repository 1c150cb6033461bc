"""Pure functions on per-target NLL tensors: perplexity by position and LongPPL.

Layout of every NLL tensor here: shape ``(batch, N - 1)``, float, natural-log NLL in nats;
column ``j`` is the NLL of token ``j + 1`` predicted from tokens ``0 .. j`` (the layout of
:func:`tokenweight.core.losses.model_token_nll`). A boolean ``mask`` of the same shape marks
valid targets (``None``: all valid).

Position of a target = index of the predicted token in its sequence (``j + 1``), so the
bucket ``[0, B)`` holds targets ``1 .. B - 1`` (position 0 is never a target) and every
later bucket ``[k B, (k + 1) B)`` holds ``B`` targets per sequence.

LongPPL (Fang et al., ICLR 2025; ``docs/method.md#evaluation``): a target is a *key token* when long context
gains more than ``alpha`` nats over a short context (``s_i - l_i > alpha``) and the long
NLL is below ``beta`` (``l_i < beta``); both judged by an *evaluator* (by default the model
itself). LongPPL of a model = ``exp(mean of that model's long NLL over the key tokens)``,
pooled over all sequences (every key token counts once, as plain perplexity pools tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from tokenweight.infra.constants import LONGPPL_ALPHA, LONGPPL_BETA  # the one definition
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "LONGPPL_ALPHA",
    "LONGPPL_BETA",
    "BucketStat",
    "LongPPLResult",
    "is_key_token",
    "key_token_mask",
    "longppl",
    "position_bucket_nll",
    "position_curve",
]


_NLL = TypeVar("_NLL", torch.Tensor, np.ndarray)


def is_key_token(
    long_nll: _NLL, short_nll: _NLL, alpha: float = LONGPPL_ALPHA, beta: float = LONGPPL_BETA
) -> _NLL:
    """The LongPPL key-token rule, elementwise: ``(s - l > alpha) & (l < beta)`` for NLLs in
    nats, torch tensors or numpy arrays alike. No checks and no mask: see
    :func:`key_token_mask`; ``tokenweight select`` and ``tokenweight study`` use it on
    stored arrays."""
    return ((short_nll - long_nll) > alpha) & (long_nll < beta)


def _check_nll(nll: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(nll, torch.Tensor):
        raise TokenWeightError(f"{what} must be a torch.Tensor, got {type(nll).__name__}")
    if nll.dim() == 1:
        nll = nll.unsqueeze(0)
    if nll.dim() != 2:
        raise TokenWeightError(
            f"{what} must have shape (batch, N - 1) or (N - 1,), got {tuple(nll.shape)}"
        )
    return nll.detach().to(torch.float64)


def _check_mask(mask: torch.Tensor | None, shape: torch.Size, what: str) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(shape):
        raise TokenWeightError(
            f"{what} has shape {tuple(mask.shape)} but the NLL has shape {tuple(shape)}; "
            "pass one mask entry per target"
        )
    return mask.detach().to("cpu").bool()


def _check_finite(nll: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(nll) & mask
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise TokenWeightError(
            f"{what} holds a NaN or infinite value at (sequence, target) {tuple(where)}; "
            "check the model output (dtype overflow?) before evaluating"
        )


@dataclass(frozen=True)
class BucketStat:
    """Targets at positions ``[start, end)``: their count and summed NLL (nats)."""

    start: int
    end: int
    tokens: int
    sum_nll: float

    @property
    def mean_nll(self) -> float:
        """Mean NLL in nats; NaN for an empty bucket."""
        return self.sum_nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan


def position_bucket_nll(
    nll: torch.Tensor, mask: torch.Tensor | None = None, *, bucket_size: int
) -> list[BucketStat]:
    """Mean NLL by target position bucket ``[0, B), [B, 2B), ...``.

    Args:
        nll: ``(batch, N - 1)`` (or ``(N - 1,)``) per-target NLL in nats.
        mask: same shape, True at valid targets; ``None`` means all valid.
        bucket_size: ``B``, in tokens (> 0).

    Returns:
        One :class:`BucketStat` per bucket up to the one holding position ``N - 1``,
        pooled over the batch (empty buckets included, with ``tokens == 0``).
    """
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise TokenWeightError(f"bucket_size must be a positive integer, got {bucket_size!r}")
    nll = _check_nll(nll, "nll")
    mask = _check_mask(mask, nll.shape, "mask")
    _check_finite(nll, mask, "nll")
    n_targets = nll.shape[1]
    positions = torch.arange(1, n_targets + 1)
    bucket_of = positions // bucket_size
    n_buckets = int(bucket_of[-1]) + 1 if n_targets else 0
    weights = mask.to(torch.float64)
    sums = torch.zeros(n_buckets, dtype=torch.float64)
    counts = torch.zeros(n_buckets, dtype=torch.float64)
    sums.index_add_(0, bucket_of, (torch.where(mask, nll, 0.0)).sum(0))
    counts.index_add_(0, bucket_of, weights.sum(0))
    return [
        BucketStat(
            start=k * bucket_size,
            end=(k + 1) * bucket_size,
            tokens=int(counts[k]),
            sum_nll=float(sums[k]),
        )
        for k in range(n_buckets)
    ]


def position_curve(
    nll: torch.Tensor, mask: torch.Tensor | None = None, *, points: int = 64
) -> tuple[list[float], list[float]]:
    """NLL against position for a plot: ``points`` equal buckets over ``1 .. N - 1``.

    Returns ``(centers, mean_nll)``: bucket centre positions (tokens) and mean NLL (nats,
    NaN where a bucket has no valid target).
    """
    n_targets = _check_nll(nll, "nll").shape[1]
    size = max(1, math.ceil((n_targets + 1) / max(1, points)))
    stats = position_bucket_nll(nll, mask, bucket_size=size)
    centers = [(max(s.start, 1) + min(s.end, n_targets + 1) - 1) / 2 for s in stats]
    return centers, [s.mean_nll for s in stats]


def key_token_mask(
    long_nll: torch.Tensor,
    short_nll: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    alpha: float = LONGPPL_ALPHA,
    beta: float = LONGPPL_BETA,
) -> torch.Tensor:
    """LongPPL key tokens: ``(s_i - l_i > alpha) & (l_i < beta) & mask``.

    ``long_nll`` / ``short_nll`` are the evaluator's NLL (nats) with full and truncated
    context, shape ``(batch, N - 1)``. Returns a bool tensor of that shape.
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise TokenWeightError(f"LongPPL {name} must be a finite number, got {value!r}")
    long_nll = _check_nll(long_nll, "long_nll")
    short_nll = _check_nll(short_nll, "short_nll")
    if long_nll.shape != short_nll.shape:
        raise TokenWeightError(
            f"long_nll {tuple(long_nll.shape)} and short_nll {tuple(short_nll.shape)} differ "
            "in shape; both must hold the same targets"
        )
    mask = _check_mask(mask, long_nll.shape, "mask")
    _check_finite(long_nll, mask, "long_nll")
    _check_finite(short_nll, mask, "short_nll")
    return mask & is_key_token(long_nll, short_nll, float(alpha), float(beta))


@dataclass(frozen=True)
class LongPPLResult:
    """LongPPL of one model: key-token perplexity, counts and plain perplexity.

    ``longppl`` is NaN when there is no key token (the JSON output writes ``null``).
    """

    longppl: float
    key_tokens: int
    tokens: int
    key_mean_nll: float
    mean_nll: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan

    def as_dict(self) -> dict[str, float | int | None]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "longppl": clean(self.longppl),
            "key_tokens": self.key_tokens,
            "key_fraction": self.key_tokens / self.tokens if self.tokens else None,
            "tokens": self.tokens,
            "key_mean_nll": clean(self.key_mean_nll),
            "mean_nll": clean(self.mean_nll),
            "perplexity": clean(self.perplexity),
        }


def longppl(
    nll: torch.Tensor, key_mask: torch.Tensor, mask: torch.Tensor | None = None
) -> LongPPLResult:
    """LongPPL of a model from its long-context NLL and the evaluator's key tokens.

    Args:
        nll: ``(batch, N - 1)`` NLL of the evaluated model with full context (nats).
        key_mask: bool, same shape: key tokens (see :func:`key_token_mask`).
        mask: valid targets for plain perplexity; ``None`` means all valid.

    Returns:
        ``LongPPL = exp(sum(nll * key) / sum(key))`` pooled over the batch, the key-token
        count, and plain perplexity ``exp(mean nll over valid targets)``.
    """
    nll = _check_nll(nll, "nll")
    mask = _check_mask(mask, nll.shape, "mask")
    key_mask = _check_mask(key_mask, nll.shape, "key_mask") & mask
    _check_finite(nll, mask, "nll")
    tokens = int(mask.sum())
    keys = int(key_mask.sum())
    mean_nll = float(nll[mask].sum() / tokens) if tokens else math.nan
    key_mean = float(nll[key_mask].sum() / keys) if keys else math.nan
    return LongPPLResult(
        longppl=math.exp(key_mean) if keys else math.nan,
        key_tokens=keys,
        tokens=tokens,
        key_mean_nll=key_mean,
        mean_nll=mean_nll,
    )
