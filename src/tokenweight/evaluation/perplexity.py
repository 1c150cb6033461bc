"""Per-target NLL of evaluation sequences: full context, and short-context windows.

Both return ``(S, N - 1)`` float32 tensors on the CPU in nats, column ``j`` the target
``j + 1``, 0 at padding targets (see :class:`~tokenweight.evaluation.sequences.EvalSequences`).

The short context defaults follow LongPPL (Fang et al.): a ``4096``-token window moving in
steps of a quarter window (their 4096 tokens of context before each 1024-token block),
the window capped at half the sequence so that at least half of the targets get a
truncated context on short evaluation sequences. Each target ``t >= window`` is then
predicted from ``3/4 window`` to ``window - 1`` tokens; targets inside the first window
have the same context in both passes, so their short NLL *is* the long NLL (the first
window is not run again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tokenweight.core.scoring import require_short_window
from tokenweight.evaluation.sequences import EvalSequences
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "DEFAULT_LONGPPL_WINDOW",
    "default_short_window",
    "default_stride",
    "long_context_nll",
    "short_context_nll_of",
]

DEFAULT_LONGPPL_WINDOW = 4096


def default_stride(window: int) -> int:
    """LongPPL's step between short-context windows: a quarter ``window`` (at least 1)."""
    return max(1, window // 4)


def default_short_window(
    seq_len: int, window: int | None = None, stride: int | None = None
) -> tuple[int, int]:
    """``(window, stride)`` for LongPPL's short context on ``seq_len``-token sequences.

    ``window`` defaults to ``min(4096, seq_len // 2)``, ``stride`` to ``window // 4``.
    """
    if window is None:
        window = max(2, min(DEFAULT_LONGPPL_WINDOW, seq_len // 2))
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise TokenWeightError(f"the LongPPL window must be an integer >= 2, got {window!r}")
    require_short_window(window, seq_len, "--longppl-window")
    if stride is None:
        stride = default_stride(window)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise TokenWeightError(
            f"the LongPPL stride must be an integer in [1, window={window}], got {stride!r}"
        )
    return window, stride


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def long_context_nll(
    model: Any,
    seqs: EvalSequences,
    *,
    batch_size: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """NLL of every target with the full sequence as context, ``(S, N - 1)`` float32."""
    from tokenweight.core.losses import model_token_nll

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TokenWeightError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _device(model)
    rows = []
    with torch.inference_mode():
        for lo in range(0, seqs.input_ids.shape[0], batch_size):
            ids = seqs.input_ids[lo : lo + batch_size].to(device)
            mask = None
            labels = None
            if seqs.attention_mask is not None:
                mask = seqs.attention_mask[lo : lo + batch_size].to(device)
                labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
            nll = model_token_nll(model, ids, labels=labels, attention_mask=mask)
            rows.append(nll.float().cpu())
            if on_done is not None:
                on_done(ids.shape[0])
    out = torch.cat(rows)
    return torch.where(seqs.target_mask, out, torch.zeros_like(out))


def short_context_nll_of(
    model: Any,
    seqs: EvalSequences,
    long_nll: torch.Tensor,
    *,
    window: int,
    stride: int,
    on_done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """NLL of every target from at most ``window`` tokens (same model as ``long_nll``).

    Targets of the first window take their value from ``long_nll`` (identical context).
    Returns ``(S, N - 1)`` float32, 0 at padding targets.
    """
    from tokenweight.core.scoring import short_context_nll

    device = _device(model)
    rows = []
    for i in range(seqs.input_ids.shape[0]):
        ids = seqs.input_ids[i : i + 1].to(device)
        mask = None if seqs.attention_mask is None else seqs.attention_mask[i : i + 1].to(device)
        short = short_context_nll(
            model,
            ids,
            window=window,
            stride=stride,
            bos_token_id=seqs.bos_token_id,
            first_window=False,
            attention_mask=mask,
        ).float()
        rows.append(short.cpu())
        if on_done is not None:
            on_done(1)
    out = torch.cat(rows)
    out = torch.where(torch.isnan(out), long_nll, out)
    return torch.where(seqs.target_mask, out, torch.zeros_like(out))
