"""The ``tokenweight`` command line (also ``python -m tokenweight``).

Each subcommand lives in its own module under :mod:`tokenweight.commands` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Only the module
of the command being run is imported (all of them for ``tokenweight --help``), and heavy
imports (torch, transformers) stay inside ``run``, so every ``--help`` is instant.
A :class:`~tokenweight.infra.errors.TokenWeightError` raised anywhere is printed as
``error: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from tokenweight.infra.errors import TokenWeightError

# name -> module
COMMANDS: dict[str, str] = {
    "demo": "tokenweight.commands.demo",
    "prepare": "tokenweight.commands.prepare",
    "score": "tokenweight.commands.score",
    "train": "tokenweight.commands.train",
    "eval": "tokenweight.commands.evaluate",
    "inspect": "tokenweight.commands.inspect_tokens",
    "weights": "tokenweight.commands.weights",
    "select": "tokenweight.commands.select",
    "synth": "tokenweight.commands.synth",
    "study": "tokenweight.commands.study",
    "configs": "tokenweight.commands.configs",
    "env": "tokenweight.commands.env",
    "install-demo-model": "tokenweight.commands.install_demo_model",
    "memory": "tokenweight.commands.memory",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option whose help does not state its
    default gets ``(default: VALUE)``. On/off flags are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0  # store_true/store_false/help/version
        positional = not action.option_strings and action.nargs not in ("?", "*")
        if flag or positional or action.required or action.default is argparse.SUPPRESS:
            return text
        if "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


class _VersionAction(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from tokenweight import __version__

        print(f"tokenweight {__version__}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for running ``command``: only that subcommand's module is imported and
    its options added (the others are listed by name). Without ``command``, every
    subcommand is listed with its one-line help, for ``tokenweight --help``."""
    parser = argparse.ArgumentParser(
        prog="tokenweight",
        description="Token-weighted loss for long-context language model training.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, path in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = importlib.import_module(path)
        p = sub.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter
        )
        if command is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


# the positional list of key=value settings, per command that takes one
_OVERRIDES = ("overrides", "settings")


def _take_late_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]
) -> None:
    """``key=value`` settings given after an option (``study CONFIG --dry-run seeds=[0]``)
    join the command's settings list; anything else unknown is an argparse error."""
    dest = next((d for d in _OVERRIDES if isinstance(getattr(args, d, None), list)), None)
    late = [x for x in extra if dest and "=" in x and not x.startswith("-")]
    unknown = [x for x in extra if x not in late]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if late and dest:
        getattr(args, dest).extend(late)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    _take_late_overrides(parser, args, extra)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except TokenWeightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tokenweight configs list | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
