"""``tokenweight synth``: a synthetic corpus with copies at controlled distances."""

from __future__ import annotations

import argparse

HELP = "generate a synthetic long-range dataset (spans recur at given distances; side record)"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", required=True, metavar="T", help="tokenizer or model folder, or 'smollm2'"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output prepared dataset")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (1024)")
    parser.add_argument("--sequences", type=int, default=64, help="sequences (64)")
    parser.add_argument(
        "--distances", type=_ints, default=[32, 128, 512], help="copy distances (32,128,512)"
    )
    parser.add_argument("--span", type=int, default=8, help="tokens per copy (8)")
    parser.add_argument("--copies", type=int, default=4, help="copies per distance per row (4)")
    parser.add_argument("--words", type=int, default=256, help="filler vocabulary (256 words)")
    parser.add_argument("--branching", type=int, default=4, help="successors per word (4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier `synth` output at --out"
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.models import default_cache_dir, ensure_local_model
    from tokenweight.synth import SynthConfig, write_synth

    config = SynthConfig(
        seq_len=args.seq_len,
        sequences=args.sequences,
        distances=args.distances,
        span=args.span,
        copies=args.copies,
        words=args.words,
        branching=args.branching,
        seed=args.seed,
    )
    config.validate()
    tokenizer = ensure_local_model(args.tokenizer, default_cache_dir())
    write_synth(config, tokenizer, args.out, overwrite=args.overwrite)
    per_row = len(config.distances) * config.copies
    print(
        f"wrote {config.sequences} sequences of {config.seq_len} tokens to {args.out}: "
        f"{per_row} copies of {config.span} tokens per row at distances "
        f"{', '.join(map(str, config.distances))}; filler: {config.words} words, "
        f"{config.branching} successors each"
    )
    print(f"side record: {args.out}/dependencies.json ([row, start, length, distance] per copy)")
    return 0
