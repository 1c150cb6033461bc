"""The extension tables: a dummy scheme preset and transform registered in a test show up
in parsing, ``str``, error messages and the ``weights`` command; no name of a table appears
as a string literal outside the table's module (except the listed config defaults)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from tokenweight import TokenWeightError
from tokenweight.cli import main
from tokenweight.core.weighting import (
    PRESETS,
    TRANSFORM_KINDS,
    Preset,
    Scheme,
    TransformKind,
    compute_weights,
    register_preset,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "tokenweight"
LONG = torch.tensor([[0.5, 3.0, 1.2, 0.1, 6.0, 2.0]])
SHORT = torch.tensor([[0.6, 7.5, 1.1, 0.1, 6.2, 5.5]])


def string_literals(names: set[str]) -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of every string constant in ``src/tokenweight`` equal to one
    of ``names`` (docstrings never are: they are longer than a name)."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.strip().lower() in names:
                hits.append((str(path.relative_to(SRC)), node.lineno, text))
    return hits


# ----------------------------------------------------------------- scheme presets
@pytest.fixture
def softcap():
    """A dummy preset ``softcap:GAMMA``: ``min(|l - s|, gamma)``, softmax-normalized."""
    preset = Preset(
        "softcap",
        lambda gamma: Scheme(
            "difference", ("absolute",), truncation=gamma, normalization="softmax"
        ),
        ("gamma",),
        example="softcap:3",
    )
    yield register_preset(preset)
    del PRESETS["softcap"]  # the table is global: leave it as it was


def test_dummy_preset_parses_prints_and_computes(softcap):
    scheme = Scheme.parse("softcap:3")
    assert scheme == Scheme.parse("softcap:gamma=3")
    assert str(scheme) == "softcap:3" and Scheme.parse(str(scheme)) == scheme
    d = (LONG - SHORT).abs().clamp(max=3.0)
    expected = d.shape[1] * torch.softmax(d, dim=-1)  # independent: n * softmax(min(|d|, 3))
    assert torch.allclose(compute_weights(LONG, SHORT, scheme), expected, atol=1e-6)


def test_dummy_preset_in_error_messages(softcap):
    with pytest.raises(TokenWeightError, match=r"unknown scheme 'magic'.*softcap:GAMMA"):
        Scheme.parse("magic")
    with pytest.raises(TokenWeightError, match="'softcap' needs gamma"):
        Scheme.parse("softcap")
    with pytest.raises(TokenWeightError, match="already registered"):
        register_preset(softcap)


def test_dummy_preset_shown_by_weights_command(softcap, capsys):
    assert main(["weights"]) == 0
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line}
    assert {"softcap:3", "uniform", "dense:0.75", "npmi:c=2,kappa=0.25"} <= rows


def test_paper_presets_are_the_table():
    assert list(PRESETS) == ["uniform", "dense", "sparse", "longce", "ppmi", "npmi", "rho1"]
    with pytest.raises(TokenWeightError) as info:
        Scheme.parse("nope:1")
    message = str(info.value)
    for preset in PRESETS.values():
        assert preset.usage in message


def test_dummy_transform_registered(monkeypatch):
    """A ``square`` transform: ``d * d``, range ``[0, max(lo^2, hi^2)]``."""

    def bounds(lo: float, hi: float, c: float | None) -> tuple[float, float]:
        low = 0.0 if lo <= 0 <= hi else min(lo * lo, hi * hi)
        return low, max(lo * lo, hi * hi)

    monkeypatch.setitem(
        TRANSFORM_KINDS, "square", TransformKind("square", lambda d, c: d.mul_(d), bounds)
    )
    scheme = Scheme.parse("custom:comparison=difference,transforms=square,normalization=l1")
    d = (LONG - SHORT) ** 2
    assert torch.allclose(compute_weights(LONG, SHORT, scheme), d.shape[1] * d / d.sum(), atol=1e-5)
    # without a non-negative transform the same scheme is refused (the range check reads it)
    with pytest.raises(TokenWeightError, match="can be negative"):
        Scheme.parse("custom:comparison=difference,transforms=minus,normalization=l1")
    monkeypatch.delitem(TRANSFORM_KINDS, "square")
    with pytest.raises(TokenWeightError, match=r"unknown transform 'square'; allowed: .*shift C"):
        Scheme("difference", ("square",))


def test_preset_and_transform_names_only_in_weighting():
    names = set(PRESETS) | set(TRANSFORM_KINDS)
    # Config defaults that name the baseline scheme (a value a user could write too), and
    # selection's unrelated "max" (a summary statistic of its report).
    allowed = {
        ("workflows/pipeline.py", "uniform"),
        ("workflows/study/config.py", "uniform"),
        ("workflows/selection.py", " max "),
        ("workflows/selection_report.py", "max"),
    }
    hits = [
        (f, line, text)
        for f, line, text in string_literals(names)
        if f != "core/weighting.py" and (f, text) not in allowed
    ]
    assert hits == []


# ----------------------------------------------------------------- scorer kinds
def _half_scorer(inputs):
    """The dummy kind's scorer: ``s = l / 2`` (so ``l - s = l / 2``)."""
    return lambda batch, long_nll, model=None: long_nll.detach() / 2


