"""Per-token NLL of a Hugging Face causal LM without its full logits.

:func:`model_token_nll` calls the (possibly wrapped) model once through its top-level
``__call__`` -- so DDP gradient hooks, DeepSpeed ZeRO-3 and FSDP parameter gathering,
PEFT adapters and autocast all behave as in an ordinary forward -- with
``logits_to_keep`` set to an empty index, so the model's own ``lm_head`` runs on zero
positions. A forward hook on the decoder captures the final, post-norm hidden states;
the head is then applied chunk by chunk:

* ``head="fused"``: :func:`tokenweight.core.losses.token_nll` on ``lm_head.weight`` (and bias),
  the memory-flat custom autograd path. Needs a plain ``nn.Linear`` with a full local
  weight (single device, DDP, DeepSpeed ZeRO-1/2).
* ``head="module"``: calls the ``lm_head`` module itself on ``chunk_size`` positions at a
  time, each chunk under ``torch.utils.checkpoint`` (logits are recomputed in the
  backward, and sharding hooks fire in both passes), then ``F.cross_entropy`` per chunk.
  For heads whose weight is not a plain local tensor: DeepSpeed ZeRO-3 partitions,
  FSDP-managed or DTensor weights, LoRA/quantized heads. Under FSDP the ``lm_head`` must
  be its own wrapped unit (or the root's parameters must stay gathered) for the call to
  see full weights.
* ``head="auto"`` (default): ``fused`` when possible, else ``module``.

Both apply the family's output transform (:mod:`tokenweight.core.losses.heads`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenweight.core.losses.chunked import check_chunk_size, check_labels, default_chunk_size
from tokenweight.core.losses.heads import HeadTransform, head_transform
from tokenweight.core.losses.nll import token_nll
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError

__all__ = ["model_token_nll", "select_head", "unwrap_model"]

HEADS = ("auto", "fused", "module")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / FSDP / ``torch.compile`` / PEFT wrappers."""
    from transformers import PreTrainedModel

    current = model
    for _ in range(16):
        if isinstance(current, PreTrainedModel):
            return current
        get_base = getattr(current, "get_base_model", None)  # PEFT
        if callable(get_base):
            inner = get_base()
        elif isinstance(getattr(current, "_orig_mod", None), nn.Module):  # torch.compile
            inner = current._orig_mod
        elif isinstance(getattr(current, "module", None), nn.Module):  # DDP, DeepSpeed, FSDP1
            inner = current.module
        else:
            break
        if inner is current:
            break
        current = inner
    if not (
        callable(getattr(current, "get_output_embeddings", None)) and hasattr(current, "config")
    ):
        raise TokenWeightError(
            f"expected a Hugging Face causal LM (or one wrapped by DDP, DeepSpeed, FSDP or "
            f"PEFT), got {type(model).__name__}"
        )
    return current


def _unplain_reason(head: nn.Module, model: nn.Module) -> str | None:
    """Why ``head.weight`` cannot be used directly as a full local tensor (``None``: it can)."""
    if type(head) is not nn.Linear:
        return f"the output embedding is a {type(head).__name__}, not a plain nn.Linear"
    weight = head.weight
    if hasattr(weight, "ds_id") or hasattr(weight, "ds_status"):
        return "the head weight is a DeepSpeed ZeRO-3 partitioned parameter"
    if type(weight).__name__ == "DTensor" or hasattr(weight, "_local_tensor"):
        return "the head weight is a sharded DTensor (FSDP2 / tensor parallel)"
    if weight.dim() != 2 or weight.numel() == 0 or weight.shape[1] != head.in_features:
        return f"the head weight has shape {tuple(weight.shape)} (sharded or flattened)"
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        return "the model is wrapped in FSDP"
    return None


def select_head(head: nn.Module, model: nn.Module, requested: str = "auto") -> str:
    """Resolve ``head="auto"|"fused"|"module"`` for this output embedding and wrapper."""
    if requested not in HEADS:
        raise TokenWeightError(f"head must be one of {HEADS}, got {requested!r}")
    if requested == "module":
        return "module"
    reason = _unplain_reason(head, model)
    if requested == "fused" and reason is not None:
        raise TokenWeightError(f"head='fused' is not possible: {reason}; use head='module'")
    return "fused" if reason is None else "module"


def _decoder(inner: nn.Module) -> nn.Module:
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is inner:
        decoder = getattr(inner, "base_model", None)
    if not isinstance(decoder, nn.Module) or decoder is inner:
        raise TokenWeightError(
            f"cannot find the decoder of {type(inner).__name__} (model type "
            f"{getattr(inner.config, 'model_type', '?')!r}) to read its final hidden states"
        )
    return decoder


