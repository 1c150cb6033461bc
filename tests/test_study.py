"""`tokenweight study` end to end on a tiny model and synthetic data: every run and seed
trained and evaluated, paired differences recomputed independently from the saved NLL,
cached steps on a rerun, and the dry-run plan."""

from __future__ import annotations

import json
import re
import shutil
import tempfile

import numpy as np
import pytest

from helpers.fixtures import save_tiny_model, save_tokenizer
from tokenweight.cli import main
from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.study import load_study_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return save_tiny_model(
        root / "model", save_tokenizer(root / "tok"), max_position_embeddings=256
    )


def _overrides(model, work, facts=False):
    runs = (
        "runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self},"
        " {scheme: 'sparse:0.5', scorer: precomputed}, {scheme: uniform, data: selected}]"
    )
    synth = (
        "synth={seq_len: 64, sequences: 8, distances: [8, 24, 40], span: 2, copies: 1,"
        " words: 40, content: facts, keys: 4, values: 2, filler: document, doc_words: 8,"
        " seed: 0}"
        if facts
        else "synth={seq_len: 64, sequences: 8, distances: [8, 24, 40], span: 4, copies: 1,"
        " words: 40, branching: 3, seed: 0}"
    )
    pretrain = (
        "pretrain={steps: 3, batch: 2, distances: [[4, 12]], copies: 1, learning_rate: 0.003}"
        if facts
        else "pretrain={steps: 3, batch: 2, distances: [5], copies: 1, span: 3, "
        "learning_rate: 0.003}"
    )
    return [
        f"model={model}",
        f"work_dir={work}",
        runs,
        synth,
        "seeds=[0, 1]",
        "window=16",
        "tiny={layers: 1, hidden: 16, heads: 2, words: 40}",
        pretrain,
        "max_steps=2",
        "eval_sequences=4",
        "bootstrap_samples=200",
        "device=cpu",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("start", ["tiny", "given"])
def test_study_end_to_end_with_independent_paired_differences(
    model, tmp_path, capsys, monkeypatch, start
):
    work = tmp_path / "study"
    # the tiny start model learns from facts over document vocabularies; the given model
    # from spans over the bigram grammar
    argv = ["study", *_overrides("tiny" if start == "tiny" else model, work, start == "tiny")]
    if start == "given":  # its tokenizer reads text: every model also answers passkey probes
        argv += ["probes=[passkey]", "probe_lengths=[200]", "probe_depths=[0.5]", "probe_trials=2"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # calibration's folder
    (tmp_path / "tmp").mkdir()
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "4 runs x 2 seeds (0, 1) = 8 trainings" in plan and not work.exists()
    assert "cost, calibrated on this machine (cpu; 3 steps" in plan
    for part in ("synthetic data", "scoring the training data", "training", "evaluation"):
        assert re.search(rf"^    {part} +[0-9.]+ (s|min|h) ", plan, re.M), part
    assert ("pretraining the start model" in plan) == (start == "tiny")
    assert not list((tmp_path / "tmp").iterdir())  # nothing left behind
    if start == "given":
        assert "= 2 prompts per model" in plan

    assert main(argv) == 0
    out = capsys.readouterr().out
    # the step counter ends exactly at its total: "[k/k] report: ..."
    assert re.search(r"\[(\d+)/\1\] report: ", out), out[-400:]
    results = json.loads((work / "study.json").read_text())
    assert results["baseline"] == "uniform" and len(results["runs"]) == 4
    for name in ("study.md", "study.png"):
        assert (work / name).stat().st_size > 0
    assert "copied at distance 40" in results["metrics"]
    # the cost estimate counts the report's comparisons as the report makes them
    from tokenweight.workflows.study.cost import _metric_count

    nll_metrics = [m for m in results["metrics"] if not m.startswith("probe")]
    assert _metric_count(load_study_config(None, argv[1:]), 64) == len(nll_metrics)

    ev = work / "eval"
    valid = np.load(ev / "target_mask.npy")
    base = np.stack([np.load(ev / f"0-{s}.npy") for s in (0, 1)]).astype(np.float64)
    run = np.stack([np.load(ev / f"1-{s}.npy") for s in (0, 1)]).astype(np.float64)
    row = next(
        d
        for d in results["differences"]
        if d["metric"] == "all targets" and d["run"] == "dense:0.75 (self)"
    )
    expected = float(((run - base) * valid).sum() / (2 * valid.sum()))
    assert row["diff"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert row["low"] <= row["diff"] <= row["high"]
    assert row["baseline"] == pytest.approx(float((base * valid).sum() / (2 * valid.sum())))
    # the inside-the-window check, recomputed from the saved arrays: the start model with
    # its whole context vs only the last window // 8 = 2 tokens, on targets inside [0, 16)
    check = results["context_check"]
    assert check["local_window"] == 2
    start_nll, local = np.load(ev / "start.npy"), np.load(ev / "start-local.npy")
    inside = valid.astype(bool) & (np.arange(1, valid.shape[1] + 1)[None, :] < 16)
    row_in = check["inside_check"]["all targets inside"]
    assert row_in["targets"] == int(inside.sum())
    assert row_in["whole"] == pytest.approx(float(start_nll[inside].mean()), rel=1e-6)
    assert row_in["local"] == pytest.approx(float(local[inside].mean()), rel=1e-6)
    # the first target sees the same context (BOS) both ways, later ones do not
    np.testing.assert_allclose(local[:, :1], start_nll[:, :1], atol=1e-5)
    assert not np.allclose(local[:, 2:16], start_nll[:, 2:16])
    assert "## Does the start model use its context?" in (work / "study.md").read_text()
    if start == "given":  # the probe rows, recomputed from the saved answers
        assert len(json.loads((ev / "probes.json").read_text())) == 2
        b = np.stack([np.load(ev / f"0-{s}-probes.npy") for s in (0, 1)]).astype(float)
        r = np.stack([np.load(ev / f"1-{s}-probes.npy") for s in (0, 1)]).astype(float)
        row = next(
            d
            for d in results["differences"]
            if d["metric"] == "probe passkey (accuracy)" and d["run"] == "dense:0.75 (self)"
        )
        assert row["targets"] == 2 and row["diff"] == pytest.approx(float((r - b).mean()))
        assert row["baseline"] == pytest.approx(float(b.mean()))
        assert "probe passkey (accuracy)" in results["metrics"]
    assert "2-token windows" in (work / "study.md").read_text()
    # seeds differ, the runs trained on different weights: the saved NLL are not copies
    assert not np.array_equal(base[0], base[1]) and not np.array_equal(base, run)

    assert main(argv) == 0  # every step cached now
    again = capsys.readouterr().out
    assert again.count("reusing it") >= 8 + 3 + (start == "tiny")
    assert "train uniform seed 0 ..." not in again
    assert "train uniform seed 0 ..." in out
    if start == "tiny":
        return
    # a kill during a training before its first checkpoint, or during the evaluation,
    # leaves folders without step.json; a rerun continues or redoes them (no refusal)
    seed0 = work / "runs" / "00-uniform" / "seed0"
    for p in seed0.iterdir():
        if p.name not in ("tokenweight_train.yaml", "train_log.jsonl"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in ev.iterdir():
        if p.name not in ("target_mask.npy", "start.npy", "probes.json"):
            p.unlink()
    assert main(argv) == 0
    resumed = capsys.readouterr().out
    assert "train uniform seed 0: continuing the interrupted run" in resumed
    assert "train uniform seed 1: cached" in resumed
    assert "evaluate every model on the held-out sequences ..." in resumed
    assert json.loads((work / "study.json").read_text())["runs"] == results["runs"]


def test_bad_study_configs():
    with pytest.raises(TokenWeightError, match="needs scorer"):
        load_study_config(None, ["runs=[{scheme: 'dense:0.75'}]"])
    with pytest.raises(TokenWeightError, match="share a label"):
        load_study_config(None, ["runs=[{scheme: uniform}, {scheme: uniform}]"])
    with pytest.raises(TokenWeightError, match="eval_data"):
        load_study_config(None, ["data=x"])
    with pytest.raises(TokenWeightError, match=r"must equal synth\.words"):
        load_study_config(None, ["tiny={layers: 1, hidden: 16, heads: 2, words: 40}"])


@pytest.mark.parametrize("name", ["cpu.yaml", "smollm2_gpu.yaml"])
def test_shipped_study_configs_validate(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / name
    config = load_study_config(path)
    assert config.run_specs[config.baseline].scheme == "uniform" and len(config.seeds) >= 2
    schemes = {r.scheme.split(":")[0] for r in config.run_specs}
    assert {"dense", "sparse", "longce", "ppmi", "npmi"} <= schemes
    assert {r.scorer for r in config.run_specs} >= {"self", "precomputed"}


def test_study_report_sections_from_hand_made_results(tmp_path):
    """The report of a hand-made result: the context table with the extended-RoPE column,
    every difference as a row, and the per-run sentence counting better/worse metrics."""
    from tokenweight.workflows.study import write_study_report

    def diff(metric, run, d, verdict):
        return {
            "metric": metric,
            "run": run,
            "targets": 10,
            "baseline": 2.0,
            "diff": d,
            "low": d - 0.1,
            "high": d + 0.1,
            "verdict": verdict,
            "inside_noise": verdict == "inside the noise",
        }

    results = {
        "config": {"confidence": 0.9, "window": 16},
        "baseline": "uniform",
        "runs": ["uniform", "dense"],
        "seeds": [0, 1],
        "held_out_sequences": 4,
        "context_check": {
            "start_nll_beyond": 3.0,
            "start_short_nll_beyond": 3.5,
            "start_gain_beyond": 0.5,
            "key_share": 0.25,
            "start_by_metric": {"all targets": 2.5, "beyond [16, 64)": None},
            "start_extended_by_metric": {"all targets": 2.75, "beyond [16, 64)": 3.25},
        },
        "differences": [
            diff("all targets", "dense", -0.5, "better"),
            diff("beyond [16, 64)", "dense", 0.5, "worse"),
        ],
        "seconds": 120.0,
        "step_seconds": 60.0,
    }
    path = write_study_report(results, tmp_path)
    text = path.read_text()
    assert json.loads((tmp_path / "study.json").read_text()) == results
    assert (tmp_path / "study.png").stat().st_size > 0
    assert "| all targets | 2.500 | 2.750 |" in text
    assert "| beyond [16, 64) | - | 3.250 |" in text
    assert "| 90% interval |" in text
    assert "| all targets | dense | 10 | 2.000 | -0.500 | [-0.600, -0.400] | better |" in text
    assert (
        "- **dense**: all targets -0.500 nats [-0.600, -0.400], better; over all 2 metrics: "
        "better on 1 (all targets), worse on 1, inside the noise on 0." in text
    )
    assert "Every difference is inside the noise" not in text
    assert "this invocation: 2.0 min." in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == [
        "## Does the start model use its context?",
        "## Paired differences against the baseline",
        "## In words",
    ]


def test_probe_rows_are_accuracy_differences_where_higher_is_better(tmp_path):
    from tokenweight.workflows.study.stats import probe_differences

    config = load_study_config(
        None, ["runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self}]", "seeds=[0, 1]"]
    )
    tasks = ["passkey"] * 4 + ["needle"] * 2
    (tmp_path / "probes.json").write_text(json.dumps([{"task": t} for t in tasks]))
    for seed in (0, 1):
        # the baseline answers no passkey and every needle; the run every passkey, no needle
        np.save(tmp_path / f"0-{seed}-probes.npy", np.array([0, 0, 0, 0, 1, 1], np.int8))
        np.save(tmp_path / f"1-{seed}-probes.npy", np.array([1, 1, 1, 1, 0, 0], np.int8))
    rows = {r["metric"]: r for r in probe_differences(config, tmp_path)}
    passkey, needle = rows["probe passkey (accuracy)"], rows["probe needle (accuracy)"]
    assert passkey["targets"] == 4 and passkey["diff"] == 1.0 and passkey["baseline"] == 0.0
    assert passkey["verdict"] == "better than baseline"
    assert needle["diff"] == -1.0 and needle["verdict"] == "worse than baseline"
    assert passkey["low"] == passkey["high"] == 1.0  # every resample agrees
    with pytest.raises(TokenWeightError, match="probes: unknown"):
        load_study_config(None, ["probes=[passkeyy]"])


@pytest.mark.slow  # --dry-run times a few steps: 3 CPU seconds (tests/helpers/tiers.py)
def test_settings_after_an_option_still_count(capsys):
    assert main(["study", "seeds=[0, 1, 2]", "--dry-run", "max_steps=3"]) == 0
    plan = capsys.readouterr().out
    assert "x 3 seeds (0, 1, 2)" in plan and "each training: 3 steps" in plan
    with pytest.raises(SystemExit) as exc:
        main(["study", "--dry-run", "--no-such-flag"])
    assert exc.value.code == 2 and "unrecognized arguments: --no-such-flag" in (
        capsys.readouterr().err
    )


def test_start_model_windows_are_the_original_context_and_an_eighth_of_it():
    from tokenweight.workflows.study.evaluate import start_windows

    # LongPPL's step (a quarter window) unless the study sets its own stride
    assert start_windows(load_study_config(None, ["window=64"])) == {
        "start-short": (64, 16),
        "start-local": (8, 2),
    }
    windows = start_windows(load_study_config(None, ["window=64", "stride=10"]))
    assert windows == {"start-short": (64, 10), "start-local": (8, 2)}
