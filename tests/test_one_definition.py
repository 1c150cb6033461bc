"""Facts defined once: shared values are imported from the module that owns them, never
restated or imported through a module that merely uses them."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
from pathlib import Path

import pytest

import tokenweight

ROOT = Path(tokenweight.__file__).resolve().parent


@functools.cache
def _sources() -> dict[str, ast.Module]:
    """Every module of the package, parsed once per test process."""
    return {
        path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(ROOT.rglob("*.py"))
    }


def test_ignore_index_comes_from_constants_and_is_never_written_out():
    imported_from, literals = [], []
    for name, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(
                a.name == "IGNORE_INDEX" for a in node.names
            ):
                imported_from.append((name, node.module))
            if (
                isinstance(node, ast.UnaryOp)
                and isinstance(node.op, ast.USub)
                and isinstance(node.operand, ast.Constant)
                and node.operand.value == 100
            ):
                literals.append(f"{name}:{node.lineno}")
    assert imported_from and {m for _, m in imported_from} == {"tokenweight.infra.constants"}, [
        x for x in imported_from if x[1] != "tokenweight.infra.constants"
    ]
    assert [x.split(":")[0] for x in literals] == ["infra/constants.py"], literals


def test_held_out_documents_are_named_once():
    from tokenweight.data.corpora import HELD_OUT
    from tokenweight.workflows.pipeline import PipelineConfig

    assert PipelineConfig().held_out == list(HELD_OUT)
    where = {
        name
        for name, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in HELD_OUT
    }
    assert where == {"data/corpora.py"}


def test_no_module_imports_a_private_name_of_another():
    """A helper two modules share is public in one of them (e.g. ``training.loss.timed_score``)."""
    private = {
        (name, node.module, alias.name)
        for name, tree in _sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tokenweight")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    }
    assert private == set()


def _library_defaults(target: str) -> dict[str, object]:
    """Keyword defaults of a function, or field defaults of a dataclass."""
    module, name = target.split(":")
    obj = getattr(importlib.import_module(module), name)
    if dataclasses.is_dataclass(obj):
        return {
            f.name: f.default_factory()
            if f.default_factory is not dataclasses.MISSING
            else f.default
            for f in dataclasses.fields(obj)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    return {
        k: p.default
        for k, p in inspect.signature(obj).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _option_defaults(command: str) -> dict[str, object]:
    from tokenweight.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices[command]._actions if a.option_strings}


@pytest.mark.parametrize(
    ("command", "target", "resolved_later"),
    [
        ("score", "tokenweight.data.score:score_dataset", ()),
        ("prepare", "tokenweight.data.prepare:prepare_dataset", ()),
        ("select", "tokenweight.workflows.selection:select_dataset", ()),
        ("memory", "tokenweight.training.memory:estimate_memory", ()),
        # --span None: 8, or 2 for --content facts (SynthConfig's default is the 8)
        ("synth", "tokenweight.workflows.synth:SynthConfig", ("span",)),
    ],
)
def test_cli_defaults_are_the_library_defaults(command, target, resolved_later):
    """A command's options default to what the function or config it calls defaults to
    (the command modules cannot import them: ``--help`` stays free of numpy and torch).
    ``eval``'s are checked against ``EvalConfig`` in tests/test_eval_runner.py."""
    library, options = _library_defaults(target), _option_defaults(command)
    shared = sorted(set(library) & set(options) - set(resolved_later))
    assert len(shared) >= 4, shared
    assert {k: options[k] for k in shared} == {k: library[k] for k in shared}


@pytest.mark.parametrize(
    ("command", "target"),
    [
        ("prepare", "tokenweight.data.prepare:prepare_dataset"),
        ("score", "tokenweight.data.score:score_dataset"),
        ("select", "tokenweight.workflows.selection:select_dataset"),
    ],
)
def test_every_option_is_a_parameter_of_the_function_the_command_runs(command, target):
    """These commands hand every option to their function by name (``call_with_options``),
    which refuses an option it has no parameter for."""
    from tokenweight.commands.options import call_with_options

    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    actions = [*_option_actions(command).values(), *_positionals(command)]
    dests = {a.dest for a in actions if a.default is not argparse.SUPPRESS}  # not --help
    assert dests <= set(inspect.signature(function).parameters), dests
    seen = {}
    args = argparse.Namespace(command=command, _run=None, **{d: d for d in dests})
    assert call_with_options(lambda **kw: seen.update(kw) or 7, args) == 7
    assert seen == {d: d for d in dests}
    with pytest.raises(TypeError, match=r"no parameter for option\(s\) \['colour'\]"):
        call_with_options(function, argparse.Namespace(**{d: d for d in dests}, colour=1))


