"""Helpers of the multi-process tests (``tests/distributed/``): the tiny model, data and
training config they compare on, the environment of a launched child, one ``torchrun`` launch training several configs (``dist_train_many.py``),
the shipped DeepSpeed files with a CPU run's changes, and comparisons with one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.train_config import tiny_train_config

REPO_DIR = Path(__file__).resolve().parents[2]
CONFIGS = REPO_DIR / "src" / "tokenweight" / "configs"
# float32 on the CPU; the engines sum the same gradients in another order (seen: up to
# 2e-6 on the embedding after 3 steps at learning rate 0.5)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
PARAM_TOL = dict(rtol=1e-5, atol=1e-5)
# what the comparisons train on: short sequences, short-context windows, a few steps
SEQ, WINDOW, STRIDE, STEPS = 48, 16, 8, 3


def comparison_data(
    root: Path, model_seed: int, *, scored: bool = True
) -> tuple[Path, Path, Path | None]:
    """A tiny model (seeded ``model_seed``) and data prepared for it under ``root``: short
    documents with kept tails, so many padded rows of different valid lengths; with
    ``scored``, also that data scored by the model itself (for ``precomputed``).
    Returns the model, prepared and scored folders (``None`` without ``scored``)."""
    from helpers.train_support import model_and_data

    score = {"window": WINDOW, "stride": STRIDE} if scored else None
    corpus = {"docs": 8, "words": 70, "seed": 3}
    out = model_and_data(root, SEQ, model_seed=model_seed, keep_tail=True, score=score, **corpus)
    return out["model"], out["prepared"], out.get("scored")


def comparison_config(model_dir: Path, data: Path, out: Path, accumulation: int, **options) -> dict:
    """The training config of a comparison (:func:`tiny_train_config` with ``exact``):
    ``STEPS`` steps of ``accumulation`` sequences per process, the self scorer over
    ``WINDOW``/``STRIDE``; ``options`` as for :func:`tiny_train_config`."""
    return tiny_train_config(
        model_dir,
        data,
        out,
        window=WINDOW,
        stride=STRIDE,
        exact=True,
        max_steps=STEPS,
        gradient_accumulation_steps=accumulation,
        **options,
    )


def subprocess_env() -> dict[str, str]:
    """The environment of a launched child: this checkout's ``src`` first on the path,
    one thread per process, no GPU."""
    import os

    env = dict(os.environ)
    src = str(REPO_DIR / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    return env


def torchrun_trainings(
    config_files: list[Path | str], timeout: int = 600, processes: int = 2
) -> None:
    """Train every config in one ``torchrun`` launch of ``processes`` processes
    (``dist_train_many.py``; ``"resume:PATH"`` resumes); fails the test, with the end of
    the output, when the launch fails."""
    import subprocess
    import sys

    driver = Path(__file__).with_name("dist_train_many.py")
    command = [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)),
        str(driver),
        *map(str, config_files),
    ]
    proc = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def logged_losses(out: Path) -> list[float]:
    """The per-step training losses in ``out/train_log.jsonl``."""
    import json

    lines = (out / "train_log.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    return [r["loss"] for r in rows if "loss" in r and "learning_rate" in r]


def assert_same_parameters(
    multi: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    tol: dict[str, float],
    name: str,
) -> float:
    """Every parameter of ``multi`` equals the one-process ``reference`` within ``tol``,
    and training moved the reference away from ``start`` (equality is not the untouched
    start); returns the largest difference."""
    assert set(multi) == set(reference), name
    moved, diff = 0.0, 0.0
    for key, value in reference.items():
        torch.testing.assert_close(multi[key], value, **tol, msg=f"{name} {key}")
        moved = max(moved, float((value - start[key]).abs().max()))
        diff = max(diff, float((multi[key] - value).abs().max()))
    assert moved > 1e-3, name
    return diff


def assert_runs_match_one_process(
    outs: dict[str, Path],
    single: dict[str, tuple[dict[str, torch.Tensor], list[float]]],
    start: dict[str, torch.Tensor],
    steps: int,
    loss_tol: dict[str, float],
    param_tol: dict[str, float],
    tag: str,
) -> None:
    """For every run: the logged step losses and the final parameters of the multi-process
    run in ``outs[name]`` equal the one-process ``single[name] = (parameters, losses)``."""
    from safetensors.torch import load_file

    for name, out in outs.items():
        reference, reference_losses = single[name]
        losses = logged_losses(out)
        assert len(losses) == steps == len(reference_losses), name
        torch.testing.assert_close(
            torch.tensor(losses), torch.tensor(reference_losses), **loss_tol, msg=name
        )
        multi = load_file(str(out / "model.safetensors"))
        diff = assert_same_parameters(multi, reference, start, param_tol, name)
        print(f"{tag} {name}: max parameter difference {diff:.2e}")


def deepspeed_file(shipped: str, folder: Path) -> str:
    """The shipped DeepSpeed file with the CPU test's changes: the torch SGD optimizer
    (DeepSpeed calls it untested; with CPU offload, the file's own DeepSpeed AdamW, a C++
    extension built at first use, gives way to it) and, for ZeRO-3, every parameter
    partitioned (the default keeps a tiny model's small tensors whole) and, as in a file a
    user writes, no ``stage3_gather_16bit_weights_on_model_save`` (the final model must
    still be saved whole)."""
    data = json.loads((CONFIGS / "deepspeed" / shipped).read_text())
    data["zero_allow_untested_optimizer"] = True
    if data.pop("optimizer", None) is not None:
        data["zero_force_ds_cpu_optimizer"] = False
    if data["zero_optimization"]["stage"] == 3:
        data["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        del data["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    path = folder / shipped
    path.write_text(json.dumps(data))
    return str(path)
