"""Per-process cost of short-context scoring, alone vs split over a sequence-parallel group.

Under sequence parallelism every process of an SP group holds the same gathered sequence;
``tokenweight.core.scoring.split_scoring(group)`` has each process run only its share of the
windows, then gathers the short NLL. This script starts ``--processes`` gloo processes
(CPU) that each score the same batch with the self scorer, interleaved:

* ``alone``: every window in every process (what each SP process paid before the split);
* ``split over D``: inside ``split_scoring`` over a group of ``D`` processes, for each
  degree ``D`` from 2 up to ``--processes`` (dividing it).

The figure is the CPU time of the scoring call in each process (``time.process_time``,
less sensitive than wall time to other work on a shared machine), median over repeats;
printed per degree as the largest over the processes and as its ratio to ``alone``
(ideal: ``1 / D``). Both paths give the same short NLL (checked once).

    python benchmarks/bench_sp_scoring.py                      # 2 processes, N=8192
    python benchmarks/bench_sp_scoring.py --processes 4 --seq-len 16384
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from common import DTYPES, LlamaShape, build_llama

TINY = LlamaShape(128, 2, 4, 2, 384, 4096)


def _worker(rank: int, args: argparse.Namespace, port: int, results: dict) -> None:
    import torch.distributed as dist

    from tokenweight.core.losses import model_token_nll
    from tokenweight.core.scoring import SelfScorer, split_scoring

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.processes)
    model = build_llama(
        TINY, dtype=DTYPES["fp32"], device="cpu", attn="sdpa", max_position_embeddings=args.seq_len
    ).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, TINY.vocab, (args.batch, args.seq_len), generator=g)
    batch = {"input_ids": ids}
    with torch.no_grad():
        long_nll = model_token_nll(model, ids)
    scorer = SelfScorer(args.window, windows_per_batch=args.windows_per_batch)
    degrees = [d for d in range(2, args.processes + 1) if args.processes % d == 0]
    groups = {}
    for d in degrees:  # every process creates every group (a collective)
        for first in range(0, args.processes, d):
            members = list(range(first, first + d))
            group = dist.new_group(members)
            if rank in members:
                groups[d] = group

    def alone() -> torch.Tensor:
        return scorer(batch, long_nll, model=model)

    def split(d: int):
        def run() -> torch.Tensor:
            with split_scoring(groups[d]):
                return scorer(batch, long_nll, model=model)

        return run

    paths = {"alone": alone, **{f"split over {d}": split(d) for d in degrees}}
    reference = alone()
    difference = max(float((fn() - reference).abs().max()) for fn in paths.values())
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            dist.barrier()
            start = time.process_time()
            fn()
            seconds[name].append(time.process_time() - start)
    results[rank] = ({name: statistics.median(t) for name, t in seconds.items()}, difference)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import socket

    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--windows-per-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(args, port, results), nprocs=args.processes, join=True)
    names = list(results[0][0])
    worst = {name: max(results[r][0][name] for r in range(args.processes)) for name in names}
    difference = max(results[r][1] for r in range(args.processes))
    print(
        f"tiny Llama (hidden {TINY.hidden}, {TINY.layers} layers, vocab {TINY.vocab}), "
        f"{args.processes} gloo processes, batch {args.batch}, N={args.seq_len}, "
        f"window {args.window}, median of {args.repeats}; max |split - alone| = "
        f"{difference:.1e} nats"
    )
    print("| scoring | CPU s per process (largest) | x alone | ideal |")
    print("|---|---:|---:|---:|")
    for name in names:
        degree = 1 if name == "alone" else int(name.rsplit(" ", 1)[1])
        print(
            f"| {name} | {worst[name]:.3f} | {worst[name] / worst['alone']:.2f}x | "
            f"{1 / degree:.2f}x |"
        )


if __name__ == "__main__":
    main()
