"""Time of ``compute_weights`` per preset on (8, 32767) on CPU, beside a per-row loop.

The baseline is a straightforward implementation that handles one sequence at a time in
Python (the way a first prototype would), using the same torch ops per row. Both run in
this process, interleaved, so the ratio is robust to a noisy machine.

    python benchmarks/bench_weighting.py [--batch 8] [--targets 32767] [--repeats 7]
"""

from __future__ import annotations

import argparse
import math

import torch

from common import median_time
from tokenweight.core.weighting import PRESET_EXAMPLES, Scheme, compute_scores, compute_weights


def per_row_loop(long: torch.Tensor, short: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Reference: one row at a time, Python-level control flow per row."""
    out = torch.empty_like(long)
    for r in range(long.shape[0]):
        if scheme.is_uniform:
            out[r] = 1.0
            continue
        d = compute_scores(long[r : r + 1], short[r : r + 1], scheme)[0]
        n = d.numel()
        if scheme.sparsification is not None:
            k = max(1, math.floor(scheme.sparsification * n))
            perm = torch.randperm(n)
            top = perm[torch.argsort(d[perm], descending=True, stable=True)[:k]]
            d = torch.zeros_like(d)
            d[top] = 1.0
        if scheme.normalization == "l1":
            total = d.abs().sum()
            d = n * d / total if total > 0 else torch.ones_like(d)
        elif scheme.normalization == "softmax":
            d = n * torch.softmax(d, dim=0)
        if scheme.interpolation is not None:
            d = scheme.interpolation + (1 - scheme.interpolation) * d
        out[r] = d
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--targets", type=int, default=32767)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    long = torch.rand(args.batch, args.targets, generator=g) * 8
    short = torch.rand(args.batch, args.targets, generator=g) * 8
    print(
        f"compute_weights on ({args.batch}, {args.targets}), CPU, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| scheme | compute_weights (ms) | per-row loop (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for text in PRESET_EXAMPLES:
        scheme = Scheme.parse(text)
        compute_weights(long, short, scheme)  # warm-up
        per_row_loop(long, short, scheme)
        ours = median_time(lambda s=scheme: compute_weights(long, short, s), args.repeats)
        loop = median_time(lambda s=scheme: per_row_loop(long, short, s), args.repeats)
        print(f"| {text} | {ours * 1e3:.2f} | {loop * 1e3:.2f} | {loop / ours:.2f}x |")


if __name__ == "__main__":
    main()
