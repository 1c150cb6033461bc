"""Loss-head cost: token_nll versus full logits + F.cross_entropy (forward + backward).

Paths, each timed and measured in its own fresh process so memory peaks are clean:

* ``full``   -- ``F.cross_entropy(F.linear(h, W).float(), y, reduction="none")`` (baseline)
* ``ours``   -- ``tokenweight.core.losses.token_nll`` (chunked custom autograd, ``backend="chunked"``)
* ``sketch`` -- the plain efficient alternative: ``lm_head`` + cross-entropy on 4096-token
  chunks, each under ``torch.utils.checkpoint``
* ``cce``    -- ``token_nll(backend="cce")``, only with ``--device cuda`` when
  cut-cross-entropy is installed

Every path computes per-token NLL, then ``(u * nll).sum().backward()`` with a random
per-token weight ``u`` (what token weighting does). "Peak extra" is the peak memory above
what the inputs occupy (CPU: ``VmHWM`` after resetting it via ``/proc/self/clear_refs``;
CUDA: ``torch.cuda.max_memory_allocated``); it includes the gradients of ``h`` and ``W``
that every path must produce, and the ``excl. grads`` column subtracts their size.

    python benchmarks/bench_token_nll.py                       # CPU, fp32, the default shapes
    python benchmarks/bench_token_nll.py --device cuda --dtype bf16 --shapes 32768,2048,128256

Goals: ``ours`` peak extra <= 15% of ``full``, time <= 1.2x ``full``. Reference figures on
one H200 at (32768, 2048, 128256) bf16: the checkpointed sketch 0.17 s / 7.2 GiB, full
logits 0.35 s / 55.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

GIB = 2**30
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
SKETCH_CHUNK = 4096


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for part in text.split(";"):
        if part.strip():
            n, h, v = (int(x) for x in part.split(","))
            shapes.append((n, h, v))
    return shapes


# ---------------------------------------------------------------- child: one path, fresh process
def _make_path(name: str, chunk_size: int | None):
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from tokenweight.core.losses import token_nll

    def full(h, w, y):
        return F.cross_entropy(F.linear(h, w).float(), y, reduction="none")

    def ours(h, w, y):
        return token_nll(h, w, y, chunk_size=chunk_size, backend="chunked")

    def cce(h, w, y):
        return token_nll(h, w, y, backend="cce")

    def sketch(h, w, y):
        def piece(hc, yc):
            return F.cross_entropy(F.linear(hc, w).float(), yc, reduction="none")

        parts = [
            checkpoint(piece, h[i : i + SKETCH_CHUNK], y[i : i + SKETCH_CHUNK], use_reentrant=False)
            for i in range(0, h.shape[0], SKETCH_CHUNK)
        ]
        return torch.cat(parts)

    return {"full": full, "ours": ours, "sketch": sketch, "cce": cce}[name]


def child(args: argparse.Namespace) -> None:
    import torch

    from common import proc_status_bytes, reset_cpu_peak, sync, timed

    n, hsize, vocab = _parse_shapes(args.shape)[0]
    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    cuda = device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, hsize, generator=gen, device=device, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, hsize, generator=gen, device=device, dtype=dtype)
    weight.div_(math.sqrt(hsize)).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=gen, device=device)
    upstream = torch.rand(n, generator=gen, device=device)
    fn = _make_path(args.child, args.chunk_size)

    def step() -> float:
        hidden.grad = weight.grad = None
        return timed(lambda: (upstream * fn(hidden, weight, labels)).sum().backward(), device)

    # one-time library start-up costs (checkpoint machinery, kernel dispatch) off the clock
    small = min(n, 64)
    (upstream[:small] * fn(hidden[:small], weight, labels[:small])).sum().backward()
    for _ in range(args.warmup):
        step()
    hidden.grad = weight.grad = None
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = proc_status_bytes("VmRSS" if reset_cpu_peak() else "VmHWM")
    times = [step()]
    peak = torch.cuda.max_memory_allocated(device) if cuda else proc_status_bytes("VmHWM")
    times += [step() for _ in range(args.repeats - 1)]
    grad_bytes = (hidden.numel() + weight.numel()) * dtype.itemsize
    print("RESULT " + json.dumps({"times": times, "peak": peak - base, "grads": grad_bytes}))


# ---------------------------------------------------------------- parent: spawn, collect, print
def _run_child(path: str, shape: tuple[int, int, int], args: argparse.Namespace, repeats: int):
    cmd = [
        sys.executable, __file__, "--child", path, "--shape", ",".join(map(str, shape)),
        "--device", args.device, "--dtype", args.dtype, "--repeats", str(repeats),
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"path {path!r} at {shape} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--shapes", default="16384,576,49152;4096,2048,128256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=None, help="default: 0 on CPU, 2 on CUDA")
    parser.add_argument("--chunk-size", type=int, default=None, help="token_nll chunk size")
    parser.add_argument("--paths", default=None, help="comma list; default full,ours,sketch[,cce]")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 2 if args.device == "cuda" else 0
    if args.child:
        child(args)
        return 0

    paths = ["full", "ours", "sketch"]
    if args.paths:
        paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    elif args.device == "cuda":
        import importlib.util

        if importlib.util.find_spec("cut_cross_entropy") is not None:
            paths.append("cce")
    print(f"loss head forward+backward, {args.device} {args.dtype}, median of {args.repeats}")
    for shape in _parse_shapes(args.shapes):
        results: dict[str, dict] = {p: {"times": [], "peak": 0, "grads": 0} for p in paths}
        # on CPU, one process per repeat, interleaved, so drift on a shared machine hits all paths
        rounds = args.repeats if args.device == "cpu" else 1
        per_child = 1 if args.device == "cpu" else args.repeats
        for _ in range(rounds):
            for path in paths:
                got = _run_child(path, shape, args, per_child)
                results[path]["times"] += got["times"]
                results[path]["peak"] = max(results[path]["peak"], got["peak"])
                results[path]["grads"] = got["grads"]
        n, h, v = shape
        print(f"\nN={n} H={h} V={v}")
        print(
            f"{'path':8s} {'time s':>8s} {'x full':>7s} {'peak extra GiB':>15s} {'x full':>7s} "
            f"{'excl. grads GiB':>16s} {'x full':>7s}"
        )
        base = results.get("full")
        for path in paths:
            r = results[path]
            t = statistics.median(r["times"])
            peak, work = r["peak"] / GIB, (r["peak"] - r["grads"]) / GIB
            if base:
                bt = statistics.median(base["times"])
                bp, bw = base["peak"] / GIB, (base["peak"] - base["grads"]) / GIB
                ratios = (f"{t / bt:7.2f}", f"{peak / bp:7.3f}", f"{work / bw:7.3f}")
            else:
                ratios = ("-", "-", "-")
            print(
                f"{path:8s} {t:8.3f} {ratios[0]:>7s} {peak:15.3f} {ratios[1]:>7s} "
                f"{work:16.3f} {ratios[2]:>7s}"
            )
    print("\ngoal: ours peak extra <= 0.15x full, time <= 1.2x full")
    if args.device == "cuda":
        print(
            "reference, H200 bf16 32768x2048x128256: full 0.35 s / 55.5 GiB, sketch 0.17 s / 7.2 GiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
