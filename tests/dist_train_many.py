"""Run several ``tokenweight train`` commands one after another in one distributed launch.

Usage (what ``test_train_engines.py`` does)::

    torchrun --nproc_per_node 2 tests/dist_train_many.py CONFIG_A.yaml CONFIG_B.yaml ...

Each config is trained by the real command line (``tokenweight.cli.main(["train", ...])``)
in every process; starting the processes once keeps the test fast. The process group is
closed after a barrier at the end.
"""

from __future__ import annotations

import sys


def main(configs: list[str]) -> int:
    import torch.distributed as dist

    from tokenweight.cli import main as cli_main

    for config in configs:
        code = cli_main(["train", config])
        if code != 0:
            return code
        _reset_accelerate_state()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _reset_accelerate_state() -> None:
    """A new Trainer in the same process builds its Accelerator (and plugins) afresh."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
