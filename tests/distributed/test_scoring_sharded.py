"""Short-context scoring under a sharded model (FSDP2, two gloo processes on the CPU):
processes whose batches need different numbers of windows still make the same model
calls, and losses and gradients equal the unsharded model's (``dist_score_sharded.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.distributed import subprocess_env


def test_processes_with_different_windows_score_in_step_under_fsdp2():
    driver = Path(__file__).parents[1] / "helpers" / "dist_score_sharded.py"
    command = [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(driver),
    ]
    proc = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "sharded scoring ok" in proc.stdout
