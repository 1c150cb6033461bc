"""Cost of short-context scoring, beside one long forward and the one-window-at-a-time loop.

Three paths on the same batch, interleaved in one run (ratios are robust to noise):

* ``long forward``: one full-sequence forward to per-token NLL (``model_token_nll``), the
  unit of cost;
* ``short_context_nll``: batched windows, no full logits (ours);
* ``window loop``: one window at a time, full logits, then ``F.cross_entropy``;
* ``release emulation``: the same loop plus the soft-target entropy over the vocabulary
  that the authors' released code computes (and discards) for every window.

CPU default: a small random Llama, N=8192, window 1024. On a GPU:

    python benchmarks/bench_scoring.py --device cuda --dtype bf16 --model-shape llama-1b \
        --seq-len 32768 --window 8192 --stride 6144
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from common import DTYPES, REAL_SHAPES, LlamaShape, build_llama, timed
from tokenweight.core.losses import model_token_nll
from tokenweight.core.scoring import plan_stride, plan_windows, short_context_nll

SHAPES = {"tiny": LlamaShape(256, 4, 8, 4, 768, 49152), **REAL_SHAPES}


def build_model(shape: str, dtype: torch.dtype, device: str, attn: str):
    """A random-weight Llama of ``shape`` in eval mode (tied embeddings, 128K positions)."""
    model = build_llama(
        SHAPES[shape], dtype=dtype, device=device, attn=attn, max_position_embeddings=131072
    )
    return model.eval()


def window_loop(
    model, ids: torch.Tensor, window: int, stride: int, entropy: bool = False
) -> torch.Tensor:
    """Each window alone, full logits, cross-entropy over all of them; with ``entropy``
    also the discarded soft-target entropy of the authors' release."""
    plan = plan_windows(ids.shape[1], window, stride)
    out = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            for k, (a, c) in enumerate(zip(plan.starts, plan.counts)):
                win = ids[b : b + 1, a : a + window]
                logits = model(win).logits.float()
                nll = F.cross_entropy(logits[0, :-1], win[0, 1:], reduction="none")
                if entropy:
                    logp = logits.log_softmax(-1)
                    _ = -(logp.exp() * logp).sum(-1)
                keep = nll if k == 0 else nll[-c:]
                out[b, a + window - 1 - keep.shape[0] : a + window - 1] = keep
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--model-shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--windows-per-batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow baseline")
    args = parser.parse_args()

    model = build_model(args.model_shape, DTYPES[args.dtype], args.device, args.attn)
    stride = args.stride or plan_stride(args.seq_len, args.window)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (args.batch, args.seq_len), generator=g).to(args.device)
    plan = plan_windows(args.seq_len, args.window, stride)

    def long_forward():
        with torch.no_grad():
            return model_token_nll(model, ids)

    def ours():
        return short_context_nll(
            model, ids, window=args.window, stride=stride, windows_per_batch=args.windows_per_batch
        )

    def loop():
        return window_loop(model, ids, args.window, stride)

    def release():
        return window_loop(model, ids, args.window, stride, entropy=True)

    paths = {"long forward (model_token_nll)": long_forward, "short_context_nll (ours)": ours}
    if not args.skip_loop:
        paths["window loop, full logits"] = loop
        paths["release emulation (loop + entropy)"] = release
    # correctness cross-check once (not a test, a guard against timing the wrong thing)
    if not args.skip_loop:
        diff = (ours() - loop()).abs().max().item()
        print(f"max |ours - loop| = {diff:.2e} nats")
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks: dict[str, float] = {}
    for fn in paths.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in paths.items():
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[name].append(timed(fn, args.device))
            if args.device == "cuda":
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30
    base = statistics.median(times["long forward (model_token_nll)"])
    print(
        f"{args.model_shape} model, {args.dtype}, {args.device}, batch {args.batch}, "
        f"N={args.seq_len}, window {args.window}, stride {stride} "
        f"({plan.num_windows} windows/sequence), median of {args.repeats}"
    )
    print("| path | time (s) | x long forward |" + (" peak GiB |" if peaks else ""))
    print("|---|---:|---:|" + ("---:|" if peaks else ""))
    for name in paths:
        t = statistics.median(times[name])
        peak = f" {peaks[name]:.1f} |" if peaks else ""
        print(f"| {name} | {t:.3f} | {t / base:.2f}x |{peak}")
    if not args.skip_loop:
        ours_t = statistics.median(times["short_context_nll (ours)"])
        for name in ("window loop, full logits", "release emulation (loop + entropy)"):
            print(
                f"short_context_nll is {statistics.median(times[name]) / ours_t:.2f}x faster "
                f"than the {name}"
            )


if __name__ == "__main__":
    main()
