"""`tokenweight study` end to end on a tiny model and synthetic data: every run and seed
trained and evaluated, paired differences recomputed independently from the saved NLL,
cached steps on a rerun, and the dry-run plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures import save_tiny_model, save_tokenizer
from tokenweight.cli import main
from tokenweight.errors import TokenWeightError
from tokenweight.study import load_study_config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return save_tiny_model(
        root / "model", save_tokenizer(root / "tok"), max_position_embeddings=256
    )


def _overrides(model, work):
    runs = (
        "runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self},"
        " {scheme: 'sparse:0.5', scorer: frozen}, {scheme: uniform, data: selected}]"
    )
    synth = (
        "synth={seq_len: 64, sequences: 8, distances: [8, 24, 40], span: 4, copies: 1,"
        " words: 40, branching: 3, seed: 0}"
    )
    return [
        f"model={model}",
        f"work_dir={work}",
        runs,
        synth,
        "seeds=[0, 1]",
        "window=16",
        "tiny={layers: 1, hidden: 16, heads: 2, words: 40}",
        "pretrain={steps: 3, batch: 2, distances: [5], copies: 1, span: 3, learning_rate: 0.003}",
        "max_steps=2",
        "eval_sequences=4",
        "bootstrap_samples=200",
        "device=cpu",
    ]


@pytest.mark.parametrize("start", ["tiny", "given"])
def test_study_end_to_end_with_independent_paired_differences(model, tmp_path, capsys, start):
    work = tmp_path / "study"
    argv = ["study", *_overrides("tiny" if start == "tiny" else model, work)]
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "4 runs x 2 seeds (0, 1) = 8 trainings" in plan and not work.exists()

    assert main(argv) == 0
    out = capsys.readouterr().out
    results = json.loads((work / "study.json").read_text())
    assert results["baseline"] == "uniform" and len(results["runs"]) == 4
    for name in ("study.md", "study.png"):
        assert (work / name).stat().st_size > 0
    assert "copied at distance 40" in results["metrics"]

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
    # seeds differ, the runs trained on different weights: the saved NLL are not copies
    assert not np.array_equal(base[0], base[1]) and not np.array_equal(base, run)

    assert main(argv) == 0  # every step cached now
    again = capsys.readouterr().out
    assert again.count("reusing it") >= 8 + 3 + (start == "tiny")
    assert "train uniform seed 0 ..." not in again
    assert "train uniform seed 0 ..." in out


def test_bad_study_configs():
    with pytest.raises(TokenWeightError, match="needs scorer"):
        load_study_config(None, ["runs=[{scheme: 'dense:0.75'}]"])
    with pytest.raises(TokenWeightError, match="share a label"):
        load_study_config(None, ["runs=[{scheme: uniform}, {scheme: uniform}]"])
    with pytest.raises(TokenWeightError, match="eval_data"):
        load_study_config(None, ["data=x"])


@pytest.mark.parametrize("name", ["cpu.yaml", "smollm2_gpu.yaml"])
def test_shipped_study_configs_validate(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "study" / name
    config = load_study_config(path)
    assert config.run_specs[config.baseline].scheme == "uniform" and len(config.seeds) >= 2
    schemes = {r.scheme.split(":")[0] for r in config.run_specs}
    assert {"dense", "sparse", "longce", "ppmi", "npmi"} <= schemes
    assert {r.scorer for r in config.run_specs} >= {"self", "frozen"}


def test_study_report_sections_from_hand_made_results(tmp_path):
    """The report of a hand-made result: the context table with the extended-RoPE column,
    every difference as a row, and the per-run sentence counting better/worse metrics."""
    from tokenweight.study import write_study_report

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
