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
        ("workflows/selection.py", "max"),
        ("workflows/selection.py", " max "),
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


# ----------------------------------------------------------------- probe tasks
@pytest.fixture
def echo_probe():
    """A dummy probe ``echo``: the pass-key probe's prompt under another name."""
    from tokenweight.evaluation import probes

    task = probes.ProbeTask(
        "echo", "the pass key again (a test dummy)", probes.PROBES["passkey"].spec
    )
    probes.PROBES["echo"] = task
    yield task
    del probes.PROBES["echo"]  # the table is global: leave it as it was


def test_dummy_probe_in_eval_config_help_study_and_reports(echo_probe, capsys, tmp_path):
    import json
    import random

    from tokenweight.evaluation.probes import _spec
    from tokenweight.evaluation.runner import EvalConfig
    from tokenweight.workflows.pipeline_report import _eval_section
    from tokenweight.workflows.study import StudyConfig

    # the probe's prompt comes from its table entry (the same draws as passkey's)
    ours, theirs = _spec("echo", random.Random(3), 0, 0), _spec("passkey", random.Random(3), 0, 0)
    assert ours == theirs
    assert EvalConfig(tasks=("echo", "needle")).probe_tasks == ("echo", "needle")
    with pytest.raises(TokenWeightError, match=r"choose from .*vartrack, echo"):
        EvalConfig(tasks=("echoo",))
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "the pass key again (a test dummy)" in capsys.readouterr().out
    StudyConfig(probes=["echo"]).validate()
    # reports: the pipeline report shows it as a probe column, ppl/longppl are not probes
    (tmp_path / "eval").mkdir()
    results = {
        "settings": {"tasks": ["ppl", "longppl", "echo"]},
        "models": [
            {"label": "start", "probes": {"echo": {"correct": 2, "total": 3}}},
        ],
    }
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    table = "\n".join(_eval_section(tmp_path, ["start"]))
    assert "| echo (correct) |" in table and "2/3" in table
    assert "ppl (correct)" not in table


def test_probe_names_only_in_their_table():
    from tokenweight.evaluation.probes import PROBES

    hits = [
        (f, line, t) for f, line, t in string_literals(set(PROBES)) if f != "evaluation/probes.py"
    ]
    assert hits == []