@pytest.fixture
def half_kind():
    from tokenweight.core import scorer_kinds

    yield scorer_kinds.register_scorer_kind(
        scorer_kinds.ScorerKind(
            "half",
            "half the long-context NLL (a test dummy)",
            _half_scorer,
            describe="half the long-context NLL",
        )
    )
    del scorer_kinds.SCORERS["half"]  # the table is global: leave it as it was


def _train_config(**scorer):
    from tokenweight.training.config import Config

    return Config.from_dict(
        {"model": {"source": "m"}, "data": {"path": "d"}, "scheme": "dense:0.5", "scorer": scorer}
    )


def test_dummy_scorer_kind_in_config_validation_and_train(half_kind):
    config = _train_config(kind="half")
    assert config.used_scorer is half_kind and config.scorer_kind == "half"
    from tokenweight.core.scorer_kinds import ScorerInputs

    scorer = config.used_scorer.build(ScorerInputs())
    long = torch.tensor([[2.0, 4.0]])
    assert torch.equal(scorer({}, long), torch.tensor([[1.0, 2.0]]))
    # the kind uses no model and no window: both refused / not required like `precomputed`
    with pytest.raises(TokenWeightError, match=r"scorer\.model: only used with scorer\.kind"):
        _train_config(kind="half", model="x")
    with pytest.raises(TokenWeightError, match=r"expected one of .*precomputed, none, half"):
        _train_config(kind="halve")


def test_dummy_scorer_kind_in_help_errors_study_and_report(half_kind, capsys):
    from tokenweight.core.scoring import build_scorer
    from tokenweight.workflows.pipeline import PipelineConfig
    from tokenweight.workflows.pipeline_report import _summary_section
    from tokenweight.workflows.study import StudyConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "half the long-context NLL (a test dummy)" in capsys.readouterr().out
    with pytest.raises(TokenWeightError, match=r"unknown scorer 'halve'; allowed: .*, half"):
        build_scorer("halve")
    study = StudyConfig(runs=[{"scheme": "uniform"}, {"scheme": "dense:0.75", "scorer": "half"}])
    study.validate()
    assert [r.label() for r in study.run_specs] == ["uniform", "dense:0.75 (half)"]
    pipeline = PipelineConfig(scorer="half")
    text = "\n".join(_summary_section(pipeline, Path("/nonexistent"), "cpu", Path("m"), Path("c")))
    assert f"came from {pipeline.window}-token windows of half the long-context NLL." in text


def test_scorer_kinds_table_and_old_name():
    from tokenweight.core.scorer_kinds import SCORERS, scorer_kind

    assert list(SCORERS) == ["self", "model", "reference", "precomputed", "none"]
    with pytest.warns(FutureWarning, match="'frozen' is now called 'precomputed'"):
        assert scorer_kind("frozen").name == "precomputed"
    from tokenweight.workflows.study import StudyConfig

    with pytest.warns(FutureWarning, match=r"runs\[1\]\.scorer: 'frozen'"):
        study = StudyConfig(runs=[{"scheme": "uniform"}, {"scheme": "dense:1", "scorer": "frozen"}])
        study.validate()
    assert study.run_specs[1].scorer == "precomputed"