def _positionals(command: str) -> list[argparse.Action]:
    from tokenweight.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if not a.option_strings]


def test_probe_settings_have_one_default():
    from tokenweight.evaluation import EvalConfig
    from tokenweight.evaluation.probes import DISTRACTORS, HOPS, make_probe, make_probes

    options = _option_defaults("eval")
    for function in (make_probe, make_probes):
        params = inspect.signature(function).parameters
        assert (params["distractors"].default, params["hops"].default) == (DISTRACTORS, HOPS)
    assert (EvalConfig().distractors, EvalConfig().hops) == (DISTRACTORS, HOPS)
    assert (options["distractors"], options["hops"]) == (DISTRACTORS, HOPS)


def test_one_number_formatter_for_the_reports():
    import math

    import numpy as np

    from tokenweight.infra.markdown import format_number

    cases = [
        ((1.23456,), "1.235"),
        ((1.23456, 1), "1.2"),
        ((2,), "2.000"),
        ((np.float32(0.5), 2), "0.50"),
        ((None,), "-"),
        ((math.nan,), "-"),
        ((math.inf, 2), "inf"),
        ((0.25,), "0.250"),
        (("n/a",), "n/a"),
    ]
    for args, text in cases:
        assert format_number(*args) == text, args
    assert format_number(0.25, sign=True) == "+0.250"
    assert format_number(-0.25, 2, sign=True) == "-0.25"
    assert format_number(None, sign=True) == "-"


# every flag built by tokenweight.commands.options, and the commands that take it
SHARED_OPTIONS = {
    "text_field": ("prepare", "eval"),
    "glob": ("prepare", "eval"),
    "encoding_errors": ("prepare", "eval"),
    "hf_split": ("prepare", "eval"),
    "window": ("score", "inspect"),
    "stride": ("score", "inspect"),
    "device": ("score", "eval", "inspect"),
    "dtype": ("eval", "inspect"),
    "trust_remote_code": ("prepare", "score", "eval", "inspect"),
}


def _option_actions(command: str) -> dict[str, argparse.Action]:
    from tokenweight.cli import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions if a.option_strings}


def _seen(action: argparse.Action) -> tuple:
    return action.default, action.choices, action.metavar, action.required, action.type


def test_a_shared_option_means_the_same_in_every_command():
    """Same flag, same default, choices and metavar; the help differs at most in the
    word for what the command reads or loads."""
    actions = {c: _option_actions(c) for c in {c for cs in SHARED_OPTIONS.values() for c in cs}}
    for dest, commands in SHARED_OPTIONS.items():
        first, *others = (actions[c][dest] for c in commands)
        assert first.help
        for other in others:
            assert _seen(other) == _seen(first), dest
    for dest in ("text_field", "encoding_errors", "window", "stride", "device", "dtype"):
        assert len({actions[c][dest].help for c in SHARED_OPTIONS[dest]}) == 1, dest


def test_corpus_options_restate_the_corpus_reader():
    """``--glob``'s default names every suffix the reader takes, ``--encoding-errors``
    offers its modes (the command modules cannot import the reader: numpy)."""
    from tokenweight.data.corpus import ENCODING_ERRORS, KNOWN_SUFFIXES

    for command in ("prepare", "eval"):
        actions = _option_actions(command)
        default = actions["glob"].help.split("(default: every ")[1]
        assert default.split()[:-1] == list(KNOWN_SUFFIXES), default
        assert tuple(actions["encoding_errors"].choices) == ENCODING_ERRORS


@pytest.mark.parametrize(
    ("command", "dest", "text", "expected", "what"),
    [
        ("eval", "lengths", " 1k, 3000,,2K", [1024, 3000, 2048], "token counts"),
        ("eval", "depths", "25%,1, 0.5", [0.25, 1.0, 0.5], "fractions"),
        ("synth", "distances", "32, 8-120", [32, [8, 120]], "distances or lo-hi ranges"),
        ("weights", "long", "0.5, 3,", [0.5, 3.0], "numbers"),
    ],
)
def test_comma_separated_options_are_read_one_way(capsys, command, dest, text, expected, what):
    """Every comma-separated option skips spaces and empty parts; a bad part is an argparse
    error naming the option and what it expects (exit 2, no traceback)."""
    from tokenweight.cli import main

    action = _option_actions(command)[dest]
    assert action.type(text) == expected
    flag = action.option_strings[0]
    with pytest.raises(SystemExit) as stopped:
        main([command, *(["m", "--out", "o"] if command == "eval" else []), flag, "1,x"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert f"argument {flag}: expected comma-separated {what}, got '1,x'" in err, err
