"""Modules that moved into the layer folders still import from their old paths: the same
module object, with a FutureWarning that names the new path. Our own code and docs use
only the new paths."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import tokenweight
from helpers.distributed import subprocess_env
from tokenweight.infra.moved import MOVED, new_name

ROOT = Path(tokenweight.__file__).resolve().parent
REPO = ROOT.parent.parent

CHECK = r"""
import importlib, json, sys, warnings
from tokenweight.infra.moved import MOVED
out = {}
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    out[old] = {
        "same": module is importlib.import_module(new) and sys.modules[old] is module,
        "spec": module.__spec__.name,
        "warnings": [str(w.message) for w in caught if w.category is FutureWarning],
    }
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from tokenweight.losses.chunked import check_labels  # a submodule of a moved package
    import tokenweight.core.losses.chunked as chunked
out["submodule"] = {
    "same": sys.modules["tokenweight.losses.chunked"] is chunked
    and check_labels is chunked.check_labels,
    "warnings": [str(w.message) for w in caught],
}
import tokenweight
out["attribute"] = tokenweight.scoring is importlib.import_module("tokenweight.core.scoring")
print(json.dumps(out))
"""


def test_every_old_path_is_the_new_module_and_warns():
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for old, new in MOVED.items():
        assert out[old]["same"], old
        assert out[old]["spec"] == new, old  # the module keeps its own name
        assert any(f"`{old}` moved to `{new}`" in w for w in out[old]["warnings"]), out[old]
    assert out["submodule"]["same"]
    assert any("tokenweight.losses.chunked` moved" in w for w in out["submodule"]["warnings"])
    assert out["attribute"]


def test_old_files_are_gone_and_targets_exist():
    for old, new in MOVED.items():
        rel = Path(*old.split(".")[1:])
        assert not (ROOT / f"{rel}.py").exists() and not (ROOT / rel).is_dir(), old
        rel_new = Path(*new.split(".")[1:])
        assert (ROOT / f"{rel_new}.py").is_file() or (ROOT / rel_new / "__init__.py").is_file()
    assert new_name("tokenweight.core.weighting") is None
    assert new_name("tokenweight.losses.nll") == "tokenweight.core.losses.nll"
    assert new_name("tokenweight.lossesx") is None


def test_our_code_and_docs_use_only_the_new_paths():
    old = "|".join(re.escape(k) for k in sorted(MOVED, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])({old})(?![\w-])")
    files = [
        *ROOT.rglob("*.py"),
        *(REPO / "tests").rglob("*.py"),
        *(REPO / "examples").glob("*"),
        *(REPO / "benchmarks").glob("*.py"),
        *(REPO / "docs").glob("*.md"),
        REPO / "README.md",
    ]
    found = []
    for path in files:
        if path.name in ("moved.py", "test_moved_paths.py") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            # imports, and dotted names in strings (monkeypatch targets, lazy tables)
            tree = ast.parse(text)
            names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
                a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
            ]
            # (a format tag, e.g. STUDY_FORMAT = "tokenweight.study", names a file kind)
            tags = {
                id(n.value)
                for n in ast.walk(tree)
                if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id.endswith("FORMAT") for t in n.targets)
            }
            names += [
                n.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in tags
            ]
            found += [f"{path.name}: {m.group(1)}" for s in names for m in pattern.finditer(s)]
        else:
            found += [f"{path.name}: {m.group(1)}" for m in pattern.finditer(text)]
    assert found == []


def test_file_formats_keep_their_names():
    """A format tag names a file kind, not a module: files written before the move
    (study.json, dependencies.json) are still read."""
    from tokenweight.workflows.study import STUDY_FORMAT
    from tokenweight.workflows.synth import SYNTH_FORMAT

    assert (STUDY_FORMAT, SYNTH_FORMAT) == ("tokenweight.study", "tokenweight.synth-dependencies")


def test_the_package_keeps_the_names_of_the_former_modules():
    """``tokenweight.workflows.study`` exports every public name the single module had, and
    the old paths (``tokenweight.study``, ``tokenweight.study_cost``,
    ``tokenweight.study_verdict``) are the package and its ``cost`` and ``verdict``."""
    import importlib
    import warnings

    from tokenweight.workflows import study
    from tokenweight.workflows.study import cost, verdict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old paths say where they moved
        old = {
            m: importlib.import_module(f"tokenweight.{m}")
            for m in ("study", "study_cost", "study_verdict")
        }
    assert old == {"study": study, "study_cost": cost, "study_verdict": verdict}
    former = {
        study: "CheckedStudy RunSpec StudyConfig check_study load_study_config plan_text "
        "run_study study_results write_study_report STUDY_FORMAT EVAL_MARKER",
        cost: "CALIBRATION_STEPS Part Timings calibrate dry_run estimate estimate_text",
        verdict: "LONG_RANGE MIN_KEY_SHARE MIN_TARGETS OTHER PROBES apply_holm bottom_line "
        "context_verdict context_warning",
    }
    missing = [
        (m.__name__, n) for m, names in former.items() for n in names.split() if not hasattr(m, n)
    ]
    assert missing == []
    assert set(study.__all__) == set(former[study].split())


def test_split_modules_keep_their_names_where_they_were():
    """``evaluation.runner`` and ``workflows.selection`` were split by job; every public name
    they had is still an attribute there (and of ``tokenweight.evaluation``), the very object
    of the module that now defines it."""
    import tokenweight.evaluation as evaluation
    from tokenweight.evaluation import config, runner
    from tokenweight.workflows import selection, selection_report, selection_stats

    defined = {
        (runner, "EvalConfig"): config,
        (runner, "ModelSpec"): config,
        (evaluation, "EvalConfig"): config,
        (evaluation, "ModelSpec"): config,
        (evaluation, "evaluate_models"): runner,
        (selection, "SELECTION_FILE"): selection_report,
        **{
            (selection, n): selection_stats
            for n in [
                "KEY_GAIN",
                "KEY_LONG",
                "STATISTICS",
                "TargetStats",
                "aggregate",
                "choose",
                "target_stats",
            ]
        },
    }
    moved = {
        (m.__name__, n) for (m, n), home in defined.items() if getattr(m, n) is not getattr(home, n)
    }
    assert moved == set()
    stays = {runner: "evaluate_models run_evaluation", selection: "SelectionResult select_dataset"}
    assert [
        (m.__name__, n) for m, ns in stays.items() for n in ns.split() if not hasattr(m, n)
    ] == []
    # the task name lists are read from the table at every use, as before
    from tokenweight.evaluation.tasks import TEXT, task_names

    assert (task_names(), task_names(TEXT)) == (runner.ALL_TASKS, runner.TEXT_TASKS)
    assert task_names() == evaluation.ALL_TASKS
