"""Per-token NLL of a linear head without materializing the logits (the pure chunked path).

For hidden states ``h`` (``N x H``), an output embedding ``W`` (``V x H``) and optional bias
``b``, the logits are ``y = cap * tanh(scale * (h W^T + b) / cap)`` (the ``tanh`` only when
a softcap is given, ``scale`` 1 unless given) and the per-token NLL is
``lse(y_t) - y_t[label_t]``. :func:`chunked_nll` computes it in row chunks of ``chunk_size``
tokens: each chunk's logits live only while that chunk is processed. The forward keeps
the inputs and the per-token log-sum-exp (``N`` floats); the backward recomputes each
chunk's logits, forms ``g_t * (softmax(y_t) - onehot(label_t))`` with the incoming
per-token gradient ``g`` and multiplies it into ``dh``, ``dW`` and ``db``. Any weighting
applied to the result afterwards (``(w * nll).sum()``) therefore gets exact gradients.

Precision: logits are produced by the matmul in the input dtype (as the model's own
``lm_head`` would), then converted to float32 for the transforms, the log-sum-exp and
the softmax; ``dW`` and ``db`` accumulate across chunks in float32 (float64 for float64
inputs) and are returned in the input dtypes. Rows that are ignored, or whose incoming
gradient is exactly zero (sparse weights), are skipped in the backward.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "CUDA_CHUNK_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "IGNORE_INDEX",
    "check_chunk_size",
    "check_inputs",
    "check_labels",
    "check_transform",
    "chunked_nll",
    "compute_dtype",
    "default_chunk_size",
]
#: Working memory one chunk may use for its logits (and their float32 copy), in bytes.
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: The same on CUDA: larger chunks amortize the float32 ``dW`` accumulation (one read and
#: write of ``V x H`` floats per chunk), which is memory-bound on a GPU.
CUDA_CHUNK_BYTES = 2**30
_MIN_CHUNK = 16


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the NLL is computed and returned in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(
    vocab_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    softcap: bool = False,
    device: torch.device | str | None = None,
    budget_bytes: int | None = None,
) -> int:
    """Tokens per chunk so that one chunk's logit buffers fit in ``budget_bytes``.

    A chunk holds ``chunk x V`` logits in ``dtype`` plus a float32 copy when ``dtype`` is
    narrower (and one more float32 buffer for the softcap derivative in the backward).
    The budget defaults to :data:`DEFAULT_CHUNK_BYTES` (256 MiB), or
    :data:`CUDA_CHUNK_BYTES` (1 GiB) on a CUDA ``device``. With 256 MiB: 512 tokens for
    ``V = 128256`` in float32, 336 in bfloat16; 1360 for ``V = 49152`` in float32; with
    1 GiB, 1392 for ``V = 128256`` in bfloat16. A multiple of 16, never below 16.
    """
    if vocab_size < 1:
        raise TokenWeightError(f"vocab_size must be >= 1, got {vocab_size}")
    if budget_bytes is None:
        on_cuda = device is not None and torch.device(device).type == "cuda"
        budget_bytes = CUDA_CHUNK_BYTES if on_cuda else DEFAULT_CHUNK_BYTES
    compute = compute_dtype(dtype)
    per_elem = compute.itemsize
    if dtype != compute:
        per_elem += dtype.itemsize
    if softcap:
        per_elem += compute.itemsize
    rows = budget_bytes // (vocab_size * per_elem)
    return max(_MIN_CHUNK, rows // _MIN_CHUNK * _MIN_CHUNK)


def check_transform(softcap: float | None, scale: float | None) -> tuple[float | None, float]:
    """Validate a softcap (``None`` or > 0) and a logit scale (``None`` means 1)."""
    if softcap is not None:
        if isinstance(softcap, bool) or not math.isfinite(float(softcap)) or softcap <= 0:
            raise TokenWeightError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
        softcap = float(softcap)
    if scale is None:
        return softcap, 1.0
    if isinstance(scale, bool) or not math.isfinite(float(scale)) or scale == 0:
        raise TokenWeightError(f"scale must be a finite non-zero number or None, got {scale!r}")
    return softcap, float(scale)


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    """Raise :class:`TokenWeightError` if a label is neither ``ignore_index`` nor in ``[0, V)``."""
    if labels.numel() == 0:
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        position = tuple(int(i) for i in bad.nonzero()[0].tolist())
        value = int(labels[position])
        raise TokenWeightError(
            f"label {value} at position {position} is outside the vocabulary [0, {vocab_size}) "
            f"and is not ignore_index ({ignore_index}); fix the labels or mark the position "
            f"with {ignore_index}"
        )


def check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    chunk_size: int | None,
) -> None:
    """Shape, dtype and device checks shared by every backend."""
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise TokenWeightError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() < 1 or not hidden.is_floating_point():
        raise TokenWeightError(
            f"hidden must be a floating tensor of shape (..., H), got {hidden.dtype} "
            f"{tuple(hidden.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise TokenWeightError(
            f"weight must have shape (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] < 1:
        raise TokenWeightError("weight has no rows (V = 0); pass the full output embedding")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TokenWeightError(f"labels must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise TokenWeightError(
            f"labels shape {tuple(labels.shape)} must equal hidden.shape[:-1] = "
            f"{tuple(hidden.shape[:-1])}"
        )
    if weight.dtype != hidden.dtype:
        raise TokenWeightError(
            f"hidden is {hidden.dtype} but weight is {weight.dtype}; cast one of them "
            "(or run under torch.autocast)"
        )
    devices = {hidden.device, weight.device, labels.device}
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise TokenWeightError(f"bias must have shape (V,) = ({weight.shape[0]},), got {shape}")
        if bias.dtype != weight.dtype:
            raise TokenWeightError(f"bias is {bias.dtype} but weight is {weight.dtype}")
        devices.add(bias.device)
    if len(devices) > 1:
        raise TokenWeightError(
            f"hidden, weight, labels and bias must be on one device, got {sorted(map(str, devices))}"
        )
    check_chunk_size(chunk_size)


def check_chunk_size(chunk_size: int | None) -> None:
    """Refuse a ``chunk_size`` (tokens per chunk) that is neither ``None`` nor an int >= 1."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise TokenWeightError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


