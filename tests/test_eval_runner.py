"""End to end on tiny random models: every output file, numbers against independent
computations (full logits + F.cross_entropy, a per-window loop), probe accounting, CLI."""

from __future__ import annotations

import json
import math
import re

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F

from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
from tokenweight import TokenWeightError
from tokenweight.cli import main
from tokenweight.evaluation import ModelSpec, evaluate_models

SEQ_LEN, WINDOW, STRIDE, BUCKET = 64, 32, 16, 16
WORDS = [
    "grass",
    "sky",
    "sun",
    "green",
    "blue",
    "yellow",
    "key",
    "pass",
    "number",
    "magic",
    "special",
    "text",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two text documents, long enough for two 64-token sequences each."""
    import random

    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("corpus")
    for name in ("a.txt", "b.txt"):
        words = [rng.choice(WORDS) + ("." if rng.random() < 0.2 else "") for _ in range(300)]
        (folder / name).write_text(" ".join(words), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer("bpe", **EVAL_BPE, add_bos=True)


def _sequences(tok, folder, n):
    """BOS + 63 document tokens per sequence, documents in name order, never crossing."""
    rows = []
    for path in sorted(folder.glob("*.txt")):
        ids = tok(path.read_text(), add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - (SEQ_LEN - 1) + 1, SEQ_LEN - 1):
            rows.append([tok.bos_token_id, *ids[start : start + SEQ_LEN - 1]])
    return torch.tensor(rows[:n])


def _long_nll(model, ids):
    with torch.no_grad():
        logits = model(ids).logits.float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")


def _short_nll(model, ids, bos):
    """The window rule by hand: windows start at 0, 16, 32 (last ends at 64); window 0 owns targets
    1..31, the window at 16 owns 32..47, the one at 32 owns 48..63; later windows start
    with BOS."""
    out = torch.zeros(ids.shape[0], SEQ_LEN - 1)
    with torch.no_grad():
        for row in range(ids.shape[0]):
            for t in range(1, SEQ_LEN):
                start = 0 if t < 32 else (16 if t < 48 else 32)
                ctx = ids[row, start:t].clone()
                if start > 0:
                    ctx[0] = bos
                logits = model(ctx[None]).logits[0, -1].float()
                out[row, t - 1] = F.cross_entropy(logits[None], ids[row, t : t + 1])
    return out


def _short_nll_exact(model, ids, long, bos):
    """The reference short NLL with window-0 targets set to the long NLL: their context is
    the same, so they differ only by float noise, which would decide ``s - l > 0`` at
    random. Checks that the remaining gaps are clear of the threshold 0 used here."""
    short = _short_nll(model, ids, bos)
    assert (short[:, : WINDOW - 1] - long[:, : WINDOW - 1]).abs().max() < 1e-4
    short[:, : WINDOW - 1] = long[:, : WINDOW - 1]
    assert (short[:, WINDOW - 1 :] - long[:, WINDOW - 1 :]).abs().min() > 5e-5  # noise ~4e-6
    return short


def _read_json(path):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def _check_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus, tok):
    out = tmp_path_factory.mktemp("eval")
    models = [
        ("start", build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=0)),
        ("trained", build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=1)),
    ]
    results = evaluate_models(
        [(label, model, tok) for label, model in models],
        out_dir=out,
        tasks=["ppl", "longppl", "passkey", "needle", "vartrack"],
        lengths=[300, 400],
        depths=[0.25, 0.75],
        trials=2,
        seed=1,
        batch_size=3,
        data=[str(corpus)],
        seq_len=SEQ_LEN,
        max_sequences=3,
        bucket_size=BUCKET,
        longppl_window=WINDOW,
        longppl_stride=STRIDE,
        longppl_alpha=0.0,  # permissive thresholds: a random model has key tokens too
        longppl_beta=50.0,
        progress=False,
    )
    return out, results, dict(models)


def test_every_output_file_is_written_and_well_formed(run):
    out, results, _ = run
    names = {p.name for p in out.iterdir()}
    expected = {
        "results.json",
        "results.md",
        "nll_by_position.png",
        "probe_passkey.png",
        "probe_needle.png",
        "probe_vartrack.png",
    }
    assert expected <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left behind
    assert set(results["files"]) == expected
    on_disk = _read_json(out / "results.json")
    assert on_disk == json.loads(json.dumps(results))
    assert [m["label"] for m in on_disk["models"]] == ["start", "trained"]
    for name in expected - {"results.json", "results.md"}:
        _check_png(out / name)
    # two models side by side: heat maps are wider than tall
    image = _check_png(out / "probe_passkey.png")
    assert image.shape[1] > image.shape[0]


def test_nll_plot_has_a_panel_of_differences_from_the_first_model(run, tmp_path):
    from tokenweight.evaluation.plots import nll_by_position_figure, plot_nll_by_position

    out, results, _ = run
    curves = [
        (m["label"], m["perplexity"]["curve"]["positions"], m["perplexity"]["curve"]["mean_nll"])
        for m in results["models"]
    ]
    fig = nll_by_position_figure(curves)
    top, bottom = fig.axes
    assert [line.get_label() for line in top.get_lines()] == ["start", "trained"]
    lines = {line.get_label(): line for line in bottom.get_lines()}
    assert set(lines) == {"start", "trained"}
    assert list(lines["start"].get_ydata()) == [0.0, 0.0]  # the reference: a zero line
    start, trained = (m["perplexity"]["curve"] for m in results["models"])
    assert start["positions"] == trained["positions"]
    kept = [
        (x, t - s)
        for x, t, s in zip(trained["positions"], trained["mean_nll"], start["mean_nll"])
        if t is not None and s is not None  # a bucket without targets has no NLL
    ]
    assert len(kept) >= len(trained["positions"]) - 1
    assert list(lines["trained"].get_xdata()) == [x for x, _ in kept]
    expected = [d for _, d in kept]
    assert any(abs(d) > 1e-3 for d in expected)  # two different models
    assert list(lines["trained"].get_ydata()) == pytest.approx(expected, abs=1e-12)
    # positions missing from the first model's curve are left out of the difference
    xs, ys = trained["positions"], trained["mean_nll"]
    fig = nll_by_position_figure([curves[0], ("shifted", [x + 0.5 for x in xs[:3]] + xs[3:], ys)])
    shifted = next(line for line in fig.axes[1].get_lines() if line.get_label() == "shifted")
    assert list(shifted.get_xdata()) == [x for x, _ in kept if x not in xs[:3]]
    # one model: no difference panel; the file eval wrote has both panels (taller)
    assert len(nll_by_position_figure(curves[:1]).axes) == 1
    single = _check_png(plot_nll_by_position(curves[:1], tmp_path / "one.png"))
    both = _check_png(out / "nll_by_position.png")
    assert both.shape[0] > 1.3 * single.shape[0]


def test_markdown_tables(run):
    out, _, _ = run
    text = (out / "results.md").read_text(encoding="utf-8")
    for header in (
        "| probe | start | trained |",
        "| tokens | start | trained |",
        "| positions | start | trained |",
        "| model | LongPPL | key tokens |",
    ):
        assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    assert len(rows) == SEQ_LEN // BUCKET  # one row per position bucket
    for task in ("passkey", "needle", "vartrack"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        assert row.count("/8)") == 2  # 2 lengths x 2 depths x 2 trials per model
        assert f"![probe_{task}](probe_{task}.png)" in text
    # every table row has as many cells as its header
    for block in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        widths = {line.count("|") for line in block.strip().splitlines()}
        assert len(widths) == 1


def test_perplexity_by_position_equals_cross_entropy_on_full_logits(run, corpus, tok):
    _, results, models = run
    ids = _sequences(tok, corpus, 3)
    for entry in results["models"]:
        nll = _long_nll(models[entry["label"]], ids)
        ppl = entry["perplexity"]
        assert ppl["sequences"] == 3 and ppl["seq_len"] == SEQ_LEN
        assert ppl["tokens"] == nll.numel()
        assert ppl["mean_nll"] == pytest.approx(float(nll.mean()), rel=1e-5)
        assert len(ppl["buckets"]) == SEQ_LEN // BUCKET
        for k, bucket in enumerate(ppl["buckets"]):
            lo, hi = max(k * BUCKET, 1), (k + 1) * BUCKET  # positions; column = position - 1
            part = nll[:, lo - 1 : hi - 1]
            assert bucket["tokens"] == part.numel()
            assert bucket["mean_nll"] == pytest.approx(float(part.mean()), rel=1e-5)
        assert len(ppl["curve"]["positions"]) == len(ppl["curve"]["mean_nll"]) > 4


def test_longppl_equals_per_window_reference(run, corpus, tok):
    _, results, models = run
    ids = _sequences(tok, corpus, 3)
    for entry in results["models"]:
        model = models[entry["label"]]
        long = _long_nll(model, ids)
        short = _short_nll_exact(model, ids, long, tok.bos_token_id)
        key = (short - long > 0.0) & (long < 50.0)
        lp = entry["longppl"]
        assert (lp["window"], lp["stride"], lp["key_tokens_from"]) == (WINDOW, STRIDE, "self")
        assert 0 < lp["key_tokens"] == int(key.sum()) < long.numel()
        assert lp["longppl"] == pytest.approx(math.exp(float(long[key].mean())), rel=1e-4)
        assert lp["perplexity"] == pytest.approx(math.exp(float(long.mean())), rel=1e-4)


def test_probe_accounting(run):
    _, results, _ = run
    for entry in results["models"]:
        for task in ("passkey", "needle", "vartrack"):
            res = entry["probes"][task]
            assert res["total"] == 8 and len(res["samples"]) == 8
            assert res["correct"] == sum(s["correct"] for s in res["samples"])
            assert sum(c["total"] for c in res["cells"]) == 8
            assert {c["total"] for c in res["cells"]} == {2}
            assert res["by_length"]["300"]["total"] == res["by_length"]["400"]["total"] == 4
        assert entry["timing"]["probe_prompts_per_s"] > 0


@pytest.mark.parametrize("argument", ["evaluator", "scorer"])
def test_evaluator_judges_key_tokens_for_every_model(tmp_path, corpus, tok, argument):
    """One evaluator model picks the key tokens for all; ``scorer`` is its old name
    (accepted with a deprecation message, the same results)."""
    import contextlib

    judge = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=0)
    other = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=1)
    old = argument == "scorer"
    warns = pytest.warns(FutureWarning, match="is now called evaluator")
    with warns if old else contextlib.nullcontext():
        results = _longppl_with_one_evaluator(judge, other, tok, corpus, argument)
    assert results["settings"]["longppl_evaluator"] == "judge"
    ids = _sequences(tok, corpus, 2)
    long_judge = _long_nll(judge, ids)
    short_judge = _short_nll_exact(judge, ids, long_judge, tok.bos_token_id)
    key = (short_judge - long_judge > 0.0) & (long_judge < 50.0)
    long_other = _long_nll(other, ids)
    a, b = (m["longppl"] for m in results["models"])
    assert a["key_tokens"] == b["key_tokens"] == int(key.sum()) > 0
    assert a["key_tokens_from"] == b["key_tokens_from"] == "judge"
    assert a["longppl"] == pytest.approx(math.exp(float(long_judge[key].mean())), rel=1e-4)
    assert b["longppl"] == pytest.approx(math.exp(float(long_other[key].mean())), rel=1e-4)


def _longppl_with_one_evaluator(judge, other, tok, corpus, argument):
    return evaluate_models(
        [("judge-itself", judge, tok), ("other", other, tok)],
        out_dir=None,
        tasks=["longppl"],
        data=[str(corpus)],
        seq_len=SEQ_LEN,
        max_sequences=2,
        longppl_window=WINDOW,
        longppl_stride=STRIDE,
        longppl_alpha=0.0,
        longppl_beta=50.0,
        progress=False,
        **{argument: ModelSpec("judge", model=judge, tokenizer=tok)},
    )


def test_evaluator_given_twice_is_refused(tok):
    with pytest.warns(FutureWarning), pytest.raises(TokenWeightError, match="evaluator once"):
        evaluate_models([("m", None, tok)], out_dir=None, evaluator="a", scorer="b")


def test_evaluator_that_is_also_evaluated_runs_its_long_pass_once(monkeypatch, corpus, tok):
    import time

    import tokenweight.evaluation.perplexity as perplexity

    judge = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=0)
    other = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=1)
    calls = []
    real = perplexity.long_context_nll
    pause = 0.3  # every long pass takes at least this long

    def counting(model, *args, **kwargs):
        calls.append(model)
        time.sleep(pause)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(perplexity, "long_context_nll", counting)
    results = evaluate_models(
        [("judge-itself", judge, tok), ("other", other, tok)],
        out_dir=None,
        tasks=["ppl", "longppl"],
        data=[str(corpus)],
        seq_len=SEQ_LEN,
        max_sequences=2,
        longppl_window=WINDOW,
        longppl_stride=STRIDE,
        evaluator=ModelSpec("judge", model=judge, tokenizer=tok),
        progress=False,
    )
    assert [id(m) for m in calls] == [id(judge), id(other)]
    ids = _sequences(tok, corpus, 2)
    expected = math.exp(float(_long_nll(judge, ids).mean()))
    assert results["models"][0]["perplexity"]["perplexity"] == pytest.approx(expected, rel=1e-4)
    # the reused pass is credited with the time it took in the evaluator
    tokens = results["models"][0]["perplexity"]["tokens"]
    assert tokens == ids.shape[0] * (ids.shape[1] - 1)
    for entry in results["models"]:
        timing = entry["timing"]
        assert pause <= timing["perplexity_s"] < pause + 30
        assert timing["perplexity_tokens_per_s"] == pytest.approx(tokens / timing["perplexity_s"])


def _answer(prompt):
    """The expected answer, read from the prompt text."""
    question = prompt.rsplit("\n", 1)[1]
    if question.startswith("What is the pass key"):
        return re.search(r"The pass key is (\d+)\. Remember", prompt).group(1)
    key = re.search(r"magic \w+ for (\S+) mentioned", question).group(1)
    return re.search(rf"for {re.escape(key)} is: (\S+)\.", prompt).group(1)


def test_outputs_are_matched_to_their_prompts(monkeypatch, tmp_path, tok):
    """An oracle answers passkey prompts right and needle prompts wrong; the results must
    say exactly that, whatever order the prompts were decoded in."""
    import tokenweight.evaluation.generate as generate

    seen = []

    def oracle(model, tokenizer, prompts, *, max_new_tokens, batch_size=1, on_done=None):
        outs = []
        for ids in prompts:
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            answer = _answer(prompt)
            outs.append(f" {answer}." if "pass key" in prompt else f" {answer}0.")
        seen.append(len(prompts))
        return outs

    monkeypatch.setattr(generate, "greedy_generate", oracle)
    results = evaluate_models(
        [("m", build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD), tok)],
        out_dir=tmp_path,
        tasks=["needle", "passkey"],
        lengths=[400, 256, 300],
        depths=[0.0, 0.5, 1.0],
        trials=2,
        progress=False,
    )
    probes = results["models"][0]["probes"]
    assert seen == [36]
    assert probes["passkey"]["correct"] == probes["passkey"]["total"] == 18
    assert probes["needle"]["correct"] == 0 and probes["needle"]["total"] == 18
    assert all(s["correct"] for s in probes["passkey"]["samples"])
    assert all(s["output"] == f" {s['answer']}." for s in probes["passkey"]["samples"])


def test_cli_end_to_end(tmp_path, corpus, tok, capsys):
    folder = tmp_path / "tiny"
    build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            f"tiny={folder}",
            "--out",
            str(out),
            "--tasks",
            "ppl,passkey",
            "--lengths",
            "256",
            "--depths",
            "50%",
            "--data",
            str(corpus),
            "--seq-len",
            "64",
            "--max-sequences",
            "2",
            "--bucket-size",
            "32",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    results = _read_json(out / "results.json")
    assert results["models"][0]["label"] == "tiny"
    assert results["models"][0]["source"] == str(folder)
    assert results["settings"]["depths"] == [0.5]
    assert {"results.md", "probe_passkey.png", "nll_by_position.png"} <= set(results["files"])
    assert "| passkey |" in capsys.readouterr().out


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["eval", "x", "--out", str(tmp_path), "--tasks", "passkey,bogus"]) == 2
    assert "unknown evaluation task(s) bogus" in capsys.readouterr().err
    assert main(["eval", "x", "--out", str(tmp_path), "--tasks", "ppl"]) == 2
    assert "--data" in capsys.readouterr().err


def test_duplicate_labels_are_an_error(tok):
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD)
    with pytest.raises(TokenWeightError, match="labels must differ"):
        evaluate_models([("a", model, tok), ("a", model, tok)], out_dir=None, progress=False)


@pytest.mark.parametrize(
    ("text", "label", "source"),
    [
        ("start=smollm2", "start", "smollm2"),
        ("dense:0.75=runs/dense", "dense:0.75", "runs/dense"),
        ("runs/uniform/", "uniform", "runs/uniform/"),
        ("smollm2", "smollm2", "smollm2"),
    ],
)
def test_model_spec_parse(text, label, source):
    spec = ModelSpec.parse(text)
    assert (spec.label, spec.source) == (label, source)


def test_lengths_beyond_a_given_models_positions_are_refused_before_any_call(tok):
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, max_position_embeddings=256)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(TokenWeightError, match=r"'m' has 256 positions.*1000 \(--lengths\)"):
        evaluate_models([("m", model, tok)], out_dir=None, lengths=[1000], progress=False)
    assert calls == []


def test_training_mode_of_a_given_model_is_restored(tok):
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD)
    model.train()
    evaluate_models([("m", model, tok)], out_dir=None, lengths=[300], depths=[0.5], progress=False)
    assert model.training


def _eval_args(*extra):
    from tokenweight.cli import build_parser

    return build_parser("eval").parse_args(["eval", "m", "--out", "o", *extra])


def test_cli_defaults_are_the_eval_config_defaults():
    from tokenweight.commands.evaluate import _eval_config
    from tokenweight.evaluation import EvalConfig

    assert _eval_config(_eval_args()) == EvalConfig()
    assert _eval_config(_eval_args("--data", "d")) == EvalConfig(data=("d",))


def test_cli_options_reach_the_eval_config():
    from tokenweight.commands.evaluate import _eval_config
    from tokenweight.evaluation import EvalConfig

    cfg = _eval_config(
        _eval_args(
            *("--tasks", " Needle,ppl ", "--lengths", "1k,3000", "--depths", "25%,1"),
            *("--trials", "2", "--seed", "7", "--batch-size", "3", "--distractors", "5"),
            *("--hops", "2", "--data", "a", "--data", "b", "--seq-len", "512"),
            *("--max-sequences", "4", "--text-field", "body", "--glob", "*.md"),
            *("--encoding-errors", "replace", "--hf-split", "validation", "--bucket-size", "64"),
            *("--longppl-window", "128", "--longppl-stride", "32"),
            *("--longppl-alpha", "1.5", "--longppl-beta", "3"),
            "--allow-beyond-positions",
        )
    )
    assert cfg == EvalConfig(
        tasks=("needle", "ppl"),
        lengths=(1024, 3000),
        depths=(0.25, 1.0),
        trials=2,
        seed=7,
        batch_size=3,
        distractors=5,
        hops=2,
        data=("a", "b"),
        seq_len=512,
        max_sequences=4,
        text_field="body",
        glob="*.md",
        encoding_errors="replace",
        hf_split="validation",
        bucket_size=64,
        longppl_window=128,
        longppl_stride=32,
        longppl_alpha=1.5,
        longppl_beta=3.0,
        allow_beyond_positions=True,
    )


def test_eval_config_default_tasks_follow_the_data():
    from tokenweight.evaluation import EvalConfig

    assert EvalConfig().tasks == ("passkey", "needle")
    assert EvalConfig(data="corpus.txt").tasks == ("ppl", "longppl", "passkey", "needle")
    assert EvalConfig(data="corpus.txt").data == ("corpus.txt",)
    assert EvalConfig(tasks=["PPL", "ppl"], data=["x"]).tasks == ("ppl",)


def test_eval_settings_are_named_once(tok):
    from tokenweight.evaluation import EvalConfig

    with pytest.raises(TokenWeightError, match=r"unknown evaluation setting.*lenghts"):
        evaluate_models([("m", None, tok)], out_dir=None, lenghts=[300])
    with pytest.raises(TokenWeightError, match="either as config or as keywords"):
        evaluate_models([("m", None, tok)], out_dir=None, config=EvalConfig(), seed=1)


def test_config_and_keywords_give_the_same_results(tok):
    from tokenweight.evaluation import EvalConfig

    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=0)
    settings = {"tasks": ["passkey"], "lengths": [300], "depths": [0.5], "seed": 3}
    by_keywords = evaluate_models([("m", model, tok)], out_dir=None, progress=False, **settings)
    by_config = evaluate_models(
        [("m", model, tok)], out_dir=None, config=EvalConfig(**settings), progress=False
    )
    assert by_keywords["settings"] == by_config["settings"]
    assert by_keywords["settings"]["tasks"] == ["passkey"]
    keyword_probes = by_keywords["models"][0]["probes"]["passkey"]
    config_probes = by_config["models"][0]["probes"]["passkey"]
    assert keyword_probes["samples"] == config_probes["samples"]


def test_an_eval_cut_off_while_plotting_can_be_rerun_into_the_same_folder(
    run, tmp_path, monkeypatch
):
    """results.json is written before the figures: a folder left by a write cut off while
    plotting carries the record that lets a rerun replace it."""
    from tokenweight.evaluation import report
    from tokenweight.evaluation.runner import _check_out_dir

    _, results, _ = run
    out = tmp_path / "cut"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tokenweight.evaluation.plots.plot_probe_heatmap", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write_outputs(json.loads(json.dumps(results)), out)
    assert (out / "results.json").is_file() and not (out / "results.md").exists()
    _check_out_dir(out)  # accepted: an earlier evaluation
    monkeypatch.undo()
    files = report.write_outputs(json.loads(json.dumps(results)), out)
    assert {p.name for p in out.iterdir()} == set(files)


def test_longppl_evaluator_option_and_its_old_name():
    from tokenweight.commands.evaluate import _evaluator

    assert _evaluator(_eval_args()) is None
    assert _evaluator(_eval_args("--longppl-evaluator", "start=m")) == "start=m"
    with pytest.warns(FutureWarning, match="--longppl-scorer is now called --longppl-evaluator"):
        assert _evaluator(_eval_args("--longppl-scorer", "start=m")) == "start=m"
    both = _eval_args("--longppl-evaluator", "a", "--longppl-scorer", "b")
    with pytest.warns(FutureWarning), pytest.raises(TokenWeightError, match="once"):
        _evaluator(both)
