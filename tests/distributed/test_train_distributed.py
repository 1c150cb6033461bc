"""Two processes (gloo, CPU) end with the parameters of one process with doubled
gradient accumulation: the loss is the mean over every valid target of the optimizer step
across processes, with padded rows of different lengths in the mix.

The multi-process run goes through the real command line under ``torchrun``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers.distributed import (
    STEPS,
    assert_same_parameters,
    comparison_config,
    comparison_data,
    subprocess_env,
)
from tokenweight.training.config import load_config
from tokenweight.training.run import train


def _config(
    model_dir: Path, data: Path, out: Path, accumulation: int, save_steps: int = 100
) -> dict:
    return comparison_config(model_dir, data, out, accumulation, save_steps=save_steps)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-dist")
    model_dir, data, _ = comparison_data(root, model_seed=4, scored=False)
    return root, model_dir, data


@pytest.fixture(scope="module")
def single_process_result(assets, tmp_path_factory):
    _, model_dir, data = assets
    out = tmp_path_factory.mktemp("single") / "out"
    train(load_config(base=_config(model_dir, data, out, accumulation=2)))
    return load_file(str(out / "model.safetensors"))


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # accelerate's DDP launcher; the Trainer runs on CPU (use_cpu) with gloo
    "accelerate": [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_equal_one_process_with_double_accumulation(
    assets, single_process_result, tmp_path, launcher
):
    import yaml

    _, model_dir, data = assets
    out = tmp_path / "multi"
    config_file = tmp_path / "multi.yaml"
    # a checkpoint every step: its completeness marker waits for both processes
    config_file.write_text(
        yaml.safe_dump(_config(model_dir, data, out, accumulation=1, save_steps=1))
    )
    command = [
        sys.executable,
        *LAUNCHERS[launcher],
        "-m",
        "tokenweight.cli",
        "train",
        str(config_file),
    ]
    proc = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done: 3 steps") == 1  # reported once, by the main process

    from tokenweight.training.callbacks import CHECKPOINT_MARKER

    checkpoints = sorted(out.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    assert all((c / CHECKPOINT_MARKER).is_file() for c in checkpoints)
    multi = load_file(str(out / "model.safetensors"))
    start = load_file(str(model_dir / "model.safetensors"))
    tol = dict(rtol=1e-5, atol=1e-6)
    assert_same_parameters(multi, single_process_result, start, tol, launcher)
