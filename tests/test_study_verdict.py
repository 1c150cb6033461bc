"""What a study concludes, on constructed inputs with known answers: p-values and Holm's
correction against hand values and the sequential procedure, the bottom line per metric
family from evaluation arrays built to a known outcome, and the context warning for a
start model that cannot use its context (attention switched off)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers.fixtures import save_tiny_model, save_tokenizer
from tokenweight.evaluation.paired import holm, normal_p_value, paired_difference
from tokenweight.workflows.study import load_study_config, study_results, write_study_report
from tokenweight.workflows.study.evaluate import evaluate_held_out
from tokenweight.workflows.study.stats import context_check, metric_masks
from tokenweight.workflows.study.verdict import (
    LONG_RANGE,
    OTHER,
    apply_holm,
    context_verdict,
    context_warning,
)


def test_normal_p_value_known_points():
    assert normal_p_value(1.959963984540054, 1.0) == pytest.approx(0.05, abs=1e-12)
    assert normal_p_value(-2.5758293035489, 1.0) == pytest.approx(0.01, abs=1e-12)
    assert normal_p_value(0.0, 0.3) == 1.0
    assert normal_p_value(0.2, 0.0) == 0.0 and normal_p_value(0.0, 0.0) == 1.0
    assert math.isnan(normal_p_value(float("nan"), 1.0))


def test_paired_difference_p_value_uses_the_bootstrap_standard_error():
    rng = np.random.default_rng(1)
    run = rng.normal(1.0, 0.5, size=(3, 40))
    base = rng.normal(1.2, 0.5, size=(3, 40))
    counts = np.ones(40)
    d = paired_difference(run, base, counts, samples=500, seed=0)
    # the same resamples, drawn independently here, one at a time
    g = np.random.default_rng(0)
    ks, js = g.integers(0, 3, size=(500, 3)), g.integers(0, 40, size=(500, 40))
    diff = run - base
    boot = np.array([diff[k][:, j].sum() / (3 * 40) for k, j in zip(ks, js)])
    assert d.se == pytest.approx(boot.std(ddof=1), rel=1e-9)
    assert d.p == pytest.approx(math.erfc(abs(d.diff / boot.std(ddof=1)) / math.sqrt(2)))


def _holm_rejects(ps, alpha):
    """Holm's sequential procedure, written out: reject the smallest p-values while
    p_(k) <= alpha / (m - k)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    rejected = set()
    for k, i in enumerate(order):
        if ps[i] > alpha / (len(ps) - k):
            break
        rejected.add(i)
    return rejected


def test_holm_against_hand_values_and_the_sequential_procedure():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.2, float("nan"), 0.01])
    assert math.isnan(got[1]) and got[0] == pytest.approx(0.2) and got[2] == pytest.approx(0.02)
    ps = list(np.random.default_rng(0).uniform(0, 0.05, size=30) ** 2)
    adjusted = holm(ps)
    for alpha in (0.001, 0.01, 0.05, 0.1):
        assert {i for i, p in enumerate(adjusted) if p <= alpha} == _holm_rejects(ps, alpha)


def test_apply_holm_keeps_only_what_survives_the_correction():
    def row(p, verdict):
        return {
            "p": p,
            "verdict": verdict,
            "inside_noise": verdict == "inside the noise",
            "targets": 5,
        }

    rows = [row(0.01, "better than baseline")] + [row(0.5, "inside the noise")] * 5
    summary = apply_holm(rows, 0.05)
    assert rows[0]["p_holm"] == pytest.approx(0.06) and rows[0]["holds"] == ""  # 6 x 0.01
    assert summary["comparisons"] == 6 and summary["expected_false_uncorrected"] == pytest.approx(
        0.3
    )
    assert summary["outside_noise_uncorrected"] == 1
    rows = [row(0.001, "worse than baseline")] + [row(0.5, "inside the noise")] * 5
    apply_holm(rows, 0.05)
    assert rows[0]["p_holm"] == pytest.approx(0.006) and rows[0]["holds"] == "worse"


# ------------------------------------------------------------------ a constructed study
S, N1, W = 6, 63, 16  # held-out sequences, targets per sequence, window