def compared_literals(names: set[str]) -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of string constants equal to one of ``names`` used in a
    comparison (``x == "self"``, ``x in ("self", "model")``): a dispatch on the name."""
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for part in (node.left, *node.comparators):
                for sub in ast.walk(part):
                    text = sub.value if isinstance(sub, ast.Constant) else None
                    if isinstance(text, str) and text.strip().lower() in names:
                        hits.append((str(path.relative_to(SRC)), sub.lineno, text))
    return hits


def test_scorer_kind_names_only_in_their_table():
    from tokenweight.core.scorer_kinds import SCORERS

    names = set(SCORERS) | {a for k in SCORERS.values() for a in k.aliases}
    # "self", "model" and "none" are ordinary words of other settings too (the "model"
    # config section, reduction="none"): for them only a comparison is a dispatch on the
    # kind; the other names may not appear at all.
    words = {"self", "model", "none"}
    allowed = {
        ("training/run.py", "reference"),  # ModelScorer's keyword: the model being trained
        ("evaluation/report.py", "self"),  # the LongPPL evaluator "self", not a scorer
        ("core/weighting.py", "none"),  # "none": no normalization / no transforms
    }
    found = string_literals(names - words) + compared_literals(names)
    hits = [
        (f, line, text)
        for f, line, text in found
        if f != "core/scorer_kinds.py" and (f, text.strip().lower()) not in allowed
    ]
    assert hits == []


# ----------------------------------------------------------------- eval tasks
def _doubled_passkey_spec(rng, copies=2):
    """The dummy probe's prompt: the pass-key probe's, its needle said ``copies`` times."""
    from tokenweight.evaluation.probes import passkey_spec

    spec = passkey_spec(rng)
    spec.target = spec.target * copies
    return spec


def _mean_nll_over_stride(inputs):
    """The dummy text task: mean long-context NLL of every ``nll_stride``-th target."""
    long, mask = inputs.long, inputs.seqs.target_mask
    step = inputs.cfg.nll_stride
    picked = long[:, ::step][mask[:, ::step]]
    return {"mean_nll": float(picked.mean()), "targets": int(picked.numel())}


def _stride_section(entries, task):
    return ["", f"## {task.label}", ""] + [
        f"- {e['label']}: {e[task.key]['mean_nll']:.4f}" for e in entries
    ]


@pytest.fixture
def dummy_tasks():
    """A dummy probe ``echo`` (the pass key, said ``--copies`` times) and a dummy text task
    ``strided`` (mean NLL of every ``--nll-stride``-th target), each with a setting;
    registered in the one table and removed after the test."""
    from tokenweight.evaluation.tasks import (
        EVAL_TASKS,
        PROBE,
        TEXT,
        Column,
        EvalTask,
        TaskSetting,
        register_eval_task,
    )

    def at_least(low):
        def check(value, name):
            if not isinstance(value, int) or value < low:
                raise TokenWeightError(f"{name} must be an integer >= {low}, got {value!r}")

        return check

    probe = register_eval_task(
        EvalTask(
            "echo",
            PROBE,
            "the pass key said several times (a test dummy)",
            _doubled_passkey_spec,
            settings=(
                TaskSetting("copies", 2, "echo: needle copies (a dummy)", check=at_least(1)),
            ),
        )
    )
    text = register_eval_task(
        EvalTask(
            "strided",
            TEXT,
            "mean NLL of every n-th target (a test dummy)",
            _mean_nll_over_stride,
            settings=(
                TaskSetting("nll_stride", 3, "strided: take every n-th target", check=at_least(1)),
            ),
            key="strided_nll",
            label="strided NLL",
            columns=(Column("strided NLL", "mean_nll", 3), Column("strided targets", "targets")),
            section=_stride_section,
        )
    )
    yield probe, text
    del EVAL_TASKS["echo"], EVAL_TASKS["strided"]  # the table is global: leave it as it was


def test_dummy_tasks_in_eval_config_and_its_errors(dummy_tasks):
    from tokenweight.evaluation import ALL_TASKS, PROBE_TASKS
    from tokenweight.evaluation.runner import EvalConfig

    assert ALL_TASKS[-1] == "echo" and "strided" in ALL_TASKS and PROBE_TASKS[-1] == "echo"
    cfg = EvalConfig(tasks=("echo", "strided", "needle"), data="x", copies=3, nll_stride=5)
    assert (cfg.probe_tasks, cfg.text_tasks) == (("echo", "needle"), ("strided",))
    assert (cfg.copies, cfg.nll_stride) == (3, 5)
    assert cfg.as_dict()["copies"] == 3 and cfg.as_dict()["nll_stride"] == 5
    assert EvalConfig().copies == 2 and EvalConfig().nll_stride == 3  # the table's defaults
    with pytest.raises(TokenWeightError, match=r"choose from ppl, longppl, strided, .*, echo"):
        EvalConfig(tasks=("echoo",))
    with pytest.raises(TokenWeightError, match=r"copies must be an integer >= 1, got 0"):
        EvalConfig(copies=0)
    with pytest.raises(TokenWeightError, match=r"task\(s\) strided need evaluation text"):
        EvalConfig(tasks=("strided",))
    with pytest.raises(TokenWeightError, match=r"unknown evaluation setting.*known: .*copies"):
        EvalConfig(copys=1)


def test_dummy_tasks_in_eval_help_and_cli_errors(dummy_tasks, capsys, tmp_path):
    from tokenweight.commands.evaluate import _eval_config
    from tokenweight.evaluation.runner import EvalConfig

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "the pass key said several times (a test dummy)" in text
    assert "mean NLL of every n-th target (a test dummy)" in text
    assert "--copies COPIES" in text and "--nll-stride NLL_STRIDE" in text
    assert "echo: needle copies (a dummy)" in text
    from tokenweight.cli import build_parser

    args = build_parser("eval").parse_args(
        ["eval", "m", "--out", "o", "--tasks", "echo", "--copies", "4", "--nll-stride", "2"]
    )
    assert _eval_config(args) == EvalConfig(tasks=("echo",), copies=4, nll_stride=2)
    code = main(["eval", "m", "--out", str(tmp_path / "o"), "--tasks", "echoo"])
    assert code == 2
    assert "unknown evaluation task(s) echoo; choose from" in capsys.readouterr().err


def test_dummy_tasks_run_and_show_in_results_md(dummy_tasks, tmp_path):
    """Both dummies run through ``evaluate_models`` from their table entries alone: the
    probe's prompt holds the needle ``copies`` times, the text task's number is an
    independent mean over the model's own NLL, and ``results.md`` shows both."""
    import torch.nn.functional as F

    from helpers.corpus import CORPUS_DIR
    from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
    from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
    from tokenweight.evaluation import evaluate_models
    from tokenweight.evaluation.sequences import load_eval_sequences

    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=0)
    corpus = CORPUS_DIR / "orchard.txt"
    results = evaluate_models(
        [("m", model, tok)],
        out_dir=tmp_path / "eval",
        tasks=["echo", "strided"],
        lengths=[300],
        depths=[0.5],
        data=[str(corpus)],
        seq_len=64,
        max_sequences=2,
        copies=3,
        nll_stride=4,
        progress=False,
    )
    entry = results["models"][0]
    (sample,) = entry["probes"]["echo"]["samples"]
    assert results["settings"]["copies"] == 3 and results["settings"]["nll_stride"] == 4
    seqs = load_eval_sequences([str(corpus)], tok, seq_len=64, max_sequences=2)
    ids = seqs.input_ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    picked = nll[:, ::4][seqs.target_mask[:, ::4]]
    assert entry["strided_nll"]["targets"] == picked.numel()
    assert entry["strided_nll"]["mean_nll"] == pytest.approx(picked.mean().item(), rel=1e-4)
    from tokenweight.evaluation.probes import make_probe

    probe = make_probe(tok, "echo", 300, 0.5, copies=3)
    assert probe.prompt.count(probe.needle) == 3 and sample["answer"] == probe.answers[0]
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "| echo |" in md and "### echo: accuracy by prompt length" in md
    assert "## strided NLL" in md and f"- m: {picked.mean():.4f}" in md
    assert (tmp_path / "eval" / "probe_echo.png").is_file()


