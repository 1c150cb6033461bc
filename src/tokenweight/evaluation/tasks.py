"""The evaluation tasks: one table of every task ``tokenweight eval`` runs.

A task is a *text* task, measured on evaluation text (``--data``) from the long-context
NLL of every model (perplexity by position, LongPPL), or a *probe*, a retrieval prompt
generated offline and answered greedily (``docs/method.md#evaluation``). Each task is an
:class:`EvalTask` entry of :data:`EVAL_TASKS`: its kind, its one-line summary, whether it
runs by default, its own settings (with defaults and help), the code that runs it and how
the reports show it. Every consumer reads the table: :class:`~tokenweight.evaluation.config.EvalConfig` validation and
its defaults, ``tokenweight eval``'s options, help and errors, the runner, ``results.md``
and its figures, the pipeline report, the pipeline's and the study's probes and the
study's report. Adding a task is one entry here (:func:`register_eval_task`) plus the code
that runs it; no other module names a task.

This module imports no torch: a text task's code is named as ``"module:function"`` and
loaded on use, so ``--help`` and config checks stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from tokenweight.infra.constants import LONGPPL_ALPHA, LONGPPL_BETA
from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "DISTRACTORS",
    "EVAL_TASKS",
    "HOPS",
    "KINDS",
    "PROBE",
    "TEXT",
    "Column",
    "EvalTask",
    "TaskSetting",
    "TasksOfKind",
    "default_task_names",
    "eval_task",
    "load",
    "positive_int",
    "register_eval_task",
    "task_names",
    "task_settings",
    "tasks_of",
]

#: The task kinds: measured on evaluation text, or a generated retrieval prompt.
TEXT = "text"
PROBE = "probe"
KINDS = (TEXT, PROBE)

# the defaults of every probe builder and of `tokenweight eval`: multikey distractor needles,
# vartrack chain links
DISTRACTORS = 3
HOPS = 4


def positive_int(value: Any, what: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool); else an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TokenWeightError(f"{what} must be a positive integer, got {value!r}")
    return value


def _non_negative(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenWeightError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class TaskSetting:
    """A setting of one task: an :class:`~tokenweight.evaluation.config.EvalConfig` keyword, a key of ``results.json``'s
    ``settings`` and the option ``--NAME`` (underscores as dashes) of ``tokenweight eval``.

    Attributes:
        name: the keyword (``snake_case``).
        default: its value when not given.
        help: the option's help text.
        type: parses the option's text (``int``, ``float``, ``str``).
        check: ``check(value, name)`` raises :class:`TokenWeightError` for a bad value
            (``None``: any value); what it returns is not used.
        metavar: the option's placeholder in ``--help`` (``None``: argparse's).
    """

    name: str
    default: Any
    help: str
    type: Callable[[str], Any] = int
    check: Callable[[Any, str], object] | None = None
    metavar: str | None = None

    @property
    def option(self) -> str:
        """The command-line flag, ``--NAME`` with dashes."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Column:
    """A number a summary table (the pipeline report) shows for a text task: the header
    ``label``, the ``key`` in the task's result and ``digits`` decimals (``None``: the value
    as text). A task's first column is its headline, the one the findings compare (lower is
    better)."""

    label: str
    key: str
    digits: int | None = None


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task.

    Attributes:
        name: what ``--tasks`` and ``EvalConfig(tasks=...)`` name (lower case).
        kind: :data:`TEXT` or :data:`PROBE`.
        summary: its line in ``tokenweight eval --help``.
        run: the code that runs it, a callable or its ``"module:function"`` name (loaded
            on first use). A text task's ``run(inputs)`` takes
            :class:`~tokenweight.evaluation.text_tasks.TextTaskInputs` (the model, the
            evaluation sequences, its long-context NLL, the settings) and returns the task's
            result (a JSON-safe dict). A probe's ``run(rng, **settings)`` draws one prompt's
            parts as a :class:`~tokenweight.evaluation.probes.ProbeSpec`; ``settings`` are
            the values of the task's own ``settings``.
        default: run when no tasks are given (a text task: when evaluation text is).
        settings: the task's own settings (two tasks may share one, equal in both).
        key: where its result sits in a model's entry of ``results.json`` (a text task:
            ``entry[key]``; a probe: ``entry["probes"][key]``); default ``name``.
        label: how tables and figures name it; default ``name``.
        columns: a text task's numbers in summary tables (:class:`Column`).
        section: a text task's ``results.md`` section, ``section(entries, task)`` returning
            its lines (or its ``"module:function"`` name); ``None``: a table of its
            ``columns``, one row per model.
        figure: a text task's figure: ``(file name, plot)``, ``plot(entries, path, task)``
            drawing it (or its ``"module:function"`` name).
        uses_evaluator: its result uses the LongPPL evaluator (``--longppl-evaluator``):
            the runner loads that model once, before the evaluated ones, when such a task
            runs.
    """

    name: str
    kind: str
    summary: str
    run: str | Callable[..., Any]
    default: bool = False
    settings: tuple[TaskSetting, ...] = ()
    key: str = ""
    label: str = ""
    columns: tuple[Column, ...] = ()
    section: str | Callable[..., list[str]] | None = None
    figure: tuple[str, str | Callable[..., Any]] | None = None
    uses_evaluator: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TokenWeightError(f"eval task {self.name!r}: kind must be one of {KINDS}")
        if self.name != self.name.strip().lower() or not self.name:
            raise TokenWeightError(f"eval task name {self.name!r}: use lower case, no spaces")
        object.__setattr__(self, "key", self.key or self.name)
        object.__setattr__(self, "label", self.label or self.name)

    @property
    def spec(self) -> Callable[..., Any]:
        """A probe's prompt builder (its ``run``)."""
        return load(self.run)

    @property
    def figure_name(self) -> str | None:
        """The file name of its figure in an evaluation folder (probes: a heat map)."""
        if self.kind == PROBE:
            return f"probe_{self.name}.png"
        return self.figure[0] if self.figure else None


