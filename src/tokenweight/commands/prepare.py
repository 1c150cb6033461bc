"""``tokenweight prepare``: corpus -> shuffled fixed-length token sequences + manifest."""

from __future__ import annotations

import argparse

from tokenweight.commands import options

HELP = "tokenize a corpus into shuffled fixed-length sequences (datasets folder + manifest)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text files, folders (searched recursively), glob patterns, JSONL or Parquet "
        "files; with --hf-split: Hugging Face dataset names",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="TOK",
        help="tokenizer or model: local folder, GGUF file/folder, 'smollm2', or hub name",
    )
    parser.add_argument(
        "--seq-len", type=int, required=True, metavar="N", help="tokens per sequence (BOS included)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    options.add_corpus_options(parser, inputs="INPUTs", split="train")
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help="document tokens between sequence starts; smaller than N-1 overlaps (default: no overlap)",
    )
    parser.add_argument(
        "--keep-tail",
        action="store_true",
        help="keep each document's incomplete tail as a padded sequence with attention_mask",
    )
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default: 42)")
    parser.add_argument(
        "--max-sequences",
        type=int,
        default=None,
        metavar="K",
        help="keep only the first K sequences of the shuffle (a random sample; default: all)",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="tokenizer processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    options.add_trust_remote_code(parser, "tokenizer")


def run(args: argparse.Namespace) -> int:
    from tokenweight.data.prepare import format_summary, prepare_dataset

    result = options.call_with_options(prepare_dataset, args)
    print(format_summary(result))
    return 0
