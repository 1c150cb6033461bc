"""The ``tokenweight`` command line.

Each subcommand lives in its own module under :mod:`tokenweight.commands` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Heavy imports
(torch, transformers) stay inside ``run`` so that ``tokenweight --help`` is instant.
A :class:`~tokenweight.errors.TokenWeightError` raised anywhere is printed as
``error: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from tokenweight import __version__
from tokenweight.errors import TokenWeightError

# name -> module; a module that does not exist yet is simply not offered.
COMMANDS: dict[str, str] = {
    "demo": "tokenweight.commands.demo",
    "prepare": "tokenweight.commands.prepare",
    "score": "tokenweight.commands.score",
    "train": "tokenweight.commands.train",
    "eval": "tokenweight.commands.evaluate",
    "inspect": "tokenweight.commands.inspect_tokens",
    "weights": "tokenweight.commands.weights",
}


def _load_commands() -> dict[str, ModuleType]:
    modules = {}
    for name, path in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenweight",
        description="Token-weighted loss for long-context language model training.",
    )
    parser.add_argument("--version", action="version", version=f"tokenweight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _load_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
