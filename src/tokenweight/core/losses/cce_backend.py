"""Optional CUDA backend: Apple's cut-cross-entropy (``pip install 'tokenweight[cce]'``).

``linear_cross_entropy(e, c, targets, ignore_index=, softcap=, reduction="none",
filter_eps=None)`` computes the same per-token NLL as :mod:`tokenweight.core.losses.chunked`
with fused Triton kernels and exact (unfiltered) gradients. It has no logit scale, so it
is used only when ``scale`` is 1.

``backend="auto"`` picks it only on CUDA tensors, and only after a one-time check per
``(device, dtype, bias?, softcap?)`` that it agrees with the chunked path on a small random
case (values and gradients); a failed check or an exception falls back to the chunked
path with a warning. The check uses its own random generator, so the caller's RNG state
is untouched.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import warnings
from typing import Any

import torch

from tokenweight.core.losses.chunked import chunked_nll
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = ["available", "linear_nll", "wanted"]

_VERIFIED: dict[tuple[Any, ...], bool] = {}


def available() -> bool:
    """Whether the ``cut_cross_entropy`` package is importable (without importing it)."""
    return importlib.util.find_spec("cut_cross_entropy") is not None


def linear_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    softcap: float | None,
) -> torch.Tensor:
    """``(N,)`` float32 NLL via cut-cross-entropy; ``hidden (N, H)``, ``labels (N,)``.

    Exact gradients in every released API: no gradient filtering (``filter_eps=None``)
    and, where the version has them, float32 gradient accumulation. Versions without a
    ``bias`` argument (25.1.x) raise ``TypeError`` when a bias is given.
    """
    from cut_cross_entropy import linear_cross_entropy

    params = inspect.signature(linear_cross_entropy).parameters
    kwargs: dict[str, Any] = {
        "ignore_index": ignore_index,
        "softcap": softcap,
        "reduction": "none",
        "filter_eps": None,
        "impl": "cce",
    }
    if "accum_e_fp32" in params:
        kwargs.update(accum_e_fp32=True, accum_c_fp32=True)
    if bias is not None:
        if "bias" not in params:
            raise TypeError("this cut-cross-entropy version has no bias argument")
        kwargs["bias"] = bias
    out = linear_cross_entropy(hidden, weight.contiguous(), labels, **kwargs)
    return out.float()


def wanted(
    backend: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    scale: float,
) -> bool:
    """Whether this call should go to cut-cross-entropy (``hidden`` is ``(N, H)``)."""
    if backend == "chunked":
        return False
    if backend == "cce":
        if not hidden.is_cuda:
            raise TokenWeightError(
                f"backend='cce' needs CUDA tensors, got {hidden.device}; use backend='chunked'"
            )
        if not available():
            raise TokenWeightError(
                "backend='cce' needs cut-cross-entropy: pip install 'tokenweight[cce]'"
            )
        if scale != 1.0:
            raise TokenWeightError(
                "cut-cross-entropy has no logit scale; use backend='chunked' for this model"
            )
        return hidden.shape[0] > 0
    if not hidden.is_cuda or scale != 1.0 or hidden.shape[0] == 0 or not available():
        return False
    key = (hidden.device, hidden.dtype, bias is not None, softcap)
    if key not in _VERIFIED:
        _VERIFIED[key] = _agrees(hidden.device, hidden.dtype, bias is not None, softcap)
    return _VERIFIED[key]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _agrees(
    device: torch.device, dtype: torch.dtype, with_bias: bool, softcap: float | None
) -> bool:
    """Run both backends on one small random case and compare values and gradients."""
    gen = torch.Generator(device=device).manual_seed(20250503)
    n, h, v = 200, 64, 1000

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen, device=device) * std
        return x.to(dtype).requires_grad_()

    hidden, weight = rand(n, h), rand(v, h, std=1 / math.sqrt(h))
    bias = rand(v, std=0.1) if with_bias else None
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    labels[::7] = IGNORE_INDEX
    upstream = torch.rand(n, generator=gen, device=device)
    upstream[::5] = 0
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    with torch.enable_grad():
        ref = chunked_nll(hidden, weight, labels, bias, IGNORE_INDEX, 64, softcap, 1.0)
        ref_grads = torch.autograd.grad((ref.float() * upstream).sum(), leaves)
        try:
            got = linear_nll(hidden, weight, labels, bias, IGNORE_INDEX, softcap)
            got_grads = torch.autograd.grad((got * upstream).sum(), leaves)
        except Exception as exc:  # any failure means: do not use it
            warnings.warn(
                f"cut-cross-entropy failed its check on {device} {dtype} ({exc!r}); "
                "using the chunked per-token NLL instead",
                stacklevel=4,
            )
            return False
    narrow = dtype in (torch.bfloat16, torch.float16)
    value_tol, grad_tol = (3e-2, 3e-2) if narrow else (1e-4, 1e-4)
    value_err = float((got.detach().double() - ref.detach().double()).abs().max())
    grad_err = max(_rel_err(a, b) for a, b in zip(got_grads, ref_grads))
    ok = value_err <= value_tol and grad_err <= grad_tol and bool((got.detach()[::7] == 0).all())
    if not ok:
        warnings.warn(
            f"cut-cross-entropy disagrees with the chunked per-token NLL on {device} {dtype} "
            f"(max value error {value_err:.2e}, gradient error {grad_err:.2e}); using the "
            "chunked path",
            stacklevel=4,
        )
    return ok
