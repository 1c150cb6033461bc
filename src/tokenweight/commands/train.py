"""``tokenweight train``: context extension with a token-weighted loss."""

from __future__ import annotations

import argparse
import os

HELP = "train (extend the context of) a causal LM with a token-weighted loss from a YAML config"

EPILOG = """\
examples:
  tokenweight train cpu/smollm2                  # a packaged config (tokenweight configs list)
  tokenweight train paper/dense_self data.path=data/pg19-32k train.max_steps=10
  tokenweight train my_run.yaml                  # a file, e.g. from tokenweight configs copy
  torchrun --nproc_per_node 8 -m tokenweight.cli train paper/dense_self
  tokenweight train CONFIG --resume              # continue from the newest checkpoint
  tokenweight train CONFIG scheme=uniform --resume --allow-changed-settings

overrides are key.sub=value with YAML values: train.learning_rate=3e-5, model.lora=null,
scheme=sparse:0.25, scorer.kind=precomputed, train.report_to=[tensorboard]
"""


def _scorer_kinds_text() -> str:
    """The ``scorer.kind`` values, one a line, from the scorer table."""
    from tokenweight.core.scorer_kinds import SCORERS

    width = max(len(name) for name in SCORERS) + 2
    lines = [f"  {name.ljust(width)}{kind.summary}" for name, kind in SCORERS.items()]
    return "\nscorer.kind (where the short-context NLL comes from):\n" + "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG + _scorer_kinds_text()
    parser.add_argument(
        "config",
        help="a YAML config file, or a packaged config name such as paper/dense_self "
        "(tokenweight configs list)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.max_steps=10",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in train.output_dir (fresh start if none)",
    )
    parser.add_argument(
        "--allow-changed-settings",
        action="store_true",
        help="with --resume: continue even though settings that shape the result differ "
        "from those that trained the checkpoint (the run's record keeps both parts)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved, validated config and exit without training",
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.training.config import load_config

    if args.allow_changed_settings and not args.resume:
        raise TokenWeightError("--allow-changed-settings: only used with --resume")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from tokenweight.training.run import train

    result = train(config, resume=args.resume, allow_changed_settings=args.allow_changed_settings)
    if os.environ.get("RANK", "0") != "0":
        return 0
    from tokenweight.training.run_record import describe_segments

    changed = describe_segments(result.segments)
    if changed:
        print(f"note: {changed}")
    if result.train_loss is not None:
        steps = result.loss_steps
        over = f" over steps {steps[0]}-{steps[1]}" if steps and steps[0] > 1 else ""
        print(
            f"done: {result.global_step} steps, mean loss {result.train_loss:.4f}{over}; "
            f"model saved in {result.output_dir}"
        )
    return 0
