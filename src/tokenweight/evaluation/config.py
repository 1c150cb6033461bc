"""The settings of ``tokenweight eval``: :class:`EvalConfig` (validated at construction)
and the models to evaluate (:class:`ModelSpec`).

The settings every evaluation has are the fields of :class:`EvalConfig`; the tasks' own
settings come from the task table (:func:`~tokenweight.evaluation.tasks.task_settings`)
and are checked by its entries. No torch is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tokenweight.evaluation.tasks import (
    EVAL_TASKS,
    PROBE,
    TEXT,
    default_task_names,
    positive_int,
    task_names,
    task_settings,
)
from tokenweight.infra.errors import TokenWeightError

__all__ = ["EvalConfig", "ModelSpec", "as_spec", "positive_int"]


@dataclass
class ModelSpec:
    """A model to evaluate: a ``source`` to load (path, hub name, alias such as
    ``smollm2``) and/or an already loaded ``model`` and ``tokenizer``; ``label`` names it
    in tables and figures."""

    label: str
    source: str | None = None
    model: Any = None
    tokenizer: Any = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``LABEL=SOURCE`` or ``SOURCE`` (label: the folder name or the source)."""
        text = str(text).strip()
        label, sep, source = text.partition("=")
        if not sep or Path(text).exists() or not label or not source:
            label, source = Path(text.rstrip("/")).name or text, text
        return cls(label=label.strip(), source=source.strip())


def as_spec(item: ModelSpec | str | tuple[str, Any, Any]) -> ModelSpec:
    """A model to evaluate as a :class:`ModelSpec`: given as one, as ``LABEL=SOURCE`` text
    (:meth:`ModelSpec.parse`) or as a ``(label, model, tokenizer)`` tuple."""
    if isinstance(item, ModelSpec):
        return item
    if isinstance(item, str):
        return ModelSpec.parse(item)
    if isinstance(item, tuple) and len(item) == 3:
        return ModelSpec(label=str(item[0]), model=item[1], tokenizer=item[2])
    raise TokenWeightError(
        f"a model to evaluate must be a ModelSpec, 'LABEL=SOURCE' text or a "
        f"(label, model, tokenizer) tuple, got {type(item).__name__}"
    )