def test_dummy_tasks_in_pipeline_and_study_reports(dummy_tasks, tmp_path):
    import json

    import numpy as np

    from tokenweight.workflows.pipeline import PipelineConfig
    from tokenweight.workflows.pipeline_report import _eval_section
    from tokenweight.workflows.study import StudyConfig
    from tokenweight.workflows.study.stats import probe_differences

    StudyConfig(probes=["echo"]).validate()
    with pytest.raises(TokenWeightError, match=r"probes: unknown \['strided'\]; .*, echo"):
        StudyConfig(probes=["strided"]).validate()  # a text task is not a probe
    assert "echo" not in PipelineConfig().probes  # not a default probe
    # the pipeline report: the text task's columns and the probe's, ppl/longppl as before
    (tmp_path / "eval").mkdir()
    results = {
        "settings": {"tasks": ["ppl", "longppl", "strided", "echo"]},
        "models": [
            {
                "label": "start",
                "perplexity": {"perplexity": 12.345},
                "strided_nll": {"mean_nll": 2.5, "targets": 7},
                "probes": {"echo": {"correct": 2, "total": 3}},
            },
        ],
    }
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    table = "\n".join(_eval_section(tmp_path, ["start"]))
    header = (
        "| model | perplexity | LongPPL | key tokens | strided NLL | strided targets "
        "| echo (correct) |"
    )
    assert header in table
    assert "| start | 12.35 | - | - | 2.500 | 7 | 2/3 |" in table
    assert "ppl (correct)" not in table and "strided (correct)" not in table
    # the study report: the probe's row, under its label
    config = StudyConfig(runs=[{"scheme": "uniform"}, {"scheme": "dense:0.75"}], seeds=[0])
    (tmp_path / "probes.json").write_text(json.dumps([{"task": "echo"}] * 2))
    np.save(tmp_path / "0-0-probes.npy", np.array([0, 1], np.int8))
    np.save(tmp_path / "1-0-probes.npy", np.array([1, 1], np.int8))
    (row,) = probe_differences(config, tmp_path)
    assert row["metric"] == "probe echo (accuracy)" and row["diff"] == 0.5