@functools.cache
def _takes_logits_to_keep(cls: type[nn.Module]) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def _vocab_size(head: nn.Module, inner: Any) -> int:
    out_features = getattr(head, "out_features", None)
    if isinstance(out_features, int):
        return out_features
    weight = getattr(head, "weight", None)
    ds_shape = getattr(weight, "ds_shape", None)
    if ds_shape is not None:
        return int(ds_shape[0])
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.numel() > 0:
        return int(weight.shape[0])
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else None
    return int((config or inner.config).vocab_size)


def _check_ids(input_ids: Any, labels: Any, attention_mask: Any) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape: object = (
            tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        )
        raise TokenWeightError(f"input_ids must be a (batch, seq) tensor, got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TokenWeightError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    for name, t in (("labels", labels), ("attention_mask", attention_mask)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(input_ids.shape):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise TokenWeightError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}"
            )


def _head_chunk_nll(
    head: nn.Module,
    transform: HeadTransform,
    ignore_index: int,
    hidden: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    logits = head(hidden)
    if transform.scale is not None:
        logits = logits * transform.scale
    if transform.softcap is not None:
        logits = torch.tanh(logits / transform.softcap) * transform.softcap
    return F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=ignore_index)


def _module_nll(
    head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    transform: HeadTransform,
    ignore_index: int,
    chunk_size: int,
) -> torch.Tensor:
    """Per-token NLL through the head module, ``chunk_size`` positions per checkpoint."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    fn = functools.partial(_head_chunk_nll, head, transform, ignore_index)
    pieces = []
    for start in range(0, flat_h.shape[0], chunk_size):
        h = flat_h[start : start + chunk_size]
        lab = flat_labels[start : start + chunk_size]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(fn, h, lab, use_reentrant=False))
        else:
            pieces.append(fn(h, lab))
    if not pieces:
        return hidden.new_zeros(labels.shape, dtype=torch.float32)
    return torch.cat(pieces).reshape(labels.shape)


def model_token_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    head: str = "auto",
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "auto",
    shift_labels: torch.Tensor | None = None,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """Per-token NLL of a causal LM's targets, without materializing its logits.

    Target ``t`` (``1 <= t < N``) is token ``labels[:, t]`` predicted from tokens ``< t``;
    column ``t - 1`` of the result holds its NLL.

    Args:
        model: a transformers ``*ForCausalLM`` of a supported family (see
            :mod:`tokenweight.core.losses.heads`), bare or wrapped by DDP, DeepSpeed, FSDP,
            ``torch.compile`` or PEFT. It is called once, through the outermost wrapper.
        input_ids: ``(batch, N)`` token ids.
        labels: ``(batch, N)`` target ids (default ``input_ids``); ``ignore_index`` marks
            positions without a target.
        attention_mask: ``(batch, N)``; positions with 0 are passed to the model and are
            not targets.
        head: ``"auto"``, ``"fused"`` or ``"module"`` (module docstring).
        chunk_size: tokens per head chunk; ``None`` picks it from the vocabulary size and a
            logit budget (:func:`tokenweight.core.losses.default_chunk_size`).
        ignore_index: label value meaning "no target".
        backend: passed to :func:`tokenweight.core.losses.token_nll` on the fused head.
        shift_labels: ``(batch, N)`` targets already aligned with the positions (column
            ``j`` is the token predicted at position ``j``), as a sequence-parallel rank
            holds them for its slice; replaces ``labels`` and the result is ``(batch, N)``.
        **forward_kwargs: extra model inputs (``position_ids``, ...); ``use_cache``
            defaults to ``False``.

    Returns:
        ``(batch, N - 1)`` NLL in nats, float32 (float64 for a float64 model), 0 where the
        target is ignored; differentiable with respect to the model's parameters.

    Raises:
        TokenWeightError: malformed inputs, a label outside the vocabulary, a model type
            whose output transform is unknown, or a model that cannot skip its logits.
    """
    _check_call(input_ids, labels, shift_labels, attention_mask, chunk_size, forward_kwargs)
    inner = unwrap_model(model)
    lm_head = _output_head(inner)
    transform = head_transform(inner.config)
    mode = select_head(lm_head, model, head)
    vocab = _vocab_size(lm_head, inner)
    targets = _targets(input_ids, labels, shift_labels, attention_mask, ignore_index, vocab)
    hidden = _final_hidden(model, inner, input_ids, attention_mask, forward_kwargs)
    hidden = hidden if shift_labels is not None else hidden[:, :-1]  # last predicts nothing
    if chunk_size is None:
        chunk_size = _head_chunk_size(vocab, hidden, transform)
    if mode == "module":
        return _module_nll(lm_head, hidden, targets, transform, ignore_index, chunk_size)
    return _fused_nll(lm_head, hidden, targets, transform, ignore_index, chunk_size, backend)


def _check_call(
    input_ids: Any,
    labels: Any,
    shift_labels: Any,
    attention_mask: Any,
    chunk_size: int | None,
    forward_kwargs: dict[str, Any],
) -> None:
    """Refuse malformed arguments of :func:`model_token_nll` before any compute."""
    _check_ids(input_ids, labels if shift_labels is None else shift_labels, attention_mask)
    check_chunk_size(chunk_size)
    for key in ("logits_to_keep", "labels", "output_hidden_states", "return_dict"):
        if key in forward_kwargs:
            raise TokenWeightError(f"model_token_nll sets {key!r} itself; do not pass it")


def _targets(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    ignore_index: int,
    vocab: int,
) -> torch.Tensor:
    """Target ids: ``shift_labels`` as given ``(batch, N)``, else ``(batch, N - 1)``
    ``labels`` (or ``input_ids``) shifted by one with ``ignore_index`` at masked
    positions; refuses ids outside ``[0, vocab)``."""
    if shift_labels is not None:
        targets = shift_labels.long()
    else:
        targets = (input_ids if labels is None else labels)[:, 1:].long()
        if attention_mask is not None:
            targets = targets.masked_fill(attention_mask[:, 1:] == 0, ignore_index)
    check_labels(targets, vocab, ignore_index)
    return targets


def _head_chunk_size(vocab: int, hidden: torch.Tensor, transform: HeadTransform) -> int:
    """Default tokens per head chunk (:func:`default_chunk_size`) for these hidden states."""
    softcap = transform.softcap is not None
    return default_chunk_size(vocab, hidden.dtype, softcap=softcap, device=hidden.device)


def _fused_nll(
    head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    transform: HeadTransform,
    ignore_index: int,
    chunk_size: int,
    backend: str,
) -> torch.Tensor:
    """Per-token NLL from the head's plain weight (and bias) through :func:`token_nll`."""
    assert isinstance(head, nn.Linear)  # select_head chose "fused": a plain nn.Linear
    return token_nll(
        hidden,
        head.weight,
        labels,
        bias=head.bias,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        softcap=transform.softcap,
        scale=transform.scale,
        backend=backend,
    )


