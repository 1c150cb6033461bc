"""Step time and peak memory of one training step per loss path, as ratios to uniform.

Each step is: zero grads, :func:`tokenweight.training.loss.token_weighted_loss` (the code
path of ``TokenWeightTrainer.compute_loss``: long NLL without full logits, scorer,
weights, weighted loss), backward, AdamW step. Paths:

- ``uniform``: plain cross-entropy (no scorer) -- the baseline
- ``dense-self``: Dense 0.75, scored by the model itself (batched windows, no grad)
- ``dense-precomputed``: Dense 0.75, short NLL read from the batch (frozen scorer)
- ``sparse-self``: Sparse 0.25, self-scored

Step time is the median of ``--repeats`` steps after ``--warmup`` steps (which also
allocate the optimizer state); the paths take turns, so load changes on a shared machine
hit all of them alike. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA;
on CPU, each path runs once more in a fresh process whose allocator hands freed memory
back to the system, and the peak resident set (VmHWM) of its measured step is reported.

CPU (default): tiny Llama, 4096 tokens, window 1024::

    python benchmarks/bench_train_step.py

GPU, the reference setting (random-weight Llama-3.2-1B shape, one 32K sequence)::

    python benchmarks/bench_train_step.py --device cuda --dtype bf16 --model-shape llama-1b \\
        --seq-len 32768 --window 8192 --stride 6144 --gradient-checkpointing --attn sdpa

Reference for the authors' released code in that setting (one H200): 1.65 s uniform /
3.69 s Dense self-scored, 28.8 GiB; goals for this code: dense-self <= 1.2x our uniform, < 1.85 s, <= 14.4 GiB.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import (
    DTYPES,
    REAL_SHAPES,
    LlamaShape,
    build_llama,
    proc_status_bytes,
    reset_cpu_peak,
    sync,
)
from tokenweight.core.scoring import PrecomputedScorer, SelfScorer, plan_stride
from tokenweight.training.loss import token_weighted_loss

SHAPES = {"tiny": LlamaShape(128, 4, 4, 2, 512, 8192, tied=False), **REAL_SHAPES}
PATHS = {
    "uniform": ("uniform", None),
    "dense-self": ("dense:0.75", "self"),
    "dense-precomputed": ("dense:0.75", "precomputed"),
    "sparse-self": ("sparse:0.25", "self"),
}


def build_model(args: argparse.Namespace, device: torch.device):
    model = build_llama(
        SHAPES[args.model_shape],
        dtype=DTYPES[args.dtype],
        device=device,
        attn=args.attn,
        max_position_embeddings=max(args.seq_len, 8192),
        rope_theta=500000.0,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def peak_reset(device: torch.device) -> float:
    """Reset the peak counter; return the memory in use now (bytes)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return float(torch.cuda.memory_allocated(device))
    reset_cpu_peak()
    return proc_status_bytes("VmRSS") or 0.0


def peak_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    peak = proc_status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return peak


def make_step(name, model, optimizer, batch, args, device, stride):
    """A closure running one optimizer step of path ``name``; returns (seconds, scoring s)."""
    scheme, kind = PATHS[name]
    scorer = None
    if kind == "self":
        scorer = SelfScorer(
            args.window, stride, bos_token_id=1, windows_per_batch=args.windows_per_batch
        )
    elif kind == "precomputed":
        scorer = PrecomputedScorer()
    generator = torch.Generator().manual_seed(0)

    def step() -> tuple[float, float]:
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        parts = token_weighted_loss(model, batch, scheme, scorer, generator=generator)
        parts.loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - start, parts.scoring_seconds

    return step


