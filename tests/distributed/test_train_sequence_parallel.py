"""Sequence parallelism (DeepSpeed Ulysses, 2 gloo processes holding half of every
sequence each) ends where one process holding whole sequences ends, for every paper
scheme, under ZeRO-2 and ZeRO-3 (their gradient reductions differ across the SP group),
with padded rows (kept document tails) in BOS-led data (the self scorer then puts BOS at
the start of every later window).

Compared against one process with the same sequences per optimizer step: the loss of
every step and every final parameter (plain SGD, no clipping: a wrong gradient scale or a
wrong weight moves them). One ``torchrun`` launch per ZeRO stage trains all schemes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers.distributed import (
    LOSS_TOL,
    PARAM_TOL,
    STEPS,
    assert_runs_match_one_process,
    comparison_config,
    comparison_data,
    deepspeed_file,
    logged_losses,
    torchrun_trainings,
)
from helpers.fixtures import make_tokenizer
from tokenweight.training.config import load_config
from tokenweight.training.run import train

# (scheme, scorer kind, data): every paper scheme
RUNS = {
    "uniform": ("uniform", "none", "tail"),
    "dense_self": ("dense:0.75", "self", "tail"),
    "dense_precomputed": ("dense:0.75", "precomputed", "scored"),
    "sparse_self": ("sparse:0.25", "self", "tail"),
    "longce_self": ("longce:5", "self", "tail"),
    "ppmi_self": ("ppmi:c=2,kappa=0.25", "self", "tail"),
    "npmi_self": ("npmi:c=2,kappa=0.25", "self", "tail"),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import datasets

    model_dir, tail, scored = comparison_data(tmp_path_factory.mktemp("sp"), model_seed=5)
    first = datasets.load_from_disk(str(tail))[0]["input_ids"][0]
    assert first == make_tokenizer().bos_token_id  # BOS-led sequences: scorer windows get BOS
    return model_dir, {"tail": tail, "scored": scored}


def _config(assets, name: str, out: Path, engine: dict, accumulation: int = 1) -> dict:
    model_dir, data = assets
    scheme, kind, which = RUNS[name]
    return comparison_config(
        model_dir,
        data[which],
        out,
        accumulation,
        scheme=scheme,
        scorer={"kind": "self" if kind == "none" else kind},
        model_options={"attn_implementation": "sdpa"},
        **engine,
    )


@pytest.fixture(scope="module")
def single(assets, tmp_path_factory):
    results = {}
    for name in RUNS:
        out = tmp_path_factory.mktemp(f"single-{name}") / "out"
        train(load_config(base=_config(assets, name, out, engine={})))
        results[name] = (load_file(str(out / "model.safetensors")), logged_losses(out))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_sp_ranks_equal_one_process_for_every_scheme(assets, single, tmp_path, stage):
    engine = {
        "deepspeed": deepspeed_file(f"{stage}.json", tmp_path),
        "sequence_parallel": 2,
    }
    files, outs = [], {}
    for name in RUNS:
        outs[name] = tmp_path / f"out-{name}"
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(_config(assets, name, outs[name], engine)))
    torchrun_trainings(files)
    start = load_file(str(assets[0] / "model.safetensors"))
    assert_runs_match_one_process(outs, single, start, STEPS, LOSS_TOL, PARAM_TOL, f"sp2 {stage}")


def _in_sp_dp_order(prepared: Path, out: Path, groups: int, degree: int) -> Path:
    """A copy of ``prepared`` in the order one process meets the rows that ``groups`` SP
    groups of ``degree`` processes train on together (unshuffled): process ``p`` reads
    rows ``p, p + P, ...`` (``P = groups * degree``); each SP group gathers its processes'
    rows and trains on them one after another, so step ``k`` holds the ``k``-th gathered
    row of every group."""
    import shutil

    import datasets

    rows = datasets.load_from_disk(str(prepared))
    processes = groups * degree
    order = []
    for start in range(0, len(rows) - processes + 1, processes):
        for k in range(degree):  # the k-th row each group gathered: one optimizer step
            order += [start + g * degree + k for g in range(groups)]
    out.mkdir(parents=True)
    rows.select(order).save_to_disk(str(out / "rows"))
    for item in (out / "rows").iterdir():
        shutil.move(str(item), str(out / item.name))
    (out / "rows").rmdir()
    for item in prepared.iterdir():  # the manifest and what else the folder names
        if not (out / item.name).exists():
            shutil.copy(item, out / item.name)
    return out


@pytest.mark.slow
def test_sp2_times_dp2_on_four_processes_equals_one_process(assets, tmp_path):
    """4 processes, 2 SP groups of 2 (each a data-parallel rank): under ZeRO-2 and ZeRO-3
    (whose gradient reductions over the SP and data-parallel ranks differ), Dense with the
    self scorer ends where one process with the same 2 sequences per step ends."""
    model_dir, data = assets
    name = "dense_self"
    reordered = _in_sp_dp_order(data["tail"], tmp_path / "reordered", groups=2, degree=2)
    out = tmp_path / "single"
    config = _config(assets, name, out, engine={}, accumulation=2)
    config["data"]["path"] = str(reordered)
    config["train"]["shuffle"] = False
    train(load_config(base=config))
    single = {name: (load_file(str(out / "model.safetensors")), logged_losses(out))}
    files, outs = [], {}
    for stage in ("zero2", "zero3"):
        engine = {"deepspeed": deepspeed_file(f"{stage}.json", tmp_path), "sequence_parallel": 2}
        outs[stage] = tmp_path / f"out-{stage}"
        config = _config(assets, name, outs[stage], engine)
        config["train"]["shuffle"] = False
        files.append(tmp_path / f"{stage}.yaml")
        files[-1].write_text(yaml.safe_dump(config))
    torchrun_trainings(files, processes=4)
    start = load_file(str(model_dir / "model.safetensors"))
    for stage, folder in outs.items():
        assert_runs_match_one_process(
            {name: folder}, single, start, STEPS, LOSS_TOL, PARAM_TOL, f"sp2 x dp2 {stage}"
        )
