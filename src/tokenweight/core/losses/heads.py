"""Output transforms that a causal LM applies between its ``lm_head`` and the loss.

transformers computes ``logits = lm_head(hidden)`` and then, for some families, rescales
or softcaps them in the ``*ForCausalLM.forward``. The per-token NLL must apply the same
transform. The table below lists the families whose head was checked against the
model's own logits (tests/test_model_token_nll.py) and which config attribute carries
each transform; a family not listed is accepted as a plain linear head only if its config
has no attribute that looks like an output transform (``*logit*scal*``, ``*logit*cap*``,
``lm_head*mult*``, ...), and refused otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = ["FAMILIES", "HeadSpec", "HeadTransform", "head_transform"]


@dataclass(frozen=True)
class HeadSpec:
    """Where a family keeps its output transform: config attribute names, or ``None``.

    ``logits = lm_head(h) * config.<scale> / config.<inverse_scale>``, then
    ``softcap * tanh(logits / softcap)`` with ``softcap = config.<softcap>`` when set.
    """

    scale: str | None = None
    inverse_scale: str | None = None
    softcap: str | None = None


@dataclass(frozen=True)
class HeadTransform:
    """The resolved transform: multiply logits by ``scale``, then softcap (``None``: off)."""

    scale: float | None = None
    softcap: float | None = None


PLAIN = HeadSpec()
#: model_type -> where its head transform lives (all checked against the model's logits)
FAMILIES: dict[str, HeadSpec] = {
    "llama": PLAIN,
    "mistral": PLAIN,
    "qwen2": PLAIN,
    "qwen3": PLAIN,
    "phi3": PLAIN,
    "gemma": PLAIN,
    "gemma2": HeadSpec(softcap="final_logit_softcapping"),
    "gemma3_text": HeadSpec(softcap="final_logit_softcapping"),
    "cohere": HeadSpec(scale="logit_scale"),
    "granite": HeadSpec(inverse_scale="logits_scaling"),
}

# config attribute names that suggest an output transform we would not apply
_SUSPECT_OWNER = re.compile(r"logit|lm_head|output_mult|head_mult|final_scal", re.IGNORECASE)
_SUSPECT_KIND = re.compile(r"scal|cap|mult|temp", re.IGNORECASE)
_NOT_HEAD = re.compile(r"^(attn|attention|router|query|residual|embedding)_", re.IGNORECASE)
_NEUTRAL = (None, False, 0, 1)


def _suspects(config: Any) -> dict[str, Any]:
    found = {}
    for name, value in sorted(config.to_dict().items()):
        if _NOT_HEAD.match(name):
            continue
        if _SUSPECT_OWNER.search(name) and _SUSPECT_KIND.search(name):
            if isinstance(value, bool) or value in _NEUTRAL:
                continue
            found[name] = value
    return found


def _number(config: Any, attr: str | None, model_type: str) -> float | None:
    if attr is None:
        return None
    value = getattr(config, attr, None)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TokenWeightError(
            f"{model_type} config.{attr} must be a number or None, got {value!r}"
        ) from None


def head_transform(config: Any) -> HeadTransform:
    """The output transform a model with this config applies to its ``lm_head`` output.

    Raises:
        TokenWeightError: the family is not in :data:`FAMILIES` and its config has an
            attribute that looks like an output transform (message names the model type
            and the attribute).
    """
    model_type = str(getattr(config, "model_type", "") or "unknown")
    spec = FAMILIES.get(model_type)
    suspects = _suspects(config) if spec is None else {}
    if suspects:
        listed = ", ".join(f"{k}={v!r}" for k, v in suspects.items())
        raise TokenWeightError(
            f"model type {model_type!r} has an output transform tokenweight does not know "
            f"({listed}); per-token NLL would not match the model's logits. Supported "
            f"families: {', '.join(sorted(FAMILIES))}"
        )
    spec = spec or PLAIN
    scale = _number(config, spec.scale, model_type)
    inverse = _number(config, spec.inverse_scale, model_type)
    if inverse is not None:
        if inverse == 0:
            raise TokenWeightError(f"{model_type} config.{spec.inverse_scale} must not be 0")
        scale = (scale if scale is not None else 1.0) / inverse
    softcap = _number(config, spec.softcap, model_type)
    if softcap is not None and softcap <= 0:
        raise TokenWeightError(f"{model_type} config.{spec.softcap} must be > 0 or None")
    if scale == 1.0:
        scale = None
    return HeadTransform(scale=scale, softcap=softcap)