class _Rows:
    """The rows a pass works on: all of them (slices, no copies) or a subset (gathers)."""

    def __init__(self, mask: torch.Tensor | None, n: int) -> None:
        self.index = None if mask is None else mask.nonzero().squeeze(1)
        self.count = n if self.index is None else int(self.index.numel())

    def take(self, t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if self.index is None:
            return t[start:stop]
        return t.index_select(0, self.index[start:stop])

    def put(self, out: torch.Tensor, start: int, stop: int, values: torch.Tensor) -> None:
        if self.index is None:
            out[start:stop].copy_(values)
        else:
            out.index_copy_(0, self.index[start:stop], values)


class _Buffers:
    """Chunk-sized logit buffers allocated once per call and reused by every chunk."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.compute = compute_dtype(dtype)
        self.raw = torch.empty(rows, vocab, dtype=dtype, device=device)
        self.wide = (
            self.raw if dtype == self.compute else torch.empty_like(self.raw, dtype=self.compute)
        )
        self._deriv: torch.Tensor | None = None

    def deriv(self) -> torch.Tensor:
        if self._deriv is None:
            self._deriv = torch.empty_like(self.wide)
        return self._deriv


def _chunk_logits(
    buffers: _Buffers,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    scale: float,
    deriv: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Transformed float32 logits of one chunk, and ``dy/dz`` when ``deriv`` and softcapped."""
    rows = h.shape[0]
    raw = buffers.raw[:rows]
    if bias is None:
        torch.mm(h, weight.t(), out=raw)
    else:
        torch.addmm(bias, h, weight.t(), out=raw)
    y = buffers.wide[:rows]
    if y is not raw:
        y.copy_(raw)
    if scale != 1.0:
        y.mul_(scale)
    d = None
    if softcap is not None:
        y.div_(softcap).tanh_()
        if deriv:  # d tanh-cap / dz = scale * (1 - tanh^2)
            d = torch.mul(y, y, out=buffers.deriv()[:rows]).neg_().add_(1.0)
            if scale != 1.0:
                d.mul_(scale)
        y.mul_(softcap)
    return y, d


class _Options(NamedTuple):
    """The non-tensor settings of one chunked-loss call (see :func:`chunked_nll`)."""

    ignore_index: int
    chunk_size: int
    softcap: float | None
    scale: float


def _forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    options: _Options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL and log-sum-exp (both ``(N,)`` in the compute dtype; 0 at ignored rows)."""
    ignore_index, chunk_size, softcap, scale = options
    n = hidden.shape[0]
    compute = compute_dtype(hidden.dtype)
    valid = labels != ignore_index
    rows = _Rows(None if bool(valid.all()) else valid, n)
    nll = torch.zeros(n, dtype=compute, device=hidden.device)
    lse = torch.zeros(n, dtype=compute, device=hidden.device)
    if rows.count == 0:
        return nll, lse
    step = min(chunk_size, rows.count)
    buffers = _Buffers(step, weight.shape[0], hidden.dtype, hidden.device)
    for start in range(0, rows.count, step):
        stop = min(start + step, rows.count)
        y, _ = _chunk_logits(buffers, rows.take(hidden, start, stop), weight, bias, softcap, scale)
        target = y.gather(1, rows.take(labels, start, stop).unsqueeze(1)).squeeze(1)
        peak = y.amax(dim=1, keepdim=True)
        # exp in place: the chunk's logits are not needed after this
        chunk_lse = y.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))
        rows.put(lse, start, stop, chunk_lse)
        rows.put(nll, start, stop, chunk_lse - target)
    return nll, lse


def _backward(
    grad_nll: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    options: _Options,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(dh, dW, db)`` (``None`` where not needed) for the incoming ``(N,)`` ``grad_nll``."""
    grad = grad_nll.to(compute_dtype(hidden.dtype))
    active = (labels != options.ignore_index) & (grad != 0)
    rows = _Rows(None if bool(active.all()) else active, hidden.shape[0])
    grads = _Grads(hidden, weight, needs, zero_h=rows.index is not None)
    if rows.count > 0 and any(needs):
        step = min(options.chunk_size, rows.count)
        buffers = _Buffers(step, weight.shape[0], hidden.dtype, hidden.device)
        for start in range(0, rows.count, step):
            stop = min(start + step, rows.count)
            h = rows.take(hidden, start, stop)
            g = _logit_grad(buffers, rows, start, stop, h, weight, bias, labels, lse, grad, options)
            grads.add(rows, start, stop, g, h, weight, buffers)
    return (
        grads.h,
        None if grads.w is None else grads.w.to(weight.dtype),
        None if grads.b is None or bias is None else grads.b.to(bias.dtype),
    )


def _logit_grad(
    buffers: _Buffers,
    rows: _Rows,
    start: int,
    stop: int,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    grad: torch.Tensor,
    options: _Options,
) -> torch.Tensor:
    """``g_t * (softmax(y_t) - onehot(label_t)) * dy/dz`` for one chunk, ``(rows, V)`` in
    the compute dtype: the gradient with respect to the chunk's untransformed logits."""
    _, _, softcap, scale = options
    lab = rows.take(labels, start, stop).unsqueeze(1)
    y, d = _chunk_logits(buffers, h, weight, bias, softcap, scale, deriv=True)
    g = y.sub_(rows.take(lse, start, stop).unsqueeze(1)).exp_()  # softmax
    g.scatter_add_(1, lab, torch.full_like(lab, -1, dtype=buffers.compute))
    coef = rows.take(grad, start, stop).unsqueeze(1)
    if d is not None:
        g.mul_(coef).mul_(d)
    else:
        g.mul_(coef * scale if scale != 1.0 else coef)
    return g


class _Grads:
    """The backward's outputs: ``h`` (input dtype), float32 (float64) accumulators ``w``
    and ``b``, and ``product``, a ``V x H`` buffer in the input dtype for each chunk's
    ``dW`` when that dtype is narrower than the accumulator."""

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        needs: tuple[bool, bool, bool],
        zero_h: bool,
    ) -> None:
        need_h, need_w, need_b = needs
        compute = compute_dtype(hidden.dtype)
        vocab, width = weight.shape[0], hidden.shape[1]
        alloc = torch.zeros if zero_h else torch.empty
        dtype, device = hidden.dtype, hidden.device
        self.h = alloc(hidden.shape, dtype=dtype, device=device) if need_h else None
        self.w = torch.zeros(vocab, width, dtype=compute, device=hidden.device) if need_w else None
        self.b = torch.zeros(vocab, dtype=compute, device=hidden.device) if need_b else None
        narrow = hidden.dtype != compute
        self.product = (
            torch.empty(vocab, width, dtype=dtype, device=device) if need_w and narrow else None
        )

    def add(
        self,
        rows: _Rows,
        start: int,
        stop: int,
        g: torch.Tensor,
        h: torch.Tensor,
        weight: torch.Tensor,
        buffers: _Buffers,
    ) -> None:
        """Add one chunk's logit gradient ``g`` (for hidden rows ``h``) into the outputs."""
        if self.b is not None:
            self.b += g.sum(dim=0)
        low = g
        # Narrow inputs: the matmuls run in the input dtype, as autograd through the
        # lm_head would.
        if buffers.raw.dtype != buffers.compute:
            low = buffers.raw[: stop - start]
            low.copy_(g)
        if self.h is not None:
            rows.put(self.h, start, stop, low @ weight)
        if self.w is not None:
            if self.product is None:
                self.w.addmm_(low.t(), h)
            else:
                self.w += torch.mm(low.t(), h, out=self.product)