def measure(steps, args, device):
    """Warm up every path, then run the paths round-robin (so load changes on a shared
    machine hit every path alike); per path: median step time, median scoring time, peak
    memory over its timed steps."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in steps}
    scoring = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0.0)
    extra = dict.fromkeys(steps, 0.0)
    for _ in range(args.repeats):
        for name, step in steps.items():
            resting = peak_reset(device)
            t, s = step()
            times[name].append(t)
            scoring[name].append(s)
            peak = peak_bytes(device)
            peaks[name] = max(peaks[name], peak)
            extra[name] = max(extra[name], peak - resting)
    if device.type == "cpu":  # the CPU allocator keeps freed memory: measure in isolation
        for name in steps:
            peaks[name], extra[name] = cpu_memory_in_subprocess(name, args)
    return {
        name: (
            statistics.median(times[name]),
            statistics.median(scoring[name]),
            peaks[name],
            extra[name],
        )
        for name in steps
    }


def cpu_memory_in_subprocess(path: str, args: argparse.Namespace) -> tuple[float, float]:
    """(peak RSS, peak above the RSS before the step) of one step of ``path``, in a fresh
    process whose allocator returns freed blocks to the system (so RSS tracks live
    memory)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    argv = sys.argv[1:]
    command = [sys.executable, __file__, *argv, "--memory-of", path]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    peak, extra = out.strip().splitlines()[-1].split()[1:3]
    return float(peak), float(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--model-shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=None, help="default: plan_stride")
    parser.add_argument("--windows-per-batch", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--attn", default="sdpa", help="eager, sdpa, flash_attention_2, ...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        sys.exit(f"error: unknown path(s) {unknown}; choose from {list(PATHS)}")
    if "uniform" not in paths:
        paths.insert(0, "uniform")
    stride = args.stride or plan_stride(args.seq_len, args.window)

    model = build_model(args, device)
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (args.batch_size, args.seq_len), generator=g)
    ids[:, 0] = 1
    short = torch.rand(args.batch_size, args.seq_len - 1, generator=g) * 8
    batch = {"input_ids": ids.to(device), "short_nll": short.to(device)}

    if args.memory_of:  # one path, one measured step (see cpu_memory_in_subprocess)
        step = make_step(args.memory_of, model, optimizer, batch, args, device, stride)
        for _ in range(max(args.warmup, 1)):
            step()
        resting = peak_reset(device)
        step()
        peak = peak_bytes(device)
        print(f"MEMORY {peak:.0f} {peak - resting:.0f}")
        return

    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"bench_train_step: {args.model_shape} ({params / 1e6:.1f}M params, {args.dtype}, "
        f"attn {args.attn}, grad ckpt {'on' if args.gradient_checkpointing else 'off'}) on "
        f"{name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"batch {args.batch_size} x {args.seq_len} tokens, window {args.window}, stride "
        f"{stride}; median of {args.repeats} steps after {args.warmup} warm-up"
    )
    steps = {p: make_step(p, model, optimizer, batch, args, device, stride) for p in paths}
    results = measure(steps, args, device)
    base_time, _, base_mem, base_extra = results["uniform"]
    mem_label = "peak GPU GiB" if device.type == "cuda" else "peak RSS GiB"
    print(
        f"\n{'path':<18} {'step s':>8} {'x uniform':>10} {'scoring s':>10} "
        f"{mem_label:>13} {'x uniform':>10} {'step +GiB':>10} {'x uniform':>10}"
    )
    for path in paths:
        t, s, m, e = results[path]
        print(
            f"{path:<18} {t:8.3f} {t / base_time:10.2f} {s:10.3f} "
            f"{m / 2**30:13.2f} {m / base_mem:10.2f} {e / 2**30:10.3f} "
            f"{e / max(base_extra, 1.0):10.2f}"
        )
    print(
        "step +GiB: peak during the step above the memory in use before it (activations, "
        "gradients, scoring windows)"
    )
    if device.type == "cuda" and "dense-self" in results:
        t, _, m, _ = results["dense-self"]
        print(
            f"\nreference (authors' release, H200): uniform 1.65 s, Dense self 3.69 s, 28.8 GiB; "
            f"ours Dense self {t:.2f} s = {3.69 / t:.2f}x faster (target >= 2x), "
            f"{t / base_time:.2f}x our uniform (target <= 1.2x), {m / 2**30:.1f} GiB = "
            f"{m / 2**30 / 28.8:.2f}x theirs (target <= 0.5x)"
        )


if __name__ == "__main__":
    main()
