"""``tokenweight eval``: perplexity by position, LongPPL and retrieval probes, side by side."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tokenweight.commands import options

if TYPE_CHECKING:
    from tokenweight.evaluation.config import EvalConfig

HELP = "evaluate models side by side: perplexity by position, LongPPL, passkey/needle probes (one process)"

_EPILOG = """\
models: SOURCE or LABEL=SOURCE, where SOURCE is a model folder (the output_dir of train, or a
checkpoint-N folder in it), a .gguf file, a hub name or the alias smollm2; after make demo:
  start=smollm2 uniform=runs/demo/runs/uniform "dense:0.75=runs/demo/runs/dense-0.75"

{tasks}
LongPPL: key tokens have short-context NLL - long NLL > --longppl-alpha and long NLL <
--longppl-beta. The short context is a window of --longppl-window tokens (default
min(4096, seq_len // 2)) moving by --longppl-stride (default window / 4), from the same
model, or with --longppl-evaluator one evaluator model judges the key tokens for all
models.

outputs in --out: results.json, results.md, {figures}
"""


def _tasks_text() -> str:
    """The tasks part of the help: every task of the task table, text tasks first."""
    from tokenweight.evaluation.tasks import EVAL_TASKS, KINDS, PROBE, TEXT

    heading = {
        TEXT: "text tasks (need --data; * = run by default with --data):",
        PROBE: "probes (* = run by default):",
    }
    width = max(len(name) for name in EVAL_TASKS) + 4
    lines = []
    for kind in KINDS:
        lines.append(heading[kind])
        for name, task in EVAL_TASKS.items():  # table order within a kind
            if task.kind == kind:
                mark = "*" if task.default else " "
                lines.append(f"  {(name + ' ' + mark).ljust(width)}{task.summary}")
    return "\n".join(lines) + "\n"


def _figures_text() -> str:
    """The figure files an evaluation may write, from the task table."""
    from tokenweight.evaluation.tasks import EVAL_TASKS, PROBE

    names = ["probe_<task>.png"] if any(t.kind == PROBE for t in EVAL_TASKS.values()) else []
    names += [t.figure[0] for t in EVAL_TASKS.values() if t.figure is not None]
    return ", ".join(names)


def _default_tasks_text() -> str:
    from tokenweight.evaluation.tasks import PROBE, TEXT, default_task_names

    probes, text = default_task_names(PROBE), default_task_names(TEXT)
    return f"default: {','.join(probes)}" + (f"; plus {','.join(text)} with --data" if text else "")


def _add_task_settings(group: Any, kind: str) -> None:
    """One option per setting of the task table's tasks of ``kind`` (named, defaulted and
    explained by the table)."""
    from tokenweight.evaluation.tasks import task_settings

    for setting in task_settings(kind):
        extra = {} if setting.metavar is None else {"metavar": setting.metavar}
        group.add_argument(
            setting.option, type=setting.type, default=setting.default, help=setting.help, **extra
        )


def _tokens(text: str) -> int:
    """A token count: ``4096`` or ``4k`` (times 1024)."""
    scale = 1024 if text[-1:] in ("k", "K") else 1
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _fraction(text: str) -> float:
    """A fraction: ``0.25`` or ``25%``."""
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


# A long but flat table of options, kept in one piece so that it reads like --help. Each
# evaluation option is named as its EvalConfig setting and has its default (a test
# checks); the tasks' own settings come from the task table.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenweight.evaluation.tasks import PROBE, TEXT

    parser.epilog = _EPILOG.replace("{tasks}", _tasks_text()).replace("{figures}", _figures_text())
    parser.add_argument("models", nargs="+", metavar="MODEL", help="SOURCE or LABEL=SOURCE")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--tasks",
        default=None,
        help=f"comma-separated tasks ({_default_tasks_text()})",
    )
    parser.add_argument(
        "--lengths",
        type=options.comma_separated(_tokens, "token counts"),
        default=[1024, 2048, 4096],
        help="probe prompt lengths in tokens, e.g. 1k,2k,4k (default 1024,2048,4096)",
    )
    parser.add_argument(
        "--depths",
        type=options.comma_separated(_fraction, "fractions"),
        default=[0.1, 0.3, 0.5, 0.7, 0.9],
        help="needle depths as fractions or percentages (default 0.1,0.3,0.5,0.7,0.9)",
    )
    parser.add_argument("--trials", type=int, default=1, help="prompts per (length, depth)")
    parser.add_argument("--seed", type=int, default=0, help="probe seed (same seed, same prompts)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="prompts decoded together / sequences per forward (default 1)",
    )
    _add_task_settings(parser, PROBE)
    data = parser.add_argument_group("text task data (perplexity, LongPPL)")
    data.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="a prepared dataset folder (tokenweight prepare) or text/JSONL/Parquet files or "
        "folders (repeat --data for several; default: none, probes only)",
    )
    data.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="tokens per sequence for text data (default: the longest probe length)",
    )
    data.add_argument("--max-sequences", type=int, default=16, help="sequences used at most")
    options.add_corpus_options(data, inputs="--data", split="validation")
    _add_task_settings(data, TEXT)
    data.add_argument(
        "--longppl-evaluator",
        default=None,
        metavar="MODEL",
        help="evaluator model judging key tokens for all models (default: each model itself)",
    )
    # the old name of --longppl-evaluator, accepted with a deprecation message
    data.add_argument("--longppl-scorer", default=None, help=argparse.SUPPRESS)
    load = parser.add_argument_group("model loading")
    options.add_load_dtype(load)
    options.add_device(load)
    load.add_argument(
        "--attn-implementation", default=None, help="e.g. sdpa, eager (default: the model's own)"
    )
    load.add_argument(
        "--rope-theta",
        type=float,
        default=None,
        help="override RoPE theta (default: the checkpoint's)",
    )
    load.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="override maximum positions (default: the checkpoint's)",
    )
    load.add_argument(
        "--allow-beyond-positions",
        action="store_true",
        help="evaluate lengths beyond a model's max_position_embeddings (with a warning) "
        "instead of refusing them",
    )
    options.add_trust_remote_code(load)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    """The evaluation settings given on the command line (option names match the
    settings of :class:`~tokenweight.evaluation.config.EvalConfig`)."""
    from tokenweight.evaluation.config import EvalConfig

    settings = {name: getattr(args, name) for name in EvalConfig.option_names()}
    if args.tasks:
        settings["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    return EvalConfig(**settings)


def _evaluator(args: argparse.Namespace) -> str | None:
    """``--longppl-evaluator``, or ``--longppl-scorer``, its old name (with a deprecation
    message)."""
    from tokenweight.infra.errors import TokenWeightError

    if args.longppl_scorer is None:
        return args.longppl_evaluator
    import warnings

    warnings.warn(
        "--longppl-scorer is now called --longppl-evaluator; the old name will be removed",
        FutureWarning,
        stacklevel=2,
    )
    if args.longppl_evaluator is not None:
        raise TokenWeightError(
            "give --longppl-evaluator once (--longppl-scorer is its old name), not both"
        )
    return args.longppl_scorer


def run(args: argparse.Namespace) -> int:
    from tokenweight.evaluation.report import results_markdown
    from tokenweight.evaluation.runner import run_evaluation
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.training.distributed import is_distributed_launch

    if is_distributed_launch():
        raise TokenWeightError(
            "tokenweight eval runs in one process; start it without torchrun or accelerate "
            "launch (every process would repeat the whole evaluation and write the same files)"
        )
    load_kwargs = {
        "dtype": args.dtype,
        "device": args.device,
        "attn_implementation": args.attn_implementation,
        "trust_remote_code": args.trust_remote_code,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_position_embeddings,
    }
    from tokenweight.infra.folder_lock import output_lock

    with output_lock(args.out, "--out"):  # one writer per folder
        results = run_evaluation(
            args.models,
            _eval_config(args),
            out_dir=args.out,
            evaluator=_evaluator(args),
            load_kwargs=load_kwargs,
            progress=not args.no_progress,
        )
    print(results_markdown(results))
    print(f"wrote {', '.join(results['files'])} to {args.out}")
    return 0
