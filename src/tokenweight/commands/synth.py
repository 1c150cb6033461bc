"""``tokenweight synth``: a synthetic corpus with copies at controlled distances."""

from __future__ import annotations

import argparse

from tokenweight.commands import options

HELP = "generate a synthetic long-range dataset (spans recur at given distances; side record)"


def _distance(text: str) -> int | list[int]:
    """A distance ``32`` or a range ``8-120`` (each copy draws its distance)."""
    if "-" in text:
        lo, hi = text.split("-")
        return [int(lo), int(hi)]
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", required=True, metavar="T", help="tokenizer or model folder, or 'smollm2'"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output prepared dataset")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--sequences", type=int, default=64, help="sequences")
    parser.add_argument(
        "--distances",
        type=options.comma_separated(_distance, "distances or lo-hi ranges"),
        default=[32, 128, 512],
        help="copy distance classes: fixed distances or lo-hi ranges, e.g. 32,128,512 or 8-120",
    )
    parser.add_argument(
        "--span",
        type=int,
        default=None,
        help="tokens per copy (default: 8, or 2 for --content facts)",
    )
    parser.add_argument("--copies", type=int, default=4, help="copies per distance class per row")
    parser.add_argument(
        "--words",
        type=int,
        default=256,
        help="single-token words drawn from the tokenizer (keys, values and filler)",
    )
    parser.add_argument(
        "--branching", type=int, default=4, help="successors per word of the bigram filler"
    )
    parser.add_argument(
        "--content",
        choices=("spans", "facts"),
        default="spans",
        help="what recurs: spans of filler, or facts, [key, value] pairs whose value a "
        "document picks from the key's group (span 2)",
    )
    parser.add_argument("--keys", type=int, default=16, help="key words of facts")
    parser.add_argument("--values", type=int, default=8, help="value words per key")
    parser.add_argument(
        "--filler",
        choices=("bigram", "document"),
        default="bigram",
        help="filler: the bigram grammar, or uniform draws from each document's own "
        "--doc-words words",
    )
    parser.add_argument(
        "--doc-words", type=int, default=32, help="words per document for --filler document"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier `synth` output at --out"
    )


def run(args: argparse.Namespace) -> int:
    from tokenweight.infra.models import default_cache_dir, ensure_local_model
    from tokenweight.workflows.synth import SynthConfig, class_label, write_synth

    config = SynthConfig(
        seq_len=args.seq_len,
        sequences=args.sequences,
        distances=args.distances,
        span=args.span
        if args.span is not None
        else (2 if args.content == "facts" else SynthConfig.span),
        copies=args.copies,
        words=args.words,
        branching=args.branching,
        content=args.content,
        keys=args.keys,
        values=args.values,
        filler=args.filler,
        doc_words=args.doc_words,
        seed=args.seed,
    )
    config.validate(key=lambda name: "--" + name.replace("_", "-"))
    tokenizer = ensure_local_model(args.tokenizer, default_cache_dir())
    write_synth(config, tokenizer, args.out, overwrite=args.overwrite)
    per_row = len(config.distances) * config.copies
    print(
        f"wrote {config.sequences} sequences of {config.seq_len} tokens to {args.out}: "
        f"{per_row} {'facts' if config.content == 'facts' else 'copies'} of {config.span} "
        "tokens per row at distances "
        f"{', '.join(class_label(lo, hi) for lo, hi in config.distance_classes())}; filler: "
        + (
            f"{config.doc_words} words per document"
            if config.filler == "document"
            else f"bigram grammar, {config.branching} successors per word"
        )
    )
    print(f"side record: {args.out}/dependencies.json ([row, start, length, distance] per copy)")
    return 0