def load(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable, or the function a ``"module:function"`` name points to."""
    if callable(ref):
        return ref
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


#: The table: name -> task, in the order help texts and reports list them (text tasks
#: first: :func:`task_names`).
EVAL_TASKS: dict[str, EvalTask] = {}


def register_eval_task(task: EvalTask) -> EvalTask:
    """Add ``task`` to :data:`EVAL_TASKS`. A name already taken, or a setting that another
    task declares with another default, is an error; so is a setting named as a field of
    :class:`~tokenweight.evaluation.config.EvalConfig` (checked there)."""
    if task.name in EVAL_TASKS:
        raise TokenWeightError(f"eval task {task.name!r} is already registered")
    known = {s.name: s for s in task_settings()}
    for setting in task.settings:
        other = known.get(setting.name)
        if other is not None and other.default != setting.default:
            raise TokenWeightError(
                f"eval task {task.name!r}: setting {setting.name!r} is already declared with "
                f"default {other.default!r}"
            )
    EVAL_TASKS[task.name] = task
    return task


def eval_task(name: str) -> EvalTask:
    """The task called ``name`` (case-insensitive)."""
    task = EVAL_TASKS.get(str(name).strip().lower())
    if task is None:
        raise TokenWeightError(
            f"unknown evaluation task {name!r}; choose from {', '.join(task_names())}"
        )
    return task


def _in_order(kind: str | None = None) -> list[EvalTask]:
    """The tasks (of one ``kind``): text tasks, then probes, each in table order."""
    return [t for k in KINDS if kind in (None, k) for t in EVAL_TASKS.values() if t.kind == k]


def task_names(kind: str | None = None) -> tuple[str, ...]:
    """The names of the tasks registered now (of one ``kind``): text tasks, then probes,
    each in table order."""
    return tuple(t.name for t in _in_order(kind))


def default_task_names(kind: str | None = None) -> tuple[str, ...]:
    """The tasks run when none are given (of one ``kind``), in the order of
    :func:`task_names`."""
    return tuple(t.name for t in _in_order(kind) if t.default)


def tasks_of(names: Iterable[str], kind: str | None = None) -> list[EvalTask]:
    """The registered tasks among ``names`` (of one ``kind``): text tasks in table order,
    probes in the order given (the order of ``results.json``'s tables); unknown names are
    skipped (a results file may come from another version)."""
    given = list(dict.fromkeys(n for n in names if n in EVAL_TASKS))
    text = [t for t in _in_order(TEXT) if t.name in given and kind in (None, TEXT)]
    probes = [EVAL_TASKS[n] for n in given if EVAL_TASKS[n].kind == PROBE]
    return text + (probes if kind in (None, PROBE) else [])


def task_settings(kind: str | None = None) -> list[TaskSetting]:
    """Every task's settings (of one ``kind``), each once, in table order."""
    seen: dict[str, TaskSetting] = {}
    for task in _in_order(kind):
        for setting in task.settings:
            seen.setdefault(setting.name, setting)
    return list(seen.values())


class TasksOfKind(MutableMapping[str, EvalTask]):
    """The tasks of one kind as a live mapping, a view of :data:`EVAL_TASKS`
    (``tokenweight.evaluation.probes.PROBES``): setting or deleting an item registers or
    removes the task in the table."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __getitem__(self, name: str) -> EvalTask:
        task = EVAL_TASKS[name]
        if task.kind != self.kind:
            raise KeyError(name)
        return task

    def __setitem__(self, name: str, task: EvalTask) -> None:
        if task.kind != self.kind or task.name != name:
            raise TokenWeightError(f"{name!r}: expected a {self.kind} task named {name!r}")
        EVAL_TASKS.pop(name, None)
        register_eval_task(task)

    def __delitem__(self, name: str) -> None:
        if EVAL_TASKS[name].kind != self.kind:
            raise KeyError(name)
        del EVAL_TASKS[name]

    def __iter__(self) -> Iterator[str]:
        return iter(task_names(self.kind))

    def __len__(self) -> int:
        return len(task_names(self.kind))

    def __repr__(self) -> str:
        return f"{self.kind} tasks {list(self)}"


_PROBES = "tokenweight.evaluation.probes"
_TEXT = "tokenweight.evaluation.text_tasks"
_REPORT = "tokenweight.evaluation.report"

for _task in (
    EvalTask(
        "ppl",
        TEXT,
        "mean NLL by target position bucket, and the NLL-against-position curve",
        f"{_TEXT}:run_perplexity",
        default=True,
        settings=(
            TaskSetting("bucket_size", 1024, "position bucket (tokens)", check=positive_int),
        ),
        key="perplexity",
        columns=(Column("perplexity", "perplexity", 2),),
        section=f"{_REPORT}:perplexity_section",
        figure=("nll_by_position.png", f"{_REPORT}:plot_nll_figure"),
    ),
    EvalTask(
        "longppl",
        TEXT,
        "LongPPL: perplexity on the key tokens that need the long context",
        f"{_TEXT}:run_longppl",
        default=True,
        settings=(
            TaskSetting(
                "longppl_window",
                None,
                "short context window (default: min(4096, seq_len // 2))",
            ),
            TaskSetting("longppl_stride", None, "short window stride (default: window / 4)"),
            TaskSetting("longppl_alpha", LONGPPL_ALPHA, "min NLL gain (nats)", float),
            TaskSetting("longppl_beta", LONGPPL_BETA, "max long NLL (nats)", float),
        ),
        label="LongPPL",
        columns=(Column("LongPPL", "longppl", 2), Column("key tokens", "key_tokens")),
        section=f"{_REPORT}:longppl_section",
        uses_evaluator=True,
    ),
    EvalTask(
        "passkey", PROBE, "a 5-digit pass key in filler text", f"{_PROBES}:passkey_spec", True
    ),
    EvalTask("needle", PROBE, "a 7-digit number needle", f"{_PROBES}:number_needle_spec", True),
    EvalTask("needle_word", PROBE, "a word needle", f"{_PROBES}:word_needle_spec"),
    EvalTask("needle_uuid", PROBE, "a UUID needle", f"{_PROBES}:uuid_needle_spec"),
    EvalTask(
        "multikey",
        PROBE,
        "a number needle among distractor needles",
        f"{_PROBES}:multikey_spec",
        settings=(
            TaskSetting(
                "distractors", DISTRACTORS, "multikey distractor needles", check=_non_negative
            ),
        ),
    ),
    EvalTask(
        "vartrack",
        PROBE,
        "variable tracking: a chain of assignments",
        f"{_PROBES}:vartrack_spec",
        settings=(TaskSetting("hops", HOPS, "vartrack chain links", check=positive_int),),
    ),
):
    register_eval_task(_task)
