"""``tokenweight inspect``: colour every token of a passage by long/short NLL, score, weight."""

from __future__ import annotations

import argparse
from typing import Any

from tokenweight.commands import options

HELP = "show which tokens of a passage gain from long context and the weights they get"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, hub name, GGUF folder, or 'smollm2'")
    parser.add_argument("text", help="a text file holding the passage")
    options.add_window_options(parser)
    parser.add_argument("--scheme", default="dense:0.75", help="weighting scheme (dense:0.75)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens of the passage used")
    parser.add_argument("--offset", type=int, default=0, help="characters of the file to skip")
    parser.add_argument(
        "--short-model",
        default=None,
        help="another model for the short NLL (default: the same model)",
    )
    options.add_load_dtype(parser)
    options.add_device(parser)
    parser.add_argument("--out", default="inspect", help="output folder (default ./inspect)")
    options.add_trust_remote_code(parser)


def _read_passage(args: argparse.Namespace) -> str:
    """Step: check the options and read the passage (from ``--offset`` characters on)."""
    from pathlib import Path

    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.workflows.inspection import check_inspect_out

    path = Path(args.text)
    if not path.is_file():
        raise TokenWeightError(f"no such text file: {path}")
    if args.offset < 0:
        raise TokenWeightError(f"--offset must be >= 0 (characters to skip), got {args.offset}")
    if args.max_tokens < 2:
        raise TokenWeightError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    check_inspect_out(args.out)
    try:
        return path.read_text(encoding="utf-8")[args.offset :]
    except UnicodeDecodeError as exc:
        raise TokenWeightError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def _load_models(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Step: the tokenizer, the model and the ``--short-model`` (``None`` without one),
    refusing a short model of another tokenizer."""
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.infra.models import (
        compare_tokenizer_identity,
        load_model,
        load_tokenizer,
        tokenizer_identity,
    )

    kwargs = {
        "dtype": args.dtype,
        "device": args.device,
        "trust_remote_code": args.trust_remote_code,
    }
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, **kwargs)
    if not args.short_model:
        return tokenizer, model, None
    short_tok = load_tokenizer(args.short_model, trust_remote_code=args.trust_remote_code)
    diffs = compare_tokenizer_identity(tokenizer_identity(tokenizer), tokenizer_identity(short_tok))
    if diffs:
        raise TokenWeightError(
            f"--short-model {args.short_model} does not share the tokenizer of "
            f"{args.model} ({'; '.join(diffs)}); its NLL would be for other tokens: "
            "choose a short model of the same tokenizer"
        )
    return tokenizer, model, load_model(args.short_model, **kwargs)


def _print_summary(result: Any, window: int, paths: dict[str, Any]) -> None:
    from tokenweight.workflows.inspection import top_gains_markdown

    summary = result.summary()
    print(
        f"{summary['targets']} targets: mean NLL {summary['mean_long_nll']:.3f} long vs "
        f"{summary['mean_short_nll']:.3f} short (window {window}); "
        f"{summary['share_gain_over_1_nat']:.1%} gain > 1 nat, "
        f"{summary['share_gain_over_2_nats']:.1%} > 2 nats"
    )
    print(top_gains_markdown(result, k=10))
    for name, p in paths.items():
        print(f"{name:>10}: {p}")


def run(args: argparse.Namespace) -> int:
    from tokenweight.core.weighting import Scheme
    from tokenweight.infra.folder_lock import output_lock
    from tokenweight.workflows.inspection import check_inspect_out

    scheme = Scheme.parse(args.scheme)
    text = _read_passage(args)
    with output_lock(args.out, "--out"):  # one writer per folder
        check_inspect_out(args.out)  # again, under the lock
        return _inspect(args, scheme, text)


def _inspect(args: argparse.Namespace, scheme: Any, text: str) -> int:
    """Step: load the models, measure the passage, write and print the results."""
    from pathlib import Path

    from tokenweight.workflows.inspection import inspect_passage, write_inspection

    tokenizer, model, short_model = _load_models(args)
    result = inspect_passage(
        model,
        tokenizer,
        text,
        window=args.window,
        scheme=scheme,
        stride=args.stride,
        max_tokens=args.max_tokens,
        short_model=short_model,
    )
    paths = write_inspection(result, args.out, title=f"{args.model}: {Path(args.text).name}")
    _print_summary(result, args.window, paths)
    return 0
