"""Peak training memory per GPU, estimated from a model's shape: parameters, gradients,
optimizer state, checkpointed activations and the loss head.

The estimate follows how a token-weighted training step uses memory with gradient
checkpointing and the chunked per-token loss head of :mod:`tokenweight.core.losses`:

* **parameters, gradients, optimizer** (``P`` parameters, ``D`` processes sharing them):

  - ``precision="mixed"`` (DeepSpeed bf16): 2-byte weights, 2-byte gradients and 12 bytes
    of AdamW state (fp32 master copy and two moments) per parameter. ZeRO-1 splits the
    optimizer state over ``D``, ZeRO-2 also the gradients, ZeRO-3 also the weights (and
    gathers one layer's weights at a time, counted twice for prefetching). Offloading
    moves the optimizer state (and with ZeRO-3 the weights) to CPU memory.
  - ``fsdp=True`` (FSDP2 full sharding with bf16 compute, as accelerate sets it up): fp32
    weights, fp32 gradients and 8 bytes of AdamW moments per parameter, all split over
    ``D`` (the same 16 bytes as ZeRO-3, split differently), plus one layer's weights
    gathered in bf16 (counted twice for prefetching) and its bf16 gradient before the
    reduce-scatter. CPU offload (``offload_parameters``) moves weights, gradients and
    optimizer state to CPU memory together; the GPU keeps only the gathered layer.
  - ``precision="pure"`` (weights, gradients and AdamW moments all in bf16, one
    process, plain torch): 2 + 2 + 4 bytes per parameter. The gradients of the decoder
    layers appear while the backward pass frees their checkpoints, so at the peak (the
    first recomputed layer) only the embedding and head gradients exist.
* **activations**: one saved layer input per layer (``L x s x h`` values, ``s`` tokens per
  GPU: sequence length times micro-batch over the sequence-parallel degree), plus the
  tensors one recomputed layer keeps for its backward: the two norm inputs and outputs,
  query/key/value, attention output (``4h + 2 kv``) and the MLP's gate, up and activated
  gate (``3 I``). Attention is a fused kernel (flash / SDPA): nothing quadratic.
* **loss head**: the final hidden states and their gradient (``2 s h``) plus one chunk of
  float32 logits (the chunk budget: 1 GiB on CUDA). It and the recomputed layer are not
  alive at the same time; the larger counts.

All figures in bytes; :func:`estimate_memory` returns them by part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "MODEL_SHAPES",
    "MemoryEstimate",
    "ModelShape",
    "estimate_memory",
    "format_estimate",
    "shape_from_config",
]

GIB = 1024**3
CHUNK_BYTES_CUDA = 1 * GIB  # the loss head's logit budget per chunk on CUDA
PRECISIONS = ("mixed", "pure")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    head_dim: int | None = None

    @property
    def kv_width(self) -> int:
        """Width of the key (and of the value) projection: ``kv_heads * head_dim``."""
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_width(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def layer_parameters(self) -> int:
        h, i = self.hidden, self.intermediate
        attention = 2 * h * self.q_width + 2 * h * self.kv_width
        return attention + 3 * h * i + 2 * h

    def parameters(self) -> int:
        """All parameters: embeddings, layers, final norm and (untied) output head."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.layer_parameters() + self.hidden


# Shapes of the models the shipped configs name (from their config.json files).
MODEL_SHAPES: dict[str, ModelShape] = {
    "llama-3-8b": ModelShape(4096, 32, 14336, 32, 8, 128256),
    "llama-3.2-1b": ModelShape(2048, 16, 8192, 32, 8, 128256, tied_embeddings=True),
    "llama-2-7b": ModelShape(4096, 32, 11008, 32, 32, 32000),
    "smollm2-135m": ModelShape(576, 30, 1536, 9, 3, 49152, tied_embeddings=True),
}


_REQUIRED_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "vocab_size",
)