@dataclass(frozen=True, init=False)
class EvalConfig:
    """Settings of one evaluation, validated at construction (every setting is a CLI option
    of ``tokenweight eval``; :func:`~tokenweight.evaluation.runner.evaluate_models`
    documents each one).

    The fields below are the settings every evaluation has; the tasks' own settings
    (``bucket_size``, ``longppl_alpha``, ``hops`` ...) come from the task table
    (:func:`~tokenweight.evaluation.tasks.task_settings`): they are keywords of the
    constructor and attributes like the fields, held in ``task_settings``.

    ``tasks=None`` means the table's default tasks: its default probes, plus its default
    text tasks when ``data`` is given. Sequences may be given as lists; they are stored as
    tuples. Keywords only, except ``tasks``.
    """

    tasks: tuple[str, ...] | None = None
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    trials: int = 1
    seed: int = 0
    batch_size: int = 1
    data: tuple[str, ...] = ()
    seq_len: int | None = None
    max_sequences: int | None = 16
    text_field: str = "text"
    glob: str | None = None
    encoding_errors: str = "strict"
    hf_split: str | None = None
    allow_beyond_positions: bool = False
    # (name, value) of every task setting of the table, in table order
    task_settings: tuple[tuple[str, Any], ...] = ()

    def __init__(self, tasks: Any = None, **options: Any) -> None:
        own = {f.name: f for f in fields(self) if f.name != "task_settings"}
        given = dict(options.pop("task_settings", None) or ())
        settings = {s.name: s for s in task_settings()}
        clash = sorted(set(settings) & set(own))
        if clash:
            raise TokenWeightError(
                f"task setting(s) {', '.join(clash)} would hide an evaluation setting; "
                "rename them in the task table"
            )
        unknown = sorted(set(options) - set(own) - set(settings))
        if unknown:
            raise TokenWeightError(
                f"unknown evaluation setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted({*own, *settings}))}"
            )
        options["tasks"] = tasks
        for name, f in own.items():
            object.__setattr__(self, name, options.get(name, f.default))
        values = {n: options.get(n, given.get(n, s.default)) for n, s in settings.items()}
        object.__setattr__(self, "task_settings", tuple(values.items()))
        self._validate()

    def __getattr__(self, name: str) -> Any:
        """A task setting by its name (``cfg.bucket_size``)."""
        if name != "task_settings":
            for key, value in self.__dict__.get("task_settings", ()):
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__!r} has no setting {name!r}")

    def _validate(self) -> None:
        data = (self.data,) if isinstance(self.data, (str, Path)) else self.data
        object.__setattr__(self, "data", tuple(str(p) for p in data))
        object.__setattr__(self, "tasks", self._checked_tasks())
        if self.probe_tasks:
            self._check_probe_grid()
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        for name in ("trials", "batch_size"):
            positive_int(getattr(self, name), name)
        checks = {s.name: s.check for s in task_settings()}
        for name, value in self.task_settings:
            check = checks.get(name)
            if check is not None:
                check(value, name)
        self._check_text_settings()

    @classmethod
    def option_names(cls) -> list[str]:
        """Every setting's name: the fields, then the task settings in table order (the
        options of ``tokenweight eval``, underscores as dashes)."""
        names = [f.name for f in fields(cls) if f.name != "task_settings"]
        return names + [s.name for s in task_settings()]

    @classmethod
    def from_options(cls, **options: Any) -> EvalConfig:
        """An ``EvalConfig`` from keyword options named as its settings (an unknown name
        is an error, not silently ignored)."""
        return cls(**options)

    def _checked_tasks(self) -> tuple[str, ...]:
        if self.tasks is None:
            defaults = default_task_names()
            return tuple(t for t in defaults if self.data or EVAL_TASKS[t].kind != TEXT)
        tasks = tuple(dict.fromkeys(str(t).strip().lower() for t in self.tasks))
        unknown = [t for t in tasks if t not in EVAL_TASKS]
        if unknown or not tasks:
            raise TokenWeightError(
                f"unknown evaluation task(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(task_names())}"
            )
        return tasks

    def _check_probe_grid(self) -> None:
        if not self.lengths or not self.depths:
            raise TokenWeightError("probes need at least one length and one depth")
        for n in self.lengths:
            positive_int(n, "every probe length")
        for d in self.depths:
            if isinstance(d, bool) or not 0.0 <= float(d) <= 1.0:
                raise TokenWeightError(f"every depth must be in [0, 1], got {d!r}")

    def _check_text_settings(self) -> None:
        if self.seq_len is not None:
            if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int):
                raise TokenWeightError(f"--seq-len must be an integer, got {self.seq_len!r}")
            if self.seq_len < 2:
                raise TokenWeightError(f"--seq-len must be >= 2 tokens, got {self.seq_len}")
        if self.text_tasks and not self.data:
            raise TokenWeightError(
                f"task(s) {', '.join(self.text_tasks)} need evaluation text: pass --data "
                "(a prepared dataset folder or text files)"
            )

    @property
    def probe_tasks(self) -> tuple[str, ...]:
        """The probes among ``tasks``, in the order given."""
        probes = task_names(PROBE)
        return tuple(t for t in self.tasks or () if t in probes)

    @property
    def text_tasks(self) -> tuple[str, ...]:
        """The text tasks among ``tasks``, in the order given."""
        text = task_names(TEXT)
        return tuple(t for t in self.tasks or () if t in text)

    @property
    def probe_settings(self) -> dict[str, Any]:
        """The values of the probe tasks' settings (what
        :func:`~tokenweight.evaluation.probes.make_probes` takes)."""
        names = {s.name for s in task_settings(PROBE)}
        return {n: v for n, v in self.task_settings if n in names}

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (``results.json``'s ``settings``)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "task_settings"}
        return {**own, **dict(self.task_settings)}