def test_old_probe_names_keep_working():
    """``PROBES``, ``ProbeTask`` (old-form specs called with distractors and hops) and
    ``TASKS`` (with a deprecation message) read and write the one table."""
    import random

    from tokenweight.evaluation import probes
    from tokenweight.evaluation.tasks import EVAL_TASKS, PROBE

    calls = []

    def old_spec(rng, distractors, hops):
        calls.append((distractors, hops))
        return probes.passkey_spec(rng)

    probes.PROBES["old"] = probes.ProbeTask("old", "an old-style probe", old_spec)
    try:
        assert EVAL_TASKS["old"].kind == PROBE and "old" in probes.PROBE_TASKS
        spec = probes._spec("old", random.Random(3), {"hops": 6})
        assert spec == probes.passkey_spec(random.Random(3)) and calls == [(3, 6)]
    finally:
        del probes.PROBES["old"]
    assert "old" not in EVAL_TASKS
    with pytest.warns(FutureWarning, match="TASKS is now called PROBE_TASKS"):
        from tokenweight.evaluation import TASKS
    assert TASKS == probes.PROBE_TASKS
    assert list(probes.PROBES) == list(probes.PROBE_TASKS)
    with pytest.raises(KeyError):
        probes.PROBES["ppl"]  # a text task is not a probe


def test_eval_task_names_only_in_their_table():
    from tokenweight.evaluation.tasks import EVAL_TASKS

    # "longppl" also names the metric: its function (``metrics.longppl``, listed in the
    # lazy imports) and the number in its result (``LongPPLResult.as_dict``), which the
    # LongPPL section and the metric's own error message read; the study's metric
    # "LongPPL key tokens" (its masks, its figure) is its own. None of these selects a task.
    allowed = {
        ("evaluation/__init__.py", "longppl"),
        ("evaluation/metrics.py", "longppl"),
        ("evaluation/metrics.py", "longppl "),
        ("evaluation/report.py", "longppl"),
        ("workflows/study/report.py", "longppl"),
    }
    hits = [
        (f, line, t)
        for f, line, t in string_literals(set(EVAL_TASKS))
        if f != "evaluation/tasks.py" and (f, t.lower()) not in allowed
    ]
    assert hits == []
