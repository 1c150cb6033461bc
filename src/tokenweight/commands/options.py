"""Options that mean the same thing in several commands, each defined once here: the same
flag, default and help wherever a command takes it.

Plain ``argparse`` only: ``--help`` imports neither numpy nor torch, so the facts these
options restate (the corpus reader's suffixes and encoding-error modes) cannot be
imported from the modules that own them; ``tests/test_one_definition.py`` checks that
they agree.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "add_corpus_options",
    "add_device",
    "add_load_dtype",
    "add_trust_remote_code",
    "add_window_options",
    "call_with_options",
    "comma_separated",
]

# tokenweight.data.corpus: KNOWN_SUFFIXES and ENCODING_ERRORS
_CORPUS_SUFFIXES = ".txt .text .md .jsonl .json .ndjson .parquet"
_ENCODING_ERRORS = ("strict", "replace", "ignore")

T = TypeVar("T")
R = TypeVar("R")


def add_corpus_options(parser: argparse._ActionsContainer, *, inputs: str, split: str) -> None:
    """How text corpora are read (:mod:`tokenweight.data.corpus`): ``--text-field``,
    ``--glob``, ``--encoding-errors`` and ``--hf-split``. ``inputs`` names what the command
    reads (``INPUTs``, ``--data``); ``split`` is the example split of ``--hf-split``."""
    parser.add_argument(
        "--text-field",
        default="text",
        help="text field of JSONL/Parquet/hub records (default: text)",
    )
    parser.add_argument(
        "--glob",
        default=None,
        metavar="PATTERN",
        help=f"files to take from folders in {inputs} (default: every {_CORPUS_SUFFIXES} file)",
    )
    parser.add_argument(
        "--encoding-errors",
        default="strict",
        choices=list(_ENCODING_ERRORS),
        help="what to do with bytes that are not UTF-8 (default: strict, an error)",
    )
    parser.add_argument(
        "--hf-split",
        default=None,
        metavar="SPLIT",
        help=f"read {inputs} as Hugging Face datasets, this split, e.g. {split} (needs "
        f"network; default: {inputs} are local files)",
    )


def add_window_options(parser: argparse._ActionsContainer) -> None:
    """The short-context scorer's windows (:func:`tokenweight.core.scoring.plan_stride`):
    ``--window`` (required) and ``--stride``."""
    parser.add_argument(
        "--window", type=int, required=True, metavar="W", help="short-context window (tokens)"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help="window step (default: the cheapest stride costing N/W extra windows)",
    )


def add_device(parser: argparse._ActionsContainer) -> None:
    """``--device`` (:func:`tokenweight.infra.models.resolve_device`)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: auto, cuda when available)",
    )


def add_load_dtype(parser: argparse._ActionsContainer) -> None:
    """``--dtype`` of a loaded model (:func:`tokenweight.infra.models.load_model`)."""
    parser.add_argument(
        "--dtype", default=None, help="fp32, bf16 or fp16 (default: the checkpoint's)"
    )


def add_trust_remote_code(parser: argparse._ActionsContainer, what: str = "model") -> None:
    """``--trust-remote-code``: code from the hub runs only when asked for."""
    parser.add_argument(
        "--trust-remote-code", action="store_true", help=f"allow custom {what} code from the hub"
    )


def comma_separated(item: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """An argparse ``type`` reading comma-separated values, each with ``item`` (spaces
    ignored, empty parts skipped). A value ``item`` refuses (``ValueError``) is an
    argparse error naming the option: ``expected comma-separated {what}, got '...'``."""

    def parse(text: str) -> list[T]:
        try:
            return [item(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


def call_with_options(function: Callable[..., R], args: argparse.Namespace) -> R:
    """``function(**options)``: each option of the command line given as the keyword
    argument of the same name. A command that runs one library function names its options
    after that function's parameters (``--seq-len`` sets ``seq_len``), so every option
    reaches it; an option without a parameter is a mistake in the command (``TypeError``).
    """
    options = {k: v for k, v in vars(args).items() if k != "command" and not k.startswith("_")}
    params = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(options) - set(params))
    if unknown:
        raise TypeError(f"{function.__name__} has no parameter for option(s) {unknown}")
    return function(**options)
