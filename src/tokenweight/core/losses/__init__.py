"""Memory-flat per-token NLL: the loss head of token-weighted training.

* :func:`token_nll` -- per-token NLL of ``hidden @ weight.T (+ bias)``: checks and the
  backend choice (:mod:`tokenweight.core.losses.nll`); the pure chunked implementation, a
  custom autograd function that never holds more than one chunk of logits
  (:mod:`tokenweight.core.losses.chunked`); the optional cut-cross-entropy backend on CUDA
  (:mod:`tokenweight.core.losses.cce_backend`).
* :func:`model_token_nll` -- the same for a Hugging Face causal LM, through its (wrapped)
  forward, with the family's output transform (:mod:`tokenweight.core.losses.model`,
  :mod:`tokenweight.core.losses.heads`).
"""

from __future__ import annotations

from tokenweight.core.losses.chunked import (
    CUDA_CHUNK_BYTES,
    DEFAULT_CHUNK_BYTES,
    default_chunk_size,
)
from tokenweight.core.losses.heads import FAMILIES, HeadTransform, head_transform
from tokenweight.core.losses.model import model_token_nll, select_head, unwrap_model
from tokenweight.core.losses.nll import token_nll
from tokenweight.infra.constants import IGNORE_INDEX

__all__ = [
    "CUDA_CHUNK_BYTES",
    "DEFAULT_CHUNK_BYTES",
    "FAMILIES",
    "IGNORE_INDEX",
    "HeadTransform",
    "default_chunk_size",
    "head_transform",
    "model_token_nll",
    "select_head",
    "token_nll",
    "unwrap_model",
]
