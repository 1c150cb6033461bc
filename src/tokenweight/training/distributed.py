"""Process-group set-up for multi-process training (DDP, DeepSpeed, FSDP2) on any device.

:func:`start_process_group` runs in :func:`tokenweight.training.run.train` right after the
``TrainingArguments`` exist and before any model is loaded: DeepSpeed ZeRO-3 partitions
weights inside ``from_pretrained`` and reads the world size then, so the process group
must already be up (otherwise every process believes it is alone and DeepSpeed's batch
check fails with ``train_batch_size ... != ... * 1``).

On a machine without GPUs (CPU processes talking over gloo):

* DeepSpeed uses its CPU accelerator and the gloo process group (its comm layer is
  started explicitly: accelerate's CPU route does not), and its optional shared-memory collective kernel
  (a C++ extension compiled on first use, minutes) is switched off: plain gloo
  collectives give the same results.
* FSDP2 runs through accelerate's FSDP plugin; accelerate only enables FSDP for GPU-type
  process groups, so on CPU the state is marked as one (:func:`fsdp_on_cpu`), which keeps
  the gloo process group and shards the parameters as DTensors on the CPU.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["fsdp_on_cpu", "is_distributed_launch", "start_process_group"]

logger = logging.getLogger(__name__)

_SHM_OP = "deepspeed_shm_comm"


def is_distributed_launch() -> bool:
    """True inside a ``torchrun`` / ``accelerate launch`` process of a multi-process job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _accelerator_present() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _deepspeed_on_cpu() -> None:
    """DeepSpeed's CPU accelerator with plain gloo collectives (no C++ build at start)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed.ops
    except ImportError:
        return  # the Trainer reports the missing package itself
    compatible = deepspeed.ops.__compatible_ops__
    if isinstance(compatible, dict):
        compatible[_SHM_OP] = False


def start_process_group(args: Any) -> None:
    """Bring up the process group ``args`` (``TrainingArguments``) describes, now.

    Reading ``args.device`` makes accelerate initialize ``torch.distributed`` (gloo on the
    CPU, NCCL on GPUs) under a distributed launcher; one process does nothing.
    """
    deepspeed_on_cpu = bool(getattr(args, "deepspeed", None)) and not _accelerator_present()
    if deepspeed_on_cpu:
        _deepspeed_on_cpu()
    _ = args.device
    if deepspeed_on_cpu and is_distributed_launch():
        # accelerate's CPU route starts torch.distributed but not DeepSpeed's comm layer,
        # whose world size ZeRO-3's load-time partitioning and batch check read
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def fsdp_on_cpu(args: Any) -> bool:
    """Let accelerate run FSDP (version 2) over a CPU gloo process group.

    accelerate turns the FSDP plugin on only when its process group is of a GPU type;
    on a CPU-only multi-process launch it would silently fall back to DDP. The shared
    state is marked as a multi-device group before the Trainer builds its Accelerator
    (the process group itself stays gloo on the CPU). Returns True when it did so.
    """
    if not getattr(args, "fsdp", None) or _accelerator_present() or not is_distributed_launch():
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
        logger.info("FSDP on CPU processes: sharding over the gloo process group")
        return True
    return False
