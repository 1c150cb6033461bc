"""``token_nll``: the checked entry point of the loss head, and the one place that picks
its backend.

It validates the inputs, applies ``torch.autocast``'s casting, flattens ``(..., H)`` to
``(N, H)`` and sends the work either to the pure chunked implementation
(:mod:`tokenweight.core.losses.chunked`, every device) or to cut-cross-entropy
(:mod:`tokenweight.core.losses.cce_backend`, CUDA only, after its one-time agreement check).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

import tokenweight.core.losses.cce_backend as cce_backend
from tokenweight.core.losses.chunked import (
    check_inputs,
    check_labels,
    check_transform,
    chunked_nll,
    compute_dtype,
    default_chunk_size,
)
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = ["BACKENDS", "token_nll"]

BACKENDS = ("auto", "chunked", "cce")


def token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-token negative log-likelihood of ``labels`` under ``hidden @ weight.T + bias``.

    Args:
        hidden: ``(..., H)`` final hidden states (post final norm), any floating dtype.
        weight: ``(V, H)`` output embedding (``lm_head.weight``), same dtype and device.
        labels: ``(...)`` integer target ids in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` output bias.
        ignore_index: label value whose NLL and gradient are zero.
        chunk_size: tokens per chunk; ``None`` uses :func:`default_chunk_size` (a 256 MiB
            logit budget, 1 GiB on CUDA). Peak extra memory is ``O(chunk_size * V)``.
        softcap: logit softcapping ``y = softcap * tanh(z / softcap)`` (Gemma 2/3's
            ``final_logit_softcapping``), applied after ``scale``.
        scale: logit multiplier ``z = scale * (hidden @ weight.T + bias)`` (Cohere's
            ``logit_scale``; ``1 / logits_scaling`` for Granite).
        backend: ``"chunked"`` (:mod:`~tokenweight.core.losses.chunked`), ``"cce"``
            (cut-cross-entropy, CUDA only, must be installed) or ``"auto"``:
            cut-cross-entropy on CUDA when it is installed and passed a one-time check
            against the chunked path on this device and dtype, the chunked path otherwise
            (always on CPU).

    Returns:
        ``(...)`` natural-log NLL in nats, float32 (float64 for float64 inputs), 0 at
        ignored positions. Differentiable with respect to ``hidden``, ``weight`` and
        ``bias``; under ``torch.autocast`` the inputs are first cast to the autocast dtype,
        as ``F.linear`` would.

    Raises:
        TokenWeightError: mismatched shapes, dtypes or devices, or a label outside
            ``[0, V)`` that is not ``ignore_index`` (the message names the value).
    """
    device_type = hidden.device.type if isinstance(hidden, torch.Tensor) else "cpu"
    autocast = _autocast_active(hidden, device_type)
    if autocast:
        hidden, weight, bias = _autocast_cast(device_type, hidden, weight, bias)
    check_inputs(hidden, weight, labels, bias, chunk_size)
    softcap, scale_value = check_transform(softcap, scale)
    _check_options(backend, ignore_index)
    check_labels(labels, weight.shape[0], ignore_index)
    with torch.autocast(device_type, enabled=False) if autocast else nullcontext():
        nll = _backend_nll(
            hidden, weight, labels, bias, ignore_index, chunk_size, softcap, scale_value, backend
        )
    return nll.to(compute_dtype(hidden.dtype)).reshape(labels.shape)


def _backend_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    chunk_size: int | None,
    softcap: float | None,
    scale: float,
    backend: str,
) -> torch.Tensor:
    """``(N,)`` NLL of the checked inputs flattened to ``(N, H)``, from the backend that
    ``backend`` picks: cut-cross-entropy when :func:`cce_backend.wanted`, else chunked."""
    vocab, width = weight.shape
    flat_h = hidden.reshape(-1, width)
    flat_labels = labels.reshape(-1).long()
    if chunk_size is None:
        chunk_size = default_chunk_size(
            vocab, hidden.dtype, softcap=softcap is not None, device=hidden.device
        )
    if cce_backend.wanted(backend, flat_h, weight, bias, softcap, scale):
        return cce_backend.linear_nll(flat_h, weight, flat_labels, bias, ignore_index, softcap)
    return chunked_nll(flat_h, weight, flat_labels, bias, ignore_index, chunk_size, softcap, scale)


def _check_options(backend: str, ignore_index: int) -> None:
    if backend not in BACKENDS:
        raise TokenWeightError(f"backend must be 'auto', 'chunked' or 'cce', got {backend!r}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TokenWeightError(f"ignore_index must be an int, got {ignore_index!r}")


def _autocast_active(hidden: Any, device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``hidden``'s device type."""
    return (
        isinstance(hidden, torch.Tensor)
        and device_type in ("cpu", "cuda", "xpu", "mps")
        and torch.is_autocast_enabled(device_type)
    )


def _autocast_cast(device_type: str, *tensors: Any) -> tuple[Any, ...]:
    """``tensors`` cast as autocast casts ``F.linear``'s inputs: floating tensors go to the
    autocast dtype, float64 and everything else are left alone."""
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Any) -> Any:
        castable = isinstance(t, torch.Tensor) and t.is_floating_point()
        return t.to(dtype) if castable and t.dtype != torch.float64 else t

    return tuple(cast(t) for t in tensors)