class _ChunkedTokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        ignore_index: int,
        chunk_size: int,
        softcap: float | None,
        scale: float,
    ) -> torch.Tensor:
        ctx.options = _Options(ignore_index, chunk_size, softcap, scale)
        nll, lse = _forward(hidden, weight, bias, labels, ctx.options)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        needs = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        grad_h, grad_w, grad_b = _backward(
            grad_nll, hidden, weight, bias, labels, lse, ctx.options, needs
        )
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    chunk_size: int,
    softcap: float | None,
    scale: float,
) -> torch.Tensor:
    """``(N,)`` per-token NLL of ``hidden (N, H)`` against ``labels (N,)``, chunk by chunk.

    Inputs are assumed checked (:func:`check_inputs`, :func:`check_labels`,
    :func:`check_transform`); :func:`tokenweight.core.losses.token_nll` is the checked entry
    point. Returns the compute dtype (:func:`compute_dtype`); the custom autograd function
    is used only when a gradient is wanted (scoring under ``no_grad`` skips its bookkeeping).
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    ):
        return _ChunkedTokenNLL.apply(
            hidden, weight, bias, labels, ignore_index, chunk_size, softcap, scale
        )
    nll, _ = _forward(
        hidden, weight, bias, labels, _Options(ignore_index, chunk_size, softcap, scale)
    )
    return nll
