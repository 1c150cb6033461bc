"""Every engine that runs on CPU processes, with 2 gloo processes, ends where one process
ends: DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2 (sharded by tokenweight itself on CPU
processes), each for the uniform loss, Dense with the self scorer, Dense with precomputed
scores and Sparse with the self scorer; each leaves a loadable model in its output folder.

One process with gradient accumulation 2 is the reference for 2 processes with
accumulation 1 (the same 2 sequences per optimizer step, padded rows of different
lengths among them). Plain SGD without clipping, so any error in the gradient scale
shows in the parameters. Compared: the loss of every step (the training log) and every
final parameter. The engines are the shipped config files; the tests change only what a
CPU run needs (see ``helpers.distributed.deepspeed_file``). Each engine is one ``torchrun`` launch that
trains the four schemes one after another through the real command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers.distributed import (
    CONFIGS,
    LOSS_TOL,
    PARAM_TOL,
    SEQ,
    STEPS,
    assert_runs_match_one_process,
    assert_same_parameters,
    comparison_config,
    comparison_data,
    deepspeed_file,
    logged_losses,
    torchrun_trainings,
)
from helpers.fixtures import make_tokenizer, save_tiny_model
from tokenweight.training.config import load_config
from tokenweight.training.run import train

SCHEMES = {
    "uniform": ("uniform", "none"),
    "dense_self": ("dense:0.75", "self"),
    "dense_precomputed": ("dense:0.75", "precomputed"),
    "sparse_self": ("sparse:0.25", "self"),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return root, *comparison_data(root, model_seed=4)


# the frozen scorers and an optimizer with state, clipping and a resume (FSDP2 only)
FSDP2_RUNS = {
    "dense_model": ("dense:0.75", "model", {}),
    "rho1_reference": ("rho1:0.5", "reference", {}),
    "adamw_clipped": (
        "dense:0.75",
        "self",
        {"learning_rate": 0.05, "max_grad_norm": 1.0, "save_steps": 2, "optim": "adamw_torch"},
    ),
}


def _config(assets, name: str, out: Path, accumulation: int, engine: dict) -> dict:
    _, model_dir, prepared, scored = assets
    scheme, kind, changes = (*SCHEMES[name], {}) if name in SCHEMES else FSDP2_RUNS[name]
    changes = dict(changes)
    optim = changes.pop("optim", "sgd")
    scorer = {"kind": "self" if kind == "none" else kind}
    if kind == "reference":  # another model: the start model's own scores would all tie
        scorer["model"] = str(model_dir.parent / "reference")
    data = scored if kind == "precomputed" else prepared
    options = {**changes, **engine}
    return comparison_config(
        model_dir, data, out, accumulation, scheme=scheme, scorer=scorer, optim=optim, **options
    )


def _engine(name: str, folder: Path) -> dict:
    if name == "ddp":
        return {}
    if name == "fsdp2":  # the shipped FSDP2 settings a GPU run uses
        return {"fsdp": True, "fsdp_config": str(CONFIGS / "fsdp" / "llama.json")}
    return {"deepspeed": deepspeed_file(f"{name}.json", folder)}


def assert_sharded(out: Path, processes: int = 2) -> None:
    """The run's summary says each process held about 1/``processes`` of every sharded
    tensor, and all of them together the whole model once."""
    shards = json.loads((out / "train_summary.json").read_text())["fsdp2"]
    assert shards["processes"] == processes
    assert sum(shards["held_by_process"]) == shards["parameter_values"]
    assert shards["largest_share_of_a_tensor"] <= 1 / processes + 0.05


@pytest.fixture(scope="module")
def single(assets, tmp_path_factory):
    """The one-process reference of every scheme: final parameters and step losses."""
    results = {}
    for name in SCHEMES:
        out = tmp_path_factory.mktemp(f"single-{name}") / "out"
        train(load_config(base=_config(assets, name, out, accumulation=2, engine={})))
        results[name] = (load_file(str(out / "model.safetensors")), logged_losses(out))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3", "fsdp2"])
def test_two_processes_equal_one_process_for_every_scheme(assets, single, tmp_path, engine):
    settings = _engine(engine, tmp_path)
    files, outs = [], {}
    for name in SCHEMES:
        outs[name] = tmp_path / f"out-{name}"
        config = _config(assets, name, outs[name], accumulation=1, engine=settings)
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(config))
    torchrun_trainings(files)
    start = load_file(str(assets[1] / "model.safetensors"))
    assert_runs_match_one_process(outs, single, start, STEPS, LOSS_TOL, PARAM_TOL, engine)
    if engine == "fsdp2":
        for out in outs.values():
            assert_sharded(out)
    if engine == "zero3":  # a user's ZeRO-3 file without the gather flag: a model to evaluate
        from tokenweight.cli import main

        out, evaluation = outs["dense_self"], tmp_path / "eval"
        assert not list(out.glob("global_step*"))  # whole weights, not DeepSpeed's shards
        data = ["--data", str(assets[2]), "--seq-len", str(SEQ)]
        assert main(["eval", str(out), "--out", str(evaluation), "--tasks", "ppl", *data]) == 0
        assert list(evaluation.iterdir())


@pytest.mark.slow
def test_fsdp2_with_frozen_scorers_adamw_clipping_and_a_resume(assets, tmp_path):
    """FSDP2 over 2 processes equals one process with the model and reference scorers, and
    with AdamW and gradient clipping (optimizer state in the checkpoints); a run stopped
    after step 2 and resumed from its checkpoint ends where the uninterrupted run ends."""
    engine = _engine("fsdp2", tmp_path)
    reference = assets[1].parent / "reference"
    if not reference.exists():
        save_tiny_model(reference, make_tokenizer(), seed=7, max_position_embeddings=256)
    single, files, outs = {}, [], {}
    for name in FSDP2_RUNS:
        out = tmp_path / f"single-{name}"
        train(load_config(base=_config(assets, name, out, accumulation=2, engine={})))
        single[name] = (load_file(str(out / "model.safetensors")), logged_losses(out))
        outs[name] = tmp_path / f"out-{name}"
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(_config(assets, name, outs[name], 1, engine)))
    stopped = _config(assets, "adamw_clipped", tmp_path / "stopped", 1, engine)
    stopped["train"]["max_steps"] = 2
    (tmp_path / "stopped.yaml").write_text(yaml.safe_dump(stopped))
    stopped["train"]["max_steps"] = STEPS
    (tmp_path / "resumed.yaml").write_text(yaml.safe_dump(stopped))
    torchrun_trainings([*files, tmp_path / "stopped.yaml", f"resume:{tmp_path / 'resumed.yaml'}"])
    start = load_file(str(assets[1] / "model.safetensors"))
    sgd = {name: outs[name] for name in ("dense_model", "rho1_reference")}
    assert_runs_match_one_process(sgd, single, start, STEPS, LOSS_TOL, PARAM_TOL, "fsdp2")
    for out in outs.values():
        assert_sharded(out)
    # AdamW normalizes each update, so float-order differences in near-zero gradients move
    # parameters by up to ~1e-2 * lr; the step losses and the clipped gradient norms (one
    # norm over every shard) show the exactness
    adamw = outs["adamw_clipped"]
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(
            torch.tensor(_logged(adamw, key)),
            torch.tensor(_logged(tmp_path / "single-adamw_clipped", key)),
            rtol=1e-4,
            atol=1e-6,
        )
    assert max(_logged(adamw, "grad_norm")) > 1.0  # clipping was active
    diff = assert_same_parameters(
        load_file(str(adamw / "model.safetensors")),
        single["adamw_clipped"][0],
        start,
        dict(rtol=0, atol=1e-3),
        "adamw",
    )
    print(f"fsdp2 adamw_clipped: max parameter difference {diff:.2e}")
    assert (adamw / "checkpoint-2" / "optimizer.pt").is_file()
    resumed = load_file(str(tmp_path / "stopped" / "model.safetensors"))
    uninterrupted = load_file(str(adamw / "model.safetensors"))
    diff = assert_same_parameters(resumed, uninterrupted, start, PARAM_TOL, "resumed")
    print(f"fsdp2 resumed after step 2: max parameter difference {diff:.2e}")
    summary = json.loads((tmp_path / "stopped" / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == STEPS


def _logged(out: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r and "learning_rate" in r]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["none", "torchrun"])
def test_one_process_deepspeed_equals_one_process_without_it(assets, single, tmp_path, launcher):
    """``tokenweight train`` with the shipped ZeRO-2 and ZeRO-3 files in one process, started
    without a launcher (nothing describes a process group: DeepSpeed would look for MPI)
    and under ``torchrun --nproc_per_node 1``: the same step losses and final parameters as
    one process without DeepSpeed (same batch of 2 sequences per step). Without a
    launcher also ZeRO-3 with parameters and optimizer state offloaded to the CPU (once:
    the slowest to start)."""
    import subprocess
    import sys

    from helpers.distributed import subprocess_env

    files, outs = [], {}
    stages = ("zero2", "zero3") + (("zero3_offload",) if launcher == "none" else ())
    for stage in stages:
        outs[stage] = tmp_path / f"out-{stage}"
        engine = {"deepspeed": deepspeed_file(f"{stage}.json", tmp_path)}
        config = _config(assets, "dense_self", outs[stage], accumulation=2, engine=engine)
        files.append(tmp_path / f"{stage}.yaml")
        files[-1].write_text(yaml.safe_dump(config))
    env = subprocess_env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    driver = str(Path(__file__).parents[1] / "helpers" / "dist_train_many.py")
    start = [sys.executable]
    if launcher == "torchrun":
        start += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    proc = subprocess.run(
        [*start, driver, *map(str, files)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "mpi4py" not in proc.stderr
    single_dense = {stage: single["dense_self"] for stage in outs}
    begin = load_file(str(assets[1] / "model.safetensors"))
    assert_runs_match_one_process(
        outs, single_dense, begin, STEPS, LOSS_TOL, PARAM_TOL, f"1 process ({launcher})"
    )
