"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for multi-process runs without GPUs.

On GPUs, ``train.fsdp`` goes to accelerate's FSDP plugin through the Trainer. accelerate
turns that plugin on only for GPU-type process groups: CPU processes talking over gloo
would silently train with plain DDP. For those, tokenweight shards the model itself, the
way torchtune and torchtitan do: every decoder layer, then the root module, under
``fully_shard`` over a 1-D device mesh of all processes (:func:`shard_model`).

The FSDP settings are read as transformers reads them for a GPU run
(``TrainingArguments.fsdp_plugin_args``), and each is either applied or refused
(:func:`fsdp2_settings`):

* ``version``: 2 only; FSDP1 is refused.
* ``reshard_after_forward`` (``shard_grad_op`` in the legacy option text means
  ``false``): passed to ``fully_shard`` of each layer (the root keeps its parameters
  gathered from forward to backward, FSDP2's default: the loss calls the output head
  outside the root's forward).
* ``auto_wrap_policy``: ``TRANSFORMER_BASED_WRAP`` shards each module whose class is in
  ``transformer_layer_cls_to_wrap`` (default: the model's ``_no_split_modules``, the
  decoder layer) on its own; ``NO_WRAP`` shards the root only; ``SIZE_BASED_WRAP`` is
  refused.
* ``activation_checkpointing``: the model's own gradient checkpointing (non-reentrant),
  turned on before sharding.
* ``state_dict_type``: ``FULL_STATE_DICT`` (the default) only. Checkpoints and the final
  model hold whole tensors, gathered from every process and written by process 0:
  ``model.safetensors`` and ``optimizer.pt`` in the layout one process would write, so a
  folder loads anywhere; resuming reads them in every process and shards them again.
  ``SHARDED_STATE_DICT`` is refused.
* ``cpu_offload`` and ``cpu_ram_efficient_loading``: no effect, the parameters already
  live in CPU memory (each process loads the whole model, then keeps only its shard).
* mixed precision: ``train.bf16`` autocasts as it does for DDP (no ``MixedPrecisionPolicy``).

The Trainer must not wrap the sharded model again (accelerate would put DDP around it):
the model is marked as prepared (``_is_accelerate_prepared``), which accelerate's
``prepare_model`` honours, and
:class:`~tokenweight.training.trainer.TokenWeightTrainer` saves and loads through the
full-state-dict functions here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "Fsdp2Settings",
    "ShardReport",
    "fsdp2_settings",
    "full_model_state",
    "full_optimizer_state",
    "gather_reports",
    "is_fully_sharded",
    "load_full_model_state",
    "load_full_optimizer_state",
    "no_rank0_loading",
    "read_saved_model",
    "shard_model",
    "shard_report",
]

logger = logging.getLogger(__name__)

WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "NO_WRAP")


@dataclass(frozen=True)
class Fsdp2Settings:
    """How :func:`shard_model` shards a model (see the module docstring)."""

    reshard_after_forward: bool = True
    wrap_layers: bool = True
    layer_classes: tuple[str, ...] | None = None  # None: the model's ``_no_split_modules``
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class ShardReport:
    """What one process holds of the sharded model: ``held`` parameter values of ``total``
    (``sharded`` tensors are DTensors); ``largest_share`` is the largest fraction of any
    one sharded tensor held here."""

    sharded: int
    held: int
    total: int
    largest_share: float


def fsdp2_settings(plugin_args: dict[str, Any]) -> Fsdp2Settings:
    """Settings from transformers' normalized FSDP arguments
    (``TrainingArguments.fsdp_plugin_args``); refuses what this route cannot do."""
    version = int(plugin_args.get("fsdp_version", 2))
    if version != 2:
        raise TokenWeightError(
            f"train.fsdp_config: FSDP version {version} is not supported on CPU processes; "
            "set fsdp_config version: 2 (FSDP2, e.g. configs/fsdp/llama.json)"
        )
    state_dict = str(plugin_args.get("state_dict_type", "FULL_STATE_DICT")).upper()
    if state_dict.rsplit(".", 1)[-1] != "FULL_STATE_DICT":
        raise TokenWeightError(
            f"train.fsdp_config: state_dict_type {state_dict} is not supported on CPU "
            "processes; use FULL_STATE_DICT (whole-model checkpoints, written by process 0)"
        )
    policy = str(plugin_args.get("auto_wrap_policy") or "TRANSFORMER_BASED_WRAP").upper()
    if policy not in WRAP_POLICIES:
        raise TokenWeightError(
            f"train.fsdp_config: auto_wrap_policy {policy} is not supported on CPU processes; "
            f"use one of {', '.join(WRAP_POLICIES)}"
        )
    names = plugin_args.get("transformer_cls_names_to_wrap")
    classes = tuple(n.strip() for n in names.split(",") if n.strip()) if names else None
    reshard = plugin_args.get("reshard_after_forward", True)
    if isinstance(reshard, str):  # FSDP1 strategy names
        reshard = reshard.upper() not in ("SHARD_GRAD_OP", "NO_SHARD", "FALSE")
    return Fsdp2Settings(
        reshard_after_forward=bool(reshard),
        wrap_layers=policy == "TRANSFORMER_BASED_WRAP",
        layer_classes=classes,
        activation_checkpointing=bool(plugin_args.get("activation_checkpointing", False)),
    )


