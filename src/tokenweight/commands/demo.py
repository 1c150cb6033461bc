"""``tokenweight demo``: the whole method on the embedded default, ending in a report."""

from __future__ import annotations

import argparse

HELP = "run prepare, score, train (uniform and weighted), eval and inspect; write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "settings",
        nargs="*",
        metavar="[CONFIG.yaml] key=value",
        help="an optional YAML file of settings, then overrides such as seq_len=4096 "
        "window=1024 max_steps=50 device=cuda work_dir=runs/big train.weight_decay=0 "
        "(sections model, data, scorer, train as in a training config; see docs/demo.md)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings and exit"
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from tokenweight.infra.config_sections import plain_config
    from tokenweight.workflows.pipeline import load_pipeline_config, run_pipeline

    items = list(args.settings)
    path = items.pop(0) if items and "=" not in items[0] else None
    config = load_pipeline_config(path, items)
    if args.print_config:  # a settings file that reads back to the same config
        print(yaml.safe_dump(plain_config(config), sort_keys=False))
        return 0
    from tokenweight.infra.folder_lock import output_lock

    with output_lock(config.work_dir, "work_dir"):  # one demo per folder
        report = run_pipeline(config)
    print(f"\nreport: {report}")
    return 0
