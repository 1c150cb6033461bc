"""``tokenweight score``: short-context NLL of a prepared dataset with a frozen scorer."""

from __future__ import annotations

import argparse

from tokenweight.commands import options

HELP = "score a prepared dataset with a frozen model (short-context NLL, resumable shards)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the defaults are score_dataset's, restated (importing it would make --help load
    # numpy); tests/test_one_definition.py checks that they agree
    parser.add_argument("prepared", metavar="DIR", help="folder written by `tokenweight prepare`")
    parser.add_argument(
        "--scorer",
        required=True,
        metavar="MODEL",
        help="scorer model: local folder, GGUF file/folder, 'smollm2', or hub name",
    )
    options.add_window_options(parser)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="scorer dtype (default auto: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument(
        "--half", action="store_true", help="store short_nll as float16 (default float32)"
    )
    parser.add_argument(
        "--with-long",
        action="store_true",
        help="also store long_nll (full-context NLL of every target; for `tokenweight select`)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument(
        "--windows-per-batch",
        type=int,
        default=None,
        help="windows per model call (default: N/W, the tokens of one long forward)",
    )
    parser.add_argument("--shard-size", type=int, default=256, help="rows per output shard")
    options.add_device(parser)
    parser.add_argument("--out", required=True, metavar="DIR2", help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard an existing --out and start over"
    )
    options.add_trust_remote_code(parser)


def run(args: argparse.Namespace) -> int:
    from tokenweight.data.score import score_dataset

    result = options.call_with_options(score_dataset, args)
    who = f"process {result.rank}/{result.world_size}: " if result.world_size > 1 else ""
    if result.scored:
        print(
            f"{who}scored {result.rows:,} sequences ({result.tokens:,} tokens) in "
            f"{len(result.scored)} shards in {result.seconds:.1f} s "
            f"({result.tokens_per_second:,.0f} tokens/s)"
        )
    if result.skipped:
        print(f"{who}{len(result.skipped)} shards were already done (resumed; skipped)")
    if result.complete:
        print(f"all {result.num_shards} shards done; scores and manifest in {result.out}")
    else:
        print(
            f"{who}my shards are done; the last process to finish writes {result.out}/manifest.json"
        )
    return 0
