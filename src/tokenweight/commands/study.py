"""``tokenweight study CONFIG``: a controlled, paired comparison of weighting schemes."""

from __future__ import annotations

import argparse

HELP = "train every listed scheme with several seeds and report paired differences"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, help="study YAML (default: the CPU-sized study)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="setting overrides")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every setting, print the plan and a cost estimate calibrated on this "
        "machine (times a few small steps)",
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.workflows.study import load_study_config, run_study

    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:
        overrides.insert(0, config_path)
        config_path = None
    config = load_study_config(config_path, overrides)
    if args.dry_run:
        from tokenweight.workflows.study.cost import dry_run

        dry_run(config)
        return 0
    from tokenweight.infra.folder_lock import output_lock

    with output_lock(config.work_dir, "work_dir"):  # one study per folder
        report = run_study(config)
    print(f"study report: {report}")
    return 0
