"""Every engine that runs on CPU processes, with 2 gloo processes, ends where one process
ends: DDP, DeepSpeed ZeRO-2 and ZeRO-3, each for the uniform loss, Dense with the self
scorer, Dense with precomputed scores and Sparse with the self scorer. FSDP needs GPUs;
on CPU processes it is refused with a message (accelerate would silently run DDP).

One process with gradient accumulation 2 is the reference for 2 processes with
accumulation 1 (the same 2 sequences per optimizer step, padded rows of different
lengths among them). Plain SGD without clipping, so any error in the gradient scale
shows in the parameters. Compared: the loss of every step (the training log) and every
final parameter. The engines are the shipped config files; the tests change only what a
CPU run needs (see ``helpers.distributed.deepspeed_file``). Each engine is one ``torchrun`` launch that
trains the four schemes one after another through the real command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers.distributed import (
    LOSS_TOL,
    PARAM_TOL,
    assert_runs_match_one_process,
    deepspeed_file,
    logged_losses,
    torchrun_trainings,
)
from helpers.fixtures import make_tokenizer, save_tiny_model
from helpers.train_support import prepare
from tokenweight.training.config import load_config
from tokenweight.training.run import train

SEQ, WINDOW, STRIDE, STEPS = 48, 16, 8, 3
SCHEMES = {
    "uniform": ("uniform", "none"),
    "dense_self": ("dense:0.75", "self"),
    "dense_precomputed": ("dense:0.75", "precomputed"),
    "sparse_self": ("sparse:0.25", "self"),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tokenweight.data import score_dataset

    root = tmp_path_factory.mktemp("engines")
    model_dir = save_tiny_model(
        root / "model", make_tokenizer(), seed=4, max_position_embeddings=256
    )
    prepared = prepare(root, model_dir, SEQ, keep_tail=True, docs=8, words=70, seed=3)
    scored = root / "scored"
    score_dataset(
        prepared, scored, scorer=str(model_dir), window=WINDOW, stride=STRIDE, progress=False
    )
    return root, model_dir, prepared, scored


def _config(assets, name: str, out: Path, accumulation: int, engine: dict) -> dict:
    _, model_dir, prepared, scored = assets
    scheme, kind = SCHEMES[name]
    return {
        "model": {"source": str(model_dir)},
        "data": {"path": str(scored if kind == "precomputed" else prepared)},
        "scheme": scheme,
        "scorer": {"kind": "self" if kind == "none" else kind, "window": WINDOW, "stride": STRIDE},
        "train": {
            "output_dir": str(out),
            "learning_rate": 0.5,
            "scheduler": "constant",
            "warmup_steps": 0,
            "max_steps": STEPS,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": accumulation,
            "max_grad_norm": 0.0,  # clipping would hide a wrong gradient scale
            "save_steps": 100,
            "seed": 0,
            "training_arguments": {"optim": "sgd", "disable_tqdm": True},
            **engine,
        },
    }


def _engine(name: str, folder: Path) -> dict:
    if name == "ddp":
        return {}
    return {"deepspeed": deepspeed_file(f"{name}.json", folder)}


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
@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
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
