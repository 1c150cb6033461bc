"""``tokenweight configs``: list the packaged configs and copy one out to edit."""

from __future__ import annotations

import argparse

HELP = "list the packaged configs (configs list) or copy one to edit (configs copy NAME [DEST])"

EPILOG = """\
examples:
  tokenweight configs list
  tokenweight configs copy paper/dense_self my_run.yaml   # inherited files merged in
  tokenweight configs copy deepspeed/zero3_offload.json .
  tokenweight train paper/dense_self data.path=data/pg19-32k   # a packaged name works too
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "list",
        help="names and one-line descriptions of the packaged configs",
        description="names and one-line descriptions of the packaged configs",
        formatter_class=parser.formatter_class,
    )
    copy = actions.add_parser(
        "copy",
        help="copy a packaged config (inherited files merged in) to DEST",
        description="copy a packaged config to DEST; a config that inherits others is written\n"
        "with them merged in, so the copy works on its own (an existing file is never replaced)",
        formatter_class=parser.formatter_class,
    )
    copy.add_argument("name", metavar="NAME", help="a name from `tokenweight configs list`")
    copy.add_argument(
        "dest",
        metavar="DEST",
        nargs="?",
        default=None,
        help="file or existing folder (default: the current folder, same file name)",
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.infra.config_files import PACKAGED_DIR, RENAMED, copy_config, packaged_configs

    if args.action == "copy":
        print(f"wrote {copy_config(args.name, args.dest)}")
        return 0
    configs = packaged_configs()
    width = max(len(c.name) for c in configs) + 2
    print("NAME".ljust(width) + "DESCRIPTION")
    for c in configs:
        print(c.name.ljust(width) + c.description)
    if RENAMED:
        print("\nold names (still accepted, with a warning; they will be removed):")
        for old, new in RENAMED.items():
            print(f"  {old} -> {new}")
    print(
        f"\n{len(configs)} files in {PACKAGED_DIR}\n"
        "train one: tokenweight train NAME [key=value ...]; "
        "edit one: tokenweight configs copy NAME [DEST]"
    )
    return 0