def _output_head(inner: Any) -> nn.Module:
    """The output embedding (``lm_head``) of an unwrapped model that can skip its logits."""
    model_type = getattr(inner.config, "model_type", "?")
    lm_head = inner.get_output_embeddings()
    if not isinstance(lm_head, nn.Module):
        raise TokenWeightError(f"model type {model_type!r} has no output embedding (lm_head)")
    if not _takes_logits_to_keep(type(inner)):  # type: ignore[arg-type]  # classes are hashable; mypy misreads type[...] as not Hashable
        raise TokenWeightError(
            f"{type(inner).__name__} (model type {model_type!r}) has no `logits_to_keep` "
            "argument, so it would compute full logits; this model type is not supported"
        )
    return lm_head


def _final_hidden(
    model: nn.Module,
    inner: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    forward_kwargs: dict[str, Any],
) -> torch.Tensor:
    """``(batch, N, H)`` post-norm hidden states of one call of ``model`` (the outermost
    wrapper), read by a forward hook on ``inner``'s decoder; the head runs on no position."""
    captured: dict[str, torch.Tensor] = {}

    def keep_hidden(module: nn.Module, args: Any, output: Any) -> None:
        state = getattr(output, "last_hidden_state", None)
        captured["hidden"] = state if state is not None else output[0]

    handle = _decoder(inner).register_forward_hook(keep_hidden)
    try:
        no_positions = torch.empty(0, dtype=torch.long, device=input_ids.device)
        model(
            **{"use_cache": False, **forward_kwargs},
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=no_positions,
        )
    finally:
        handle.remove()
    if "hidden" not in captured:
        model_type = getattr(inner.config, "model_type", "?")
        raise TokenWeightError(
            f"the decoder of model type {model_type!r} did not run; cannot read hidden states"
        )
    return captured["hidden"]
