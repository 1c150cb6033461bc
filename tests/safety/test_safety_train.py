"""Nothing lost in ``tokenweight train``: the output folder may not be an input, resume
after a kill during a checkpoint save (and the summary loss after it), strict configs
(duplicate keys, binary or non-UTF-8 files, ranges; the demo's settings too)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from helpers.safety import fails, train_yaml, tree
from helpers.train_support import CrashAtStep


def test_train_output_dir_may_not_be_an_input(env, tmp_path, capsys):
    before = tree(env["root"])
    config = train_yaml(env, tmp_path)
    for where in (env["model"], env["model"] / "sub", env["prep"], env["root"]):
        fails(capsys, ["train", config, f"train.output_dir={where}"], "overlaps the input")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "paper.pdf").write_bytes(b"%PDF")
    fails(capsys, ["train", config, f"train.output_dir={foreign}"], "(paper.pdf)")
    assert tree(env["root"]) == before
    assert (foreign / "paper.pdf").read_bytes() == b"%PDF"


def test_resume_after_a_kill_during_a_checkpoint_save(env, tmp_path, caplog):
    from tokenweight.training.config import load_config
    from tokenweight.training.run import find_last_checkpoint, train

    config = load_config(train_yaml(env, tmp_path))
    out = Path(config.train.output_dir)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[CrashAtStep(4, KeyboardInterrupt)])
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    for ckpt in out.glob("checkpoint-*"):
        assert (ckpt / "tokenweight_checkpoint.json").is_file()
    # the kill came while checkpoint-3 was being written: weights there, the rest missing
    cut = out / "checkpoint-3"
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        (cut / name).unlink(missing_ok=True)
    (cut / "tokenweight_checkpoint.json").unlink()
    assert find_last_checkpoint(out).endswith("checkpoint-2")
    with caplog.at_level(logging.WARNING, logger="tokenweight.training.run"):
        result = train(config, resume=True)
    said = caplog.text
    assert "checkpoint-3 is incomplete" in said and "resuming from checkpoint-2" in said
    assert result.resumed_from.endswith("checkpoint-2")
    assert result.global_step == 4
    assert (out / "checkpoint-3" / "tokenweight_checkpoint.json").is_file()  # saved again

    # the summary loss says which steps it averages, and is their mean
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_loss_steps"] == [3, 4]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = {x["step"]: x["loss"] for x in log if "loss" in x}
    expected = (losses[3] + losses[4]) / 2
    assert summary["train_loss"] == pytest.approx(expected, rel=1e-4)
    assert result.loss_steps == (3, 4)


def test_config_duplicate_keys_binary_files_and_ranges(env, tmp_path, capsys):
    good = train_yaml(env, tmp_path)
    dup = tmp_path / "dup.yaml"
    dup.write_text(good.read_text() + "scheme: sparse:0.25\n")
    fails(capsys, ["train", dup, "--print-config"], "'scheme' is given twice")
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  seed: 1\n  max_steps: 2\n  seed: 3\n")
    fails(capsys, ["train", nested, "--print-config"], "'seed' is given twice")
    binary = tmp_path / "model.safetensors.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    fails(capsys, ["train", binary, "--print-config"], str(binary))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  run_name: caf\xe9\n".encode("latin-1"))
    fails(capsys, ["train", latin, "--print-config"], "not a UTF-8")
    fails(capsys, ["train", good, "train.seed=-5", "--print-config"], "train.seed")
    fails(capsys, ["train", good, "train.seed=5000000000", "--print-config"], "train.seed")
    fails(capsys, ["train", good, "model.lora.dropout=1.5", "--print-config"], "dropout")
    fails(capsys, ["demo", f"work_dir={tmp_path / 'w'}", "seed=-1", "--print-config"], "seed")
    fails(capsys, ["demo", "probe_depths=[2]", "--print-config"], "probe_depths")
    fails(capsys, ["demo", "rope_theta=-1", "--print-config"], "rope_theta")


def test_train_report_to_an_integration_not_installed_fails_before_loading(
    env, tmp_path, capsys, monkeypatch
):
    """``train.report_to=[tensorboard]`` without tensorboard: an error naming the key
    before any data or model is loaded (the Trainer would fail only after the model)."""
    import transformers.integrations

    import tokenweight.training.run as run

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", list)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before report_to was checked")

    monkeypatch.setattr(run, "_load_model", refuse)
    monkeypatch.setattr(run, "_load_dataset", refuse)
    config = train_yaml(env, tmp_path)
    fails(
        capsys,
        ["train", config, "train.report_to=[tensorboard]"],
        "train.report_to: tensorboard is not installed",
        "pip install tensorboard",
    )
    assert not (tmp_path / "run").exists()
