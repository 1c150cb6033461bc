"""``tokenweight weights``: show the weights a scheme gives to example NLL values."""

from __future__ import annotations

import argparse

from tokenweight.commands import options

HELP = "show the loss weights a scheme gives to long/short NLL values (explore schemes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheme",
        action="append",
        default=None,
        help="scheme text, e.g. dense:0.75 (repeatable; default: every preset)",
    )
    parser.add_argument(
        "--long",
        type=options.comma_separated(float, "numbers"),
        default=None,
        help="long-context NLL, comma-separated (default: 8 example values)",
    )
    parser.add_argument(
        "--short",
        type=options.comma_separated(float, "numbers"),
        default=None,
        help="short-context NLL, comma-separated (default: 8 example values)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from tokenweight.core.weighting import Scheme, compute_weights, preset_examples
    from tokenweight.infra.errors import TokenWeightError

    long = args.long or [0.5, 3.0, 1.2, 0.1, 6.0, 2.0, 0.8, 4.1]
    short = args.short or [0.6, 7.5, 1.1, 0.1, 6.2, 5.5, 0.7, 4.0]
    if len(long) != len(short):
        raise TokenWeightError(f"--long has {len(long)} values but --short has {len(short)}")
    schemes = args.scheme or list(preset_examples())
    parsed = [Scheme.parse(text) for text in schemes]
    lt, st = torch.tensor([long]), torch.tensor([short])
    width = max(len(s) for s in schemes) + 2
    print("long  NLL".ljust(width) + " ".join(f"{x:6.2f}" for x in long))
    print("short NLL".ljust(width) + " ".join(f"{x:6.2f}" for x in short))
    print("-" * (width + 7 * len(long)))
    for scheme in parsed:
        w = compute_weights(lt, st, scheme)[0]
        print(str(scheme).ljust(width) + " ".join(f"{x:6.2f}" for x in w.tolist()))
    return 0