def _write_eval(folder, rng):
    """Evaluation arrays with a known outcome: run 1 ("helps") is 0.5 nats better on every
    target beyond the window and 0.3 worse inside it; run 2 ("noise") differs from the
    baseline by +e / -e on alternate sequences (difference exactly 0); run 3 ("hurts") is
    0.4 worse on the key tokens only."""
    folder.mkdir()
    t = np.arange(1, N1 + 1)[None, :].repeat(S, 0)
    np.save(folder / "target_mask.npy", np.ones((S, N1), np.int8))
    start = rng.uniform(3, 4, size=(S, N1)).astype(np.float32)
    short = start + 0.1
    key = (t >= W) & (t % 7 == 0)
    start[key] = 1.0
    short[key] = 4.0  # gain 3 > 2 nats, long NLL 1 < 2: LongPPL key tokens
    np.save(folder / "start.npy", start)
    np.save(folder / "start-short.npy", short)
    local = start.copy()
    local[:, :W] += 0.5  # the start model gains 0.5 nats from its whole window
    np.save(folder / "start-local.npy", local)
    for seed in (0, 1):
        base = rng.uniform(3, 4, size=(S, N1)).astype(np.float32)
        noise = rng.uniform(0.01, 0.02, size=(S, N1)).astype(np.float32)
        helps = base + np.where(t >= W, -0.5, 0.3) + noise * 0.01
        sign = np.where(np.arange(S)[:, None] % 2 == 0, 1.0, -1.0)
        jitter = noise * sign
        jitter[1::2] = -jitter[0::2]  # alternate sequences cancel exactly
        hurts = base + np.where(key, 0.4, 0.0)
        for i, a in enumerate([base, helps, base + jitter, hurts]):
            np.save(folder / f"{i}-{seed}.npy", a.astype(np.float32))


def _config(**extra):
    runs = (
        "runs=[{scheme: uniform}, {scheme: uniform, name: helps}, {scheme: uniform, name: noise},"
        " {scheme: uniform, name: hurts}]"
    )
    return load_study_config(
        None,
        [runs, "seeds=[0, 1]", f"window={W}", "bootstrap_samples=400"]
        + [f"{k}={v}" for k, v in extra.items()],
    )


def test_bottom_line_from_constructed_evaluations(tmp_path):
    ev = tmp_path / "eval"
    _write_eval(ev, np.random.default_rng(0))
    results = study_results(_config(), ev, tmp_path / "no-synth")
    fam = results["families"]
    assert fam["beyond [16, 64)"] == LONG_RANGE and fam["LongPPL key tokens"] == LONG_RANGE
    assert fam["bucket [32, 48)"] == LONG_RANGE and fam["bucket [0, 16)"] == OTHER
    assert fam["inside [0, 16)"] == OTHER and fam["all targets"] == OTHER
    holds = {(d["run"], d["metric"]): d["holds"] for d in results["differences"]}
    assert holds[("helps", "beyond [16, 64)")] == "better"
    assert holds[("helps", "inside [0, 16)")] == "worse"
    assert not any(h for (run, _), h in holds.items() if run == "noise")
    assert holds[("hurts", "LongPPL key tokens")] == "worse"
    m = len(results["differences"])
    assert results["correction"]["comparisons"] == m == 3 * len(results["metrics"])
    text = write_study_report(results, tmp_path).read_text()
    line = next(x for x in text.splitlines() if x.startswith("  - **helps**"))
    assert "beyond [16, 64) -0.500 nats" in line and "cost elsewhere: worse on" in line
    assert "inside [0, 16) +0.300 nats" in line
    assert "- **Better than uniform on the long-range targets:** **helps**." in text
    assert "- Worse than uniform on the long-range targets: **hurts**." in text
    hurts = next(x for x in text.splitlines() if x.startswith("  - **hurts**"))
    assert "LongPPL key tokens +0.400 nats" in hurts
    assert "cost elsewhere: worse on all targets" in hurts  # the key tokens are among them
    assert "- No long-range difference holds for **noise**." in text
    assert f"Holm's correction over the {m} comparisons" in text
    assert f"about {m * 0.05:.1f} of them would fall outside the noise" in text
    heads = [x for x in text.splitlines() if x.startswith("## ")]
    assert heads[0] == "## Bottom line" and "Warning" not in text
    # the context check: the start model gains 0.5 nats inside its window
    verdict = results["context_check"]["verdict"]
    assert verdict["uses_context"] and verdict["gain"] == pytest.approx(0.5, abs=1e-6)
    high = study_results(_config(min_context_gain=0.6), ev, tmp_path / "no-synth")
    assert not high["context_check"]["verdict"]["uses_context"]