def shape_from_config(config: Any, where: str = "the model config") -> ModelShape:
    """A :class:`ModelShape` from a transformers config (object or ``config.json`` dict).

    Every size must be a positive integer; ``where`` names the source in the error."""
    if isinstance(config, (list, str, int, float)) or config is None:
        raise TokenWeightError(
            f"{where} holds a JSON {type(config).__name__}, not an object of model settings"
        )
    get: Callable[..., Any] = (
        config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    )
    missing = [k for k in _REQUIRED_SIZES if get(k) is None]
    if missing:
        raise TokenWeightError(
            f"{where} lacks {', '.join(missing)} (a Llama-style decoder is expected)"
        )
    sizes = {k: get(k) for k in (*_REQUIRED_SIZES, "num_key_value_heads", "head_dim")}
    for key, value in sizes.items():
        if value is None and key in ("num_key_value_heads", "head_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TokenWeightError(f"{where}: {key} must be a positive integer, got {value!r}")
    heads = sizes["num_attention_heads"]
    return ModelShape(
        hidden=sizes["hidden_size"],
        layers=sizes["num_hidden_layers"],
        intermediate=sizes["intermediate_size"],
        heads=heads,
        kv_heads=sizes["num_key_value_heads"] or heads,
        vocab=sizes["vocab_size"],
        tied_embeddings=bool(get("tie_word_embeddings", False)),
        head_dim=sizes["head_dim"],
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU at the peak of a training step, by part (``total`` is their sum)."""

    parameters: int
    gradients: int
    optimizer: int
    checkpoints: int
    working: int
    total: int
    tokens_per_gpu: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def estimate_memory(
    shape: ModelShape,
    seq_len: int,
    *,
    gpus: int = 1,
    zero_stage: int = 0,
    sequence_parallel: int = 1,
    micro_batch: int = 1,
    precision: str = "mixed",
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    chunk_bytes: int = CHUNK_BYTES_CUDA,
    bytes_per_value: int = 2,
    fsdp: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of one GPU in a training step (module docstring).

    Args:
        shape: the model's sizes (:data:`MODEL_SHAPES` or :func:`shape_from_config`).
        seq_len: tokens per sequence.
        gpus: processes (one per GPU) that share the ZeRO partitions.
        zero_stage: 0 (DDP / one GPU), 1, 2 or 3.
        sequence_parallel: ranks that split each sequence (Ulysses); divides ``seq_len``.
        micro_batch: sequences per GPU per forward.
        precision: ``mixed`` (DeepSpeed bf16, fp32 AdamW state) or ``pure`` (all bf16).
        offload_optimizer / offload_parameters: DeepSpeed CPU offload; with ``fsdp``,
            ``offload_parameters`` is FSDP2's CPU offload (weights, gradients, optimizer).
        chunk_bytes: the loss head's per-chunk logit budget.
        bytes_per_value: activation bytes (2 for bf16).
        fsdp: FSDP2 full sharding over ``gpus`` instead of ZeRO (``zero_stage`` 0).
    """
    _check_layout(
        seq_len,
        gpus,
        zero_stage,
        sequence_parallel,
        micro_batch,
        precision,
        offload_optimizer,
        offload_parameters,
    )
    if fsdp:
        _check_fsdp(zero_stage, precision, offload_optimizer)
        parameters, gradients, optimizer = _fsdp_state_bytes(shape, gpus, offload_parameters)
    else:
        parameters, gradients, optimizer = _state_bytes(
            shape, gpus, zero_stage, precision, offload_optimizer, offload_parameters
        )
    s = seq_len * micro_batch // sequence_parallel
    h, kv, i = shape.hidden, shape.kv_width, shape.intermediate
    checkpoints = shape.layers * s * h * bytes_per_value
    layer = s * (4 * h + 2 * kv + 3 * i) * bytes_per_value
    head = 2 * s * h * bytes_per_value + chunk_bytes
    working = max(layer, head)
    total = parameters + gradients + optimizer + checkpoints + working
    return MemoryEstimate(parameters, gradients, optimizer, checkpoints, working, total, s)


def _check_layout(
    seq_len: int,
    gpus: int,
    zero_stage: int,
    sequence_parallel: int,
    micro_batch: int,
    precision: str,
    offload_optimizer: bool,
    offload_parameters: bool,
) -> None:
    """Refuse a layout :func:`estimate_memory` does not describe."""
    if precision not in PRECISIONS:
        raise TokenWeightError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if zero_stage not in (0, 1, 2, 3):
        raise TokenWeightError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if gpus < 1 or sequence_parallel < 1 or micro_batch < 1 or seq_len < 2:
        raise TokenWeightError("gpus, sequence_parallel and micro_batch must be >= 1, seq_len >= 2")
    if gpus % sequence_parallel:
        raise TokenWeightError(
            f"sequence_parallel {sequence_parallel} must divide the number of GPUs {gpus}"
        )
    if seq_len % sequence_parallel:
        raise TokenWeightError(
            f"sequence_parallel {sequence_parallel} must divide seq_len {seq_len}"
        )
    if precision == "pure" and (zero_stage or gpus > 1 or offload_optimizer or offload_parameters):
        raise TokenWeightError("precision 'pure' describes one process without DeepSpeed")


def _state_bytes(
    shape: ModelShape,
    gpus: int,
    zero_stage: int,
    precision: str,
    offload_optimizer: bool,
    offload_parameters: bool,
) -> tuple[int, int, int]:
    """Bytes per GPU of ``(parameters, gradients, optimizer state)``."""
    p = shape.parameters()
    embedding = shape.vocab * shape.hidden
    if precision == "pure":
        parameters, optimizer = 2 * p, 4 * p
        head_grads = embedding * (1 if shape.tied_embeddings else 2)
        gradients = 2 * (head_grads + shape.hidden)  # the layers' come as checkpoints go
    else:
        share = {0: (1, 1, 1), 1: (1, 1, gpus), 2: (1, gpus, gpus), 3: (gpus, gpus, gpus)}
        w, g, o = share[zero_stage]
        parameters = 2 * p // w
        if zero_stage == 3:
            parameters += 2 * 2 * shape.layer_parameters()  # one layer gathered, one prefetched
            if offload_parameters:
                parameters = 2 * 2 * shape.layer_parameters()
        gradients = 2 * p // g
        optimizer = 0 if offload_optimizer else 12 * p // o
    return parameters, gradients, optimizer


def _check_fsdp(zero_stage: int, precision: str, offload_optimizer: bool) -> None:
    if zero_stage:
        raise TokenWeightError("fsdp and zero_stage: choose one (FSDP2 shards like ZeRO-3)")
    if precision != "mixed":
        raise TokenWeightError("fsdp: only precision 'mixed' (fp32 shards, bf16 compute)")
    if offload_optimizer:
        raise TokenWeightError(
            "fsdp: FSDP2 offloads weights, gradients and optimizer state together; use "
            "offload_parameters (--offload-params)"
        )


def _fsdp_state_bytes(shape: ModelShape, gpus: int, offload: bool) -> tuple[int, int, int]:
    """Bytes per GPU of ``(parameters, gradients, optimizer state)`` under FSDP2 full
    sharding (module docstring)."""
    p, layer = shape.parameters(), shape.layer_parameters()
    gathered = 2 * 2 * layer  # one layer's bf16 weights, and the next one prefetched
    unsharded_grad = 2 * layer  # one layer's bf16 gradient before its reduce-scatter
    if offload:
        return gathered, unsharded_grad, 0
    return 4 * p // gpus + gathered, 4 * p // gpus + unsharded_grad, 8 * p // gpus


def format_estimate(estimate: MemoryEstimate) -> str:
    """A small table of the estimate in GiB."""
    rows = [
        ("parameters", estimate.parameters),
        ("gradients", estimate.gradients),
        ("optimizer state", estimate.optimizer),
        ("activation checkpoints", estimate.checkpoints),
        ("recomputed layer / loss head", estimate.working),
        ("total per GPU", estimate.total),
    ]
    lines = [f"tokens per GPU: {estimate.tokens_per_gpu}"]
    lines += [f"{name:<30} {value / GIB:8.2f} GiB" for name, value in rows]
    return "\n".join(lines)