def is_fully_sharded(model: Any) -> bool:
    """Whether ``model`` is an FSDP2 module (``fully_shard`` applied to it)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _layers(model: torch.nn.Module, classes: tuple[str, ...] | None) -> list[torch.nn.Module]:
    wanted = set(classes or getattr(model, "_no_split_modules", None) or ())
    if not wanted:
        raise TokenWeightError(
            "train.fsdp_config: the model names no decoder-layer class to shard "
            "(_no_split_modules); set transformer_layer_cls_to_wrap"
        )
    found = [m for m in model.modules() if type(m).__name__ in wanted]
    if not found:
        raise TokenWeightError(
            f"train.fsdp_config: transformer_layer_cls_to_wrap {sorted(wanted)} matches no "
            f"module of {type(model).__name__}"
        )
    return found


def shard_model(model: torch.nn.Module, settings: Fsdp2Settings) -> ShardReport:
    """Shard ``model`` in place over all processes: each wrapped layer, then the root.

    Needs the process group. Returns what this process holds (:func:`shard_report`).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if settings.activation_checkpointing:
        model.gradient_checkpointing_enable(  # type: ignore[operator]  # a transformers model
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False  # type: ignore[union-attr]  # a transformers model
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    reshard = settings.reshard_after_forward
    if settings.wrap_layers:
        for layer in _layers(model, settings.layer_classes):
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    # the root keeps its parameters (embeddings, final norm, output head) gathered from its
    # forward to its backward (FSDP2's default for the root): the loss calls the output
    # head itself, outside the root's forward
    fully_shard(model, mesh=mesh)
    model._is_accelerate_prepared = True  # type: ignore[assignment]  # accelerate: do not wrap
    report = shard_report(model)
    logger.info(
        "FSDP2 over %d processes: this process holds %d of %d parameter values",
        dist.get_world_size(),
        report.held,
        report.total,
    )
    return report


def shard_report(model: torch.nn.Module) -> ShardReport:
    """What this process holds of ``model``'s parameters (no communication)."""
    sharded = held = total = 0
    largest = 0.0
    for p in model.parameters():
        total += p.numel()
        if hasattr(p, "to_local"):
            local = p.to_local().numel()
            sharded += 1
            largest = max(largest, local / max(p.numel(), 1))
            held += local
        else:
            held += p.numel()
    return ShardReport(sharded, held, total, largest)


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_model_state(model: Any) -> dict[str, Any]:
    """The whole model's state dict on the CPU of process 0 (other processes get an empty
    one); collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_model_state(model: Any, state: dict[str, Any]) -> None:
    """Load a whole-model state dict (as :func:`full_model_state` returns, or a saved
    ``model.safetensors``) into the sharded ``model``; every process calls it. Tied
    weights absent from ``state`` (the output head of a tied model) come from their twin."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    expected = set(model.state_dict())
    missing = expected - set(state)
    tied = _tied_keys(model)
    if missing - tied:
        raise TokenWeightError(
            f"the checkpoint lacks {len(missing - tied)} model tensors, e.g. "
            f"{sorted(missing - tied)[0]}; it does not belong to this model"
        )
    set_model_state_dict(model, state, options=_options(strict=False))


def _tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of parameters shared with another key (saved once)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied


def read_saved_model(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a saved model folder (``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` names), on the CPU."""
    from pathlib import Path

    from safetensors.torch import load_file

    from tokenweight.infra.files import read_json

    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise TokenWeightError(f"{folder} holds no model.safetensors to resume from")
    names = read_json(index, "the checkpoint is incomplete").get("weight_map", {})
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(names.values())):
        state.update(load_file(str(folder / name)))
    return state


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state (parameters named by their full names) on the CPU of
    process 0 (empty elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, _torch_optimizer(optimizer), options=_options(cpu_offload=True)
    )


def load_full_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load :func:`full_optimizer_state`'s result into the optimizer of the sharded model
    (every process calls it)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if not state.get("state"):
        return  # a stateless optimizer (plain SGD): its settings come from the config
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), state, options=_options())


def _torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def gather_reports(report: ShardReport) -> list[ShardReport]:
    """Every process's :class:`ShardReport`, in rank order (collective)."""
    import torch.distributed as dist

    mine = torch.tensor(
        [report.sharded, report.held, report.total, report.largest_share], dtype=torch.float64
    )
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return [ShardReport(int(p[0]), int(p[1]), int(p[2]), float(p[3])) for p in parts]


def no_rank0_loading() -> None:
    """Every process loads the whole model before sharding: transformers must not load
    the weights in process 0 only (what ``cpu_ram_efficient_loading`` asks of a GPU run,
    where accelerate then broadcasts them)."""
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