def test_context_verdict_reads_groups_with_enough_targets():
    check = {
        "local_window": 2,
        "key_share": 0.2,
        "inside_check": {
            "all targets inside": {"targets": 90, "whole": 3.5, "local": 3.51},
            "copied at distance 8, inside": {"targets": 1, "whole": 0.1, "local": 3.0},
        },
    }
    verdict = context_verdict(check, 0.05)
    assert verdict["where"] == "all targets inside" and verdict["gain"] == pytest.approx(0.01)
    assert not verdict["uses_context"]
    assert "0.010 nats (all targets inside)" in context_warning(check, verdict)[0]
    check["inside_check"]["copied at distance 8, inside"]["targets"] = 40
    verdict = context_verdict(check, 0.05)
    assert verdict["uses_context"] and verdict["gain"] == pytest.approx(2.9)
    assert context_warning(check, verdict) == []
    # no key tokens: a second warning, with the gain beyond the window
    check |= {"key_share": 0.0, "start_gain_beyond": 0.009}
    (line, _) = context_warning(check, verdict)
    assert line.startswith("> **Warning: the start model shows no long-range signal.**")
    assert "whole sequence is 0.009 nats and 0.00% of the targets are LongPPL key tokens" in line


@pytest.mark.slow
def test_warning_for_a_start_model_that_does_not_use_its_context(tmp_path):
    """A start model with every attention output set to zero predicts each token from
    itself alone: its whole-context and short-window NLL are the same, its gain is 0."""
    from transformers import AutoModelForCausalLM

    from tokenweight.workflows.synth import SynthConfig, write_synth

    tok = save_tokenizer(tmp_path / "tok")
    folder = save_tiny_model(tmp_path / "model", tok, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    model.save_pretrained(folder)
    held = tmp_path / "heldout"
    synth = {"seq_len": 64, "sequences": 4, "distances": [8, 24, 40], "span": 4, "copies": 1,
             "words": 40, "branching": 3, "seed": 0}  # fmt: skip
    write_synth(SynthConfig(**synth), folder, held)
    config = load_study_config(None, [f"model={folder}", "window=16", "eval_sequences=4"])
    ev = tmp_path / "eval"
    evaluate_held_out(config, {"start": folder}, held, ev, "cpu", lambda _: None)
    masks, _ = metric_masks(config, ev, held)
    check = context_check(config, ev, masks)
    verdict = context_verdict(check, config.min_context_gain)
    # not exactly 0: a short window's first input is BOS in place of the token there
    assert abs(verdict["gain"]) < 0.005 and not verdict["uses_context"]
    lines = context_warning(check, verdict)
    assert lines[0].startswith("> **Warning: the start model barely uses its context.**")
    assert "under the threshold of 0.05 nats (`min_context_gain`)" in lines[0]
    assert "over windows of 2 tokens" in lines[0]


# ------------------------------------------------------------------ the cost estimate
def _timings(**kw):
    from tokenweight.workflows.study.cost import Timings

    base = dict(
        train_start=2.0,
        train_step={"none": 0.5, "self": 0.8},
        eval_load=1.0,
        eval_per_sequence=0.1,
        start_per_sequence=0.3,
        pretrain_start=3.0,
        pretrain_step=0.2,
        synth_per_token=0.001,
        synth_start=0.4,
        score_start=1.5,
        score_per_sequence=0.25,
        probe_per_prompt=0.05,
        comparison=0.01,
        report_start=0.5,
    )
    return Timings(**{**base, **kw})


def test_estimate_counts_every_part_of_the_study():
    from tokenweight.workflows.study.cost import estimate

    runs = (
        "runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self},"
        " {scheme: 'sparse:0.5', scorer: precomputed}, {scheme: uniform, data: selected}]"
    )
    config = load_study_config(
        None,
        [
            runs,
            "seeds=[0, 1]",
            "window=16",
            "tiny={layers: 1, hidden: 16, heads: 2, words: 40}",
            "synth={seq_len: 64, sequences: 8, words: 40}",
            "pretrain={steps: 10, batch: 2, distances: [[4, 12]], copies: 1, learning_rate: 0.003}",
            "eval_sequences=4",
            "max_steps=5",
            "gradient_accumulation_steps=2",
        ],
    )
    parts = {p.name: p.seconds for p in estimate(config, _timings(), train_sequences=8, seq_len=64)}
    assert parts == pytest.approx(
        {
            "pretraining the start model": 3 + 10 * 0.2 + 0.4 + 10 * 2 * 16 * 0.001,
            "synthetic data": 2 * 0.4 + (8 + 4) * 64 * 0.001,  # training and held-out
            "scoring the training data": 1.5 + 8 * 0.25,
            # uniform, precomputed and selected step like uniform; self at its own rate
            "training": 2 * (2 + 5 * 0.5) * 3 + 2 * (2 + 5 * 0.8),
            "evaluation": 9 * (1 + 4 * 0.1) + 4 * 0.3,
            # 3 runs against the baseline x (all, inside, beyond, 4 buckets of 16 in 64,
            # key tokens, the default synth's 3 distance classes, not copied)
            "report": 3 * 12 * 0.01 + 0.5,
        }
    )
    # with RoPE settings the start model is loaded once more, extended, for evaluation
    extended = dataclasses.replace(config, max_position_embeddings=64)
    got = {p.name: p.seconds for p in estimate(extended, _timings(), train_sequences=8, seq_len=64)}
    assert got["evaluation"] == pytest.approx(parts["evaluation"] + 1.0)
    probes = load_study_config(
        None,
        [
            "runs=[{scheme: uniform}, {scheme: x, scorer: reference, reference_model: m}]".replace(
                "x", "'dense:0.75'"
            ),
            "seeds=[0]",
            "model=some/model",
            "data=d",
            "eval_data=e",
            "probes=[passkey]",
            "probe_lengths=[100, 200]",
            "probe_depths=[0.5]",
            "probe_trials=2",
            "max_steps=5",
            "gradient_accumulation_steps=2",
            "eval_sequences=4",
        ],
    )
    got = {p.name: p.seconds for p in estimate(probes, _timings(), train_sequences=8, seq_len=64)}
    assert set(got) == {"training", "evaluation", "probes", "report"}  # no pretraining ...
    # the reference scorer's step adds one evaluation forward per sequence of the step
    assert got["training"] == pytest.approx((2 + 5 * 0.5) + (2 + 5 * (0.5 + 2 * 0.1)))
    assert got["probes"] == pytest.approx(3 * (1 * 2 * 1 * 2) * 0.05)


def test_timed_training_splits_start_up_from_steps(monkeypatch):
    """A stand-in for train() with known durations: 0.3 s before training, a first step of
    0.25 s, two of 0.1 s, 0.2 s after."""
    import time

    import tokenweight.training.run as run
    from tokenweight.workflows.study.cost import _timed_training

    def fake_train(tc, callbacks):
        (clock,) = callbacks
        time.sleep(0.3)
        clock.on_train_begin(None, None, None)
        for seconds in (0.25, 0.1, 0.1):
            time.sleep(seconds)
            clock.on_step_end(None, None, None)
        time.sleep(0.2)

    monkeypatch.setattr(run, "train", fake_train)
    start, step = _timed_training(None)
    assert step == pytest.approx(0.1, abs=0.03)
    assert start == pytest.approx(0.3 + 0.25 + 0.2 - 0.1, abs=0.06)  # first step's excess too


def test_dry_run_checks_settings_before_calibrating(tmp_path, monkeypatch, capsys):
    import tokenweight.workflows.study.cost as cost
    from tokenweight.cli import main
    from tokenweight.infra.errors import TokenWeightError

    def refuse(*args, **kwargs):
        raise AssertionError("calibrated before the settings were checked")

    monkeypatch.setattr(cost, "calibrate", refuse)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text('{"format": "tokenweight.prepared", "seq_len": 64}')
    with pytest.raises(TokenWeightError, match=r"^eval_data: "):
        cost.dry_run(
            load_study_config(
                None, [f"data={prepared}", f"eval_data={tmp_path / 'none'}", "window=16"]
            )
        )
    # no CUDA here: the plan, and a line saying why there is no estimate
    assert main(["study", "device=cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cost: not estimated on this machine (device 'cuda' is not available" in out
