"""Run several ``tokenweight train`` commands one after another in one distributed launch.

Usage (what ``helpers.distributed.torchrun_trainings`` does)::

    torchrun --nproc_per_node 2 tests/helpers/dist_train_many.py CONFIG_A.yaml CONFIG_B.yaml ...

Each config is trained by the real command line (``tokenweight.cli.main(["train", ...])``)
in every process; starting the processes once keeps the test fast. ``resume:CONFIG.yaml``
trains with ``--resume``. The process group is
closed at exit (``tokenweight.training.distributed.end_process_group``).
"""

from __future__ import annotations

import os
import sys

RESUME = "resume:"


def main(configs: list[str]) -> int:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from tokenweight.cli import main as cli_main

    # sequence parallelism replaces the attention function in this registry (per process)
    attention = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    for config in configs:
        resume = config.startswith(RESUME)
        code = cli_main(["train", config.removeprefix(RESUME), *(["--resume"] if resume else [])])
        if code != 0:
            return code
        _reset_accelerate_state()
        ALL_ATTENTION_FUNCTIONS._local_mapping.clear()
        ALL_ATTENTION_FUNCTIONS._local_mapping.update(attention)
    return 0


def _reset_accelerate_state() -> None:
    """A new Trainer in the same process builds its Accelerator (plugins, SP groups) afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    try:  # DeepSpeed keeps its sequence-parallel groups in module globals
        from deepspeed.runtime.sequence_parallel import parallel_state_sp
    except ImportError:
        return
    parallel_state_sp._SEQUENCE_PARALLEL_GROUP = None
    parallel_state_sp._SEQUENCE_DATA_PARALLEL_GROUP = None


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # every run is saved: meet, close the group and leave without interpreter teardown, where
    # a DeepSpeed or gloo helper thread can abort a rank ("terminate called without an
    # active exception") after the work is done
    from tokenweight.training.distributed import end_process_group

    end_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
