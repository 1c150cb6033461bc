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
* FSDP is not handed to accelerate (which would silently run DDP): tokenweight shards the
  model with FSDP2 itself (:func:`fsdp_on_cpu`, :mod:`tokenweight.training.fsdp2`).

DeepSpeed always runs in a process group, also in one process. A launcher (``torchrun``,
``deepspeed``, ``accelerate launch``) describes it in the environment; started without one,
DeepSpeed would look for MPI instead (and fail without ``mpi4py``).
:func:`single_process_environment` describes a group of one process first.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "LAUNCH_VARIABLES",
    "check_sequence_parallel",
    "deepspeed_settings",
    "end_process_group",
    "fsdp_on_cpu",
    "is_distributed_launch",
    "single_process_environment",
    "start_process_group",
]

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What a launcher sets for every process (DeepSpeed needs all of them)."""

_SHM_OP = "deepspeed_shm_comm"
GATHER_ON_SAVE = "stage3_gather_16bit_weights_on_model_save"
_END_REGISTERED = False

logger = logging.getLogger(__name__)


def end_process_group() -> None:
    """All processes meet, then the process group closes (registered to run at exit:
    a DeepSpeed sequence-parallel run could otherwise abort while shutting down)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def single_process_environment() -> dict[str, str]:
    """Describe a process group of one in the environment, as a launcher would, when no
    launcher did (none of :data:`LAUNCH_VARIABLES` set): rank 0 of 1, on this machine, on a
    free port. Returns the variables set (none under a launcher). Partial launcher
    settings are left alone: DeepSpeed then says which is missing."""
    if any(v in os.environ for v in LAUNCH_VARIABLES):
        return {}
    values = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    os.environ.update(values)
    return values


def deepspeed_settings(path: str) -> str | dict[str, Any]:
    """The DeepSpeed config for ``TrainingArguments.deepspeed``: the file ``path`` as it
    is, or, for ZeRO-3 without ``stage3_gather_16bit_weights_on_model_save: true``, its
    settings with that flag set (the weights are then gathered whole when a model is
    saved; without it the Trainer writes only DeepSpeed's partitioned checkpoint and
    ``output_dir`` holds no loadable model)."""
    from pathlib import Path

    from tokenweight.infra.files import read_json

    if not Path(path).is_file():
        return path  # refused with its name by the config checks
    data = read_json(path, "fix the JSON of train.deepspeed")
    zero = data.get("zero_optimization") if isinstance(data, dict) else None
    if not isinstance(zero, dict) or str(zero.get("stage")) != "3":
        return path
    if zero.get(GATHER_ON_SAVE) is True:
        return path
    if os.environ.get("RANK", "0") == "0":
        logger.warning(
            "train.deepspeed: %s is ZeRO-3 without %s: true; setting it, so that checkpoints "
            "and output_dir hold whole model weights (model.safetensors)",
            path,
            GATHER_ON_SAVE,
        )
    return {**data, "zero_optimization": {**zero, GATHER_ON_SAVE: True}}


def start_process_group(args: Any) -> None:
    """Bring up the process group ``args`` (``TrainingArguments``) describes, now.

    Reading ``args.device`` makes accelerate initialize ``torch.distributed`` (gloo on the
    CPU, NCCL on GPUs) under a distributed launcher; one process does nothing.
    """
    deepspeed_on_cpu = bool(getattr(args, "deepspeed", None)) and not _accelerator_present()
    if deepspeed_on_cpu:
        _deepspeed_on_cpu()
    _ = args.device
    if is_distributed_launch() and not _END_REGISTERED:
        atexit.register(end_process_group)
        globals()["_END_REGISTERED"] = True
    if deepspeed_on_cpu:
        # accelerate's CPU route starts torch.distributed (under a launcher) but not
        # DeepSpeed's comm layer, whose world size ZeRO-3's load-time partitioning and
        # batch check read; alone, the group of one described by the environment
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def check_sequence_parallel(degree: int) -> None:
    """``train.sequence_parallel`` must divide the number of processes of the launch (each
    group of ``degree`` processes shares every sequence)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if degree > 1 and world % degree:
        raise TokenWeightError(
            f"train.sequence_parallel: {degree} must divide the number of processes of this "
            f"launch ({world}); start {degree} (or a multiple of {degree}) processes, e.g. "
            f"`torchrun --nproc_per_node {degree} -m tokenweight.cli train ...`, or lower "
            "train.sequence_parallel"
        )


def fsdp_on_cpu(args: Any) -> bool:
    """Whether ``args`` (``TrainingArguments``) ask for FSDP in a multi-process launch
    without GPUs. accelerate turns its FSDP plugin on only for GPU-type process groups and
    would train such a run with plain DDP; tokenweight then shards the model itself
    (:func:`tokenweight.training.fsdp2.shard_model`)."""
    return (
        bool(getattr(args, "fsdp", None)) and is_distributed_launch() and not _accelerator_present()
    )
