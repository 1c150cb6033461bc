"""The GPU-only measurements of this package as two calls within one short GPU lease.

Run through ``benchmarks/gpu_checks.sh`` (which sets ``PYTHONPATH``); this module holds
the settings, the parts, the plan (``--dry-run``) and the driver:

* **call 1** parks the first half of the model outside the checkout, installs the bundled
  wheels the machine lacks, then runs the parts that need no real model: CUDA correctness
  (``env``, ``nll_fp32``, ``nll_bf16``, ``cce``, ``parity``) and the performance table
  (``perf_time``, ``perf_memory``);
* **call 2** joins the model from the parked half and the second half it carries
  (``model``), then runs the mini-study on it (``study``).

Each part runs in its own process under its own deadline, writes its results as soon as it
ends (``STATE/results/PART.json``) and is skipped on a rerun when they exist. At the end of
every call ``OUT`` receives at most 8 files: ``results.json`` (every part so far), the
call's log, the plan and the study's report.

Settings: ``gpu`` (the reference setting on one CUDA GPU) and ``rehearsal`` (the same
parts at CPU size; the parts that only a GPU can run are listed as not rehearsed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_bundle import BundleError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FORMAT = "tokenweight.gpu_checks"
BUNDLE = ROOT / ".gpu-bundle"  # made by `make gpu-bundle` (ignored by git)

# goals for the reference setting (one 32K-token sequence, Llama-3.2-1B shape, bf16)
GOALS = {
    "dense_self_x_uniform": 1.15,  # step time of Dense 0.75 self-scored over uniform
    "peak_gib": 12.0,  # peak GPU memory of any path
    "scoring_x_forward": 0.8,  # self-scoring time over one full-sequence forward
}
# The release of the paper's authors, emulated by bench_scoring.py (window loop with full
# logits plus the soft-target entropy it computes and discards).
RELEASE_PATH = "release emulation"

# Stated rates for budgets on a GPU (the H100/H200 lent here: 770-800 TFLOP/s measured on
# one large bf16 matrix product). Sustained rates in training are far lower; these are
# assumptions for planning, checked by the run's own timings.
GPU_RATES = {"bf16": 2.0e14, "fp32": 5.0e13}
# Fixed costs measured on the CPU rehearsal (start a process, import torch and
# transformers, build the model): seconds per part, added to every budget.
PROCESS_START_S = 12.0


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """Everything a run of the parts depends on."""

    name: str
    device: str  # "cuda" or "cpu"
    call_limit_s: int  # the whole call, start of the driver to its last file
    nll: tuple[int, int, int]  # (N, H, V) of the loss-head checks
    loss_head: tuple[int, int, int]  # (N, H, V) of the loss-head timing
    parity_seq_len: int
    perf: dict[str, Any]
    study: dict[str, Any]
    # parts that cannot run here, with the reason (not rehearsed on the CPU)
    skipped: dict[str, str] = field(default_factory=dict)
    # measured seconds per part on the CPU (budgets of the rehearsal)
    measured_s: dict[str, float] = field(default_factory=dict)
    # a part's deadline: this many times its budget, at least a minute
    deadline_factor: float = 2.0

    @property
    def dtype(self) -> str:
        return str(self.perf["dtype"])


CUDA_ONLY = {
    "nll_bf16": "bf16 CUDA kernels (matrix products and reductions differ on the CPU)",
    "cce_bf16": (
        "cut-cross-entropy's backward needs bf16 or fp16 embeddings, and Triton's "
        "interpreter computes its bf16 kernels wrongly on the CPU"
    ),
    "perf_memory": "CUDA memory statistics (torch.cuda.max_memory_allocated)",
}

SETTINGS = {
    "gpu": Setting(
        name="gpu",
        device="cuda",
        call_limit_s=330,
        nll=(8192, 2048, 128256),
        loss_head=(32768, 2048, 128256),
        parity_seq_len=512,
        perf={
            "model_shape": "llama-1b",
            "seq_len": 32768,
            "window": 8192,
            "stride": 6144,
            "dtype": "bf16",
            "attn": "sdpa",
            "gradient_checkpointing": True,
            "repeats": 3,
            "warmup": 1,
        },
        study={
            "seq_len": 32768,
            "window": 8192,
            "stride": 6144,
            "rope_theta": 1.6e6,  # 16x SmolLM2's 1e5, the paper's ratio for 4x longer
            "max_position_embeddings": 32768,
            "train_sequences": 24,
            "eval_sequences": 10,
            "max_steps": 24,
            "learning_rate": 5e-5,
            "warmup_steps": 4,
            "dtype": "bf16",
            "gradient_checkpointing": True,
            "probes": ["passkey", "needle"],
            "probe_lengths": [32768],
            "probe_depths": [0.1, 0.5, 0.9],
            "probe_trials": 2,
            "device": "cuda",
        },
    ),
    "rehearsal": Setting(
        name="rehearsal",
        device="cpu",
        call_limit_s=900,  # a cap for shared CPUs; a quiet 2-core machine needs far less
        nll=(515, 64, 1000),
        loss_head=(2048, 64, 4096),
        parity_seq_len=128,
        perf={
            "model_shape": "tiny",
            "seq_len": 512,
            "window": 128,
            "stride": None,
            "dtype": "fp32",
            "attn": "sdpa",
            "gradient_checkpointing": True,
            "repeats": 1,
            "warmup": 1,
        },
        study={
            "seq_len": 256,
            "window": 64,
            "stride": None,
            "rope_theta": 1.6e6,
            "max_position_embeddings": 32768,
            "train_sequences": 2,
            "eval_sequences": 2,
            "max_steps": 1,
            "learning_rate": 5e-5,
            "warmup_steps": 0,
            "dtype": "fp32",
            "gradient_checkpointing": True,
            "probes": ["passkey", "needle"],
            "probe_lengths": [256],
            "probe_depths": [0.5],
            "probe_trials": 1,
            "device": "cpu",
        },
        skipped=dict(CUDA_ONLY),
        deadline_factor=4.0,  # CI's and developers' CPUs are shared
        # wall seconds of each part on a shared 2-core CPU (load average 10-18), process
        # start included; the CPU time of both calls together was about 160 s
        measured_s={
            "env": 9,
            "nll_fp32": 11,
            "cce": 30,
            "parity": 26,
            "loss_head": 36,
            "perf_time": 41,
            "model": 95,
            "study": 560,
        },
    ),
}

# the held-out plays of the mini-study: ten plays of at least 32768 SmolLM2 tokens (one
# sequence each); the other plays and Paradise Lost give 25 training sequences
HELD_OUT_PLAYS = (
    "hamlet_gut.txt",
    "othello_gut.txt",
    "lear_gut.txt",
    "richard_iii_gut.txt",
    "julius_caesar_gut.txt",
    "twelfth_night_gut.txt",
    "romeo_and_juliet_gut.txt",
    "merchant_of_venice_gut.txt",
    "much_ado_about_nothing_gut.txt",
    "winters_tale_gut.txt",
)
STUDY_RUNS = (
    {"scheme": "uniform"},
    {"scheme": "dense:0.75", "scorer": "self"},
    {"scheme": "dense:0.75", "scorer": "frozen"},
)
TRAIN_PATHS = ("uniform", "dense-self", "dense-precomputed", "sparse-self")


# ---------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Part:
    name: str
    call: int
    title: str
    needs: tuple[str, ...] = ()  # parts whose results this one reads


PARTS = (
    Part("env", 1, "machine, card, library versions"),
    Part("nll_fp32", 1, "token_nll values and gradients against full-logit cross-entropy, fp32"),
    Part("nll_bf16", 1, "the same in bf16"),
    Part("cce", 1, "the cut-cross-entropy backend against full-logit cross-entropy, fp32"),
    Part("cce_bf16", 1, "the same in bf16 with gradients; whether auto picks it"),
    Part("parity", 1, "one training step of each loss path against its CPU result"),
    Part("loss_head", 1, "token_nll against full logits and checkpointed chunks: time, memory"),
    Part("perf_time", 1, "step time per path, scoring against one forward, release emulation"),
    Part("perf_memory", 1, "peak GPU memory per path"),
    Part("model", 2, "join the model's halves, check its sha256, convert the GGUF"),
    Part(
        "study",
        2,
        "mini-study: uniform vs Dense 0.75 self vs Dense 0.75 precomputed",
        needs=("model",),
    ),
)
PART_NAMES = tuple(p.name for p in PARTS)


def _llama_params(shape: Any) -> tuple[float, float]:
    """(non-embedding parameters, head parameters) of a ``common.LlamaShape``."""
    h, layers = shape.hidden, shape.layers
    kv = h * shape.kv_heads // shape.heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * shape.intermediate
    return float(layers * per_layer), float(h * shape.vocab)


def train_step_flops(shape: Any, n: int, *, checkpointing: bool) -> float:
    """FLOPs of one forward+backward over ``n`` tokens: 2 per parameter and token forward,
    4 backward (plus 2 more for recomputed layers with checkpointing, and for the loss
    head's recomputed chunks), causal attention ``2 n^2 h`` per layer forward, 2.5x that
    backward."""
    body, head = _llama_params(shape)
    attn_fwd = 2.0 * n * n * shape.hidden * shape.layers
    recompute = 1.0 if checkpointing else 0.0
    return (6 + 2 * recompute) * body * n + 8 * head * n + attn_fwd * (3.5 + recompute)


def forward_flops(shape: Any, n: int, windows: int = 1) -> float:
    """FLOPs of a forward over ``windows`` pieces of ``n`` tokens each (no gradient)."""
    body, head = _llama_params(shape)
    return windows * (2 * (body + head) * n + 2.0 * n * n * shape.hidden * shape.layers)


def _shapes() -> dict[str, Any]:
    from common import REAL_SHAPES, LlamaShape

    return {"tiny": LlamaShape(128, 4, 4, 2, 512, 8192, tied=False), **REAL_SHAPES}


def _windows(n: int, window: int, stride: int | None) -> int:
    if n <= window:
        return 1
    stride = stride or window * 3 // 4
    return 1 + math.ceil((n - window) / stride)


def budgets(setting: Setting) -> dict[str, float]:
    """Seconds each part is planned to take: measured CPU seconds for the rehearsal; on a
    GPU, a fixed process cost plus FLOPs at the stated rate."""
    if setting.measured_s:
        return {
            p.name: float(setting.measured_s.get(p.name, PROCESS_START_S))
            for p in PARTS
            if p.name not in setting.skipped
        }
    shapes = _shapes()
    perf = setting.perf
    rate = GPU_RATES[setting.dtype]
    shape, n = shapes[perf["model_shape"]], int(perf["seq_len"])
    step = train_step_flops(shape, n, checkpointing=perf["gradient_checkpointing"])
    wins = _windows(n, perf["window"], perf["stride"])
    score = forward_flops(shape, perf["window"], wins)
    steps = (perf["repeats"] + perf["warmup"]) * len(TRAIN_PATHS)
    fwd = forward_flops(shape, n)
    # timed: train steps (+ scoring on the two self paths), forwards, ours and the loop
    perf_flops = steps * step + (perf["repeats"] + perf["warmup"]) * (
        2 * score + 3 * fwd + 2 * score
    )
    memory_flops = 2 * len(TRAIN_PATHS) * step + 2 * score
    st = setting.study
    smol = shapes["smollm2-135m"]
    sn = int(st["seq_len"])
    s_step = train_step_flops(smol, sn, checkpointing=st["gradient_checkpointing"])
    s_wins = _windows(sn, st["window"], st["stride"])
    s_score = forward_flops(smol, st["window"], s_wins)
    s_fwd = forward_flops(smol, sn)
    runs, models = len(STUDY_RUNS), len(STUDY_RUNS) + 1
    prompts = len(st["probes"]) * len(st["probe_lengths"]) * len(st["probe_depths"])
    prompts *= st["probe_trials"] * models
    study_flops = (
        runs * st["max_steps"] * s_step
        + st["max_steps"] * s_score  # the self-scored run's windows
        + st["train_sequences"] * (s_score + s_fwd)  # frozen scores with long NLL
        + st["eval_sequences"] * (models * s_fwd + s_score + s_fwd)  # eval + LongPPL
        + prompts * s_fwd  # probe prompts (prefill; decoding is small)
    )
    nll_n, nll_h, nll_v = setting.nll
    nll_flops = 14.0 * nll_n * nll_h * nll_v  # ours (4 products) and the reference (3)
    lh_n, lh_h, lh_v = setting.loss_head
    return {
        "env": PROCESS_START_S,
        "nll_fp32": PROCESS_START_S + nll_flops / GPU_RATES["fp32"],
        "nll_bf16": PROCESS_START_S + nll_flops / GPU_RATES["bf16"],
        "cce": PROCESS_START_S + 10 + nll_flops / GPU_RATES["fp32"],  # Triton compiles
        "cce_bf16": PROCESS_START_S + 10 + 2 * nll_flops / GPU_RATES["bf16"],
        "parity": PROCESS_START_S + 10,
        # four paths in a process each (full, ours, sketch, cce), 2 warm-ups and 3 timed
        "loss_head": 4 * PROCESS_START_S + 5 * 4 * 7.0 * lh_n * lh_h * lh_v / rate,
        "perf_time": PROCESS_START_S + 10 + perf_flops / rate,
        "perf_memory": PROCESS_START_S + 10 + memory_flops / rate,
        # GGUF to safetensors: 23 s measured on the CPU (dequantization, no GPU work)
        "model": PROCESS_START_S + 25,
        # each of 3 trainings and the evaluation loads a model and builds a Trainer
        "study": PROCESS_START_S + 60 + study_flops / rate,
    }


def deadline(budget: float, factor: float = 2.0) -> float:
    """A part's deadline: ``factor`` times its budget, at least a minute."""
    return max(60.0, factor * budget)


# ---------------------------------------------------------------------- plan
class PlanError(ValueError):
    """A setting or a file the plan needs is wrong; the message says how to fix it."""


LEASE_S = 900  # device time per task
START_S = 120  # a fresh machine's start, at most
CARRY_LIMIT = 64 * 2**20
MAX_CALL_S = 360  # each call, so that a targeted rerun still fits the lease


def validate(setting: Setting) -> None:
    """Refuse inconsistent settings before anything runs."""
    perf, st = setting.perf, setting.study
    if setting.device not in ("cuda", "cpu"):
        raise PlanError(f"device: cuda or cpu, got {setting.device!r}")
    shapes = _shapes()
    if perf["model_shape"] not in shapes:
        raise PlanError(f"perf.model_shape: {perf['model_shape']!r}; choose from {sorted(shapes)}")
    for where, cfg in (("perf", perf), ("study", st)):
        if not 2 <= cfg["window"] < cfg["seq_len"]:
            raise PlanError(f"{where}.window must be in [2, seq_len), got {cfg['window']}")
        if cfg["stride"] is not None and not 0 < cfg["stride"] <= cfg["window"]:
            raise PlanError(f"{where}.stride must be in (0, window], got {cfg['stride']}")
        if cfg["dtype"] not in ("fp32", "bf16"):
            raise PlanError(f"{where}.dtype: fp32 or bf16, got {cfg['dtype']!r}")
    if st["seq_len"] > st["max_position_embeddings"]:
        raise PlanError("study.seq_len exceeds study.max_position_embeddings")
    if any(n > st["max_position_embeddings"] for n in st["probe_lengths"]):
        raise PlanError("study.probe_lengths exceed study.max_position_embeddings")
    if st["max_steps"] > st["train_sequences"]:
        raise PlanError("study.max_steps: one sequence per step; raise train_sequences")
    unknown = set(setting.skipped) - set(PART_NAMES)
    if unknown:
        raise PlanError(f"skipped: unknown parts {sorted(unknown)}")
    if setting.device == "cuda" and setting.skipped:
        raise PlanError("the gpu setting runs every part")
    plan = budgets(setting)
    for call in (1, 2):
        total = sum(plan[p.name] for p in PARTS if p.call == call and p.name in plan)
        if total > setting.call_limit_s:
            raise PlanError(
                f"call {call}: parts planned at {total:.0f} s exceed the call limit "
                f"{setting.call_limit_s} s"
            )
    if setting.device == "cuda" and setting.call_limit_s > MAX_CALL_S:
        raise PlanError(f"call_limit_s: at most {MAX_CALL_S} s so that a rerun fits the lease")


def carried(bundle: Path = BUNDLE) -> dict[int, list[tuple[str, int]]]:
    """What each call carries: (path relative to the checkout, bytes)."""
    from gpu_bundle import folder_bytes

    def entry(p: Path) -> tuple[str, int]:
        return (str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p), folder_bytes(p))

    base, one, two = bundle / "base", bundle / "model-1", bundle / "model-2"
    return {1: [entry(base), entry(one)], 2: [entry(base), entry(two)]}


def tree_bytes() -> int:
    """Bytes of the working tree that travels with every call: the files git tracks, or,
    in a copy without git, every file outside the ignored folders this script knows."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        files = [ROOT / f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".gpu-bundle", ".venv", ".venv-gpu", "runs", "site", "__pycache__"}
        files = [p for p in ROOT.rglob("*") if not skip.intersection(p.relative_to(ROOT).parts)]
    return sum(f.stat().st_size for f in files if f.is_file())


def plan_lines(setting: Setting, bundle: Path = BUNDLE, *, need_bundle: bool = True) -> list[str]:
    """The plan: parts per call with budgets and deadlines, what travels, the lease."""
    validate(setting)
    plan = budgets(setting)
    basis = (
        "measured CPU seconds"
        if setting.measured_s
        else (
            f"{PROCESS_START_S:.0f} s per process plus FLOPs at {GPU_RATES['bf16']:.1e} "
            f"FLOP/s bf16, {GPU_RATES['fp32']:.1e} fp32 (stated)"
        )
    )
    lines = [f"setting {setting.name} on {setting.device}; budgets from {basis}"]
    calls_total = 0.0
    for call in (1, 2):
        lines.append(f"call {call} (limit {setting.call_limit_s} s):")
        total = 0.0
        for p in (p for p in PARTS if p.call == call):
            if p.name in setting.skipped:
                lines.append(f"  {p.name:<12} not rehearsed: {setting.skipped[p.name]}")
                continue
            b = plan[p.name]
            total += b
            lines.append(
                f"  {p.name:<12} budget {b:6.0f} s  deadline {min(deadline(b, setting.deadline_factor), setting.call_limit_s):5.0f} s  {p.title}"
            )
        lines.append(f"  planned {total:.0f} s")
        calls_total += total
    if setting.device == "cuda":
        lease = START_S + calls_total
        lines.append(
            f"device time: one start (<= {START_S} s; call 2 follows at once on the warm "
            f"machine) + {calls_total:.0f} s = {lease:.0f} s of {LEASE_S} s; "
            f"{LEASE_S - lease:.0f} s left to rerun a part"
        )
        if lease > LEASE_S:
            raise PlanError(f"the plan needs {lease:.0f} s, more than the {LEASE_S} s lease")
    if not (bundle / "base" / "manifest.json").is_file():
        if need_bundle:
            raise PlanError(f"no bundle at {bundle}: run `make gpu-bundle` first")
        lines.append(f"travels: nothing yet (no bundle at {bundle}; `make gpu-bundle`)")
        return lines
    tree = tree_bytes()
    for call, paths in carried(bundle).items():
        size = tree + sum(b for _, b in paths)
        names = ", ".join(f"{p} ({b / 2**20:.1f} MiB)" for p, b in paths)
        lines.append(
            f"travels in call {call}: the tracked tree ({tree / 2**20:.1f} MiB), {names}: "
            f"{size / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f}"
        )
        if size > CARRY_LIMIT:
            raise PlanError(f"call {call} carries {size / 2**20:.1f} MiB, over 64 MiB")
    return lines


# ---------------------------------------------------------------------- results
def result_path(state: Path, part: str) -> Path:
    return state / "results" / f"{part}.json"


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def check_results(results: dict[str, Any], setting: Setting) -> list[str]:
    """Problems with a ``results.json``: a part that should have run and did not, a part
    without rows, a row with a missing or non-finite figure, a failed check."""
    problems = []
    parts = results.get("parts", {})
    for p in PARTS:
        entry = parts.get(p.name)
        if p.name in setting.skipped:
            if not entry or entry.get("status") != "not rehearsed":
                problems.append(f"{p.name}: should be listed as not rehearsed")
            continue
        if not entry or entry.get("status") != "done":
            problems.append(f"{p.name}: status {entry.get('status') if entry else 'missing'}")
            continue
        rows = entry.get("rows", [])
        want = expected_rows(p.name, setting)
        keys = [row.get("name") for row in rows]
        missing = [w for w in want if w not in keys]
        if missing or not rows:
            problems.append(f"{p.name}: rows missing {missing or 'all'}")
        for row in rows:
            if not _finite(row):
                problems.append(f"{p.name}: row {row.get('name')} has a non-finite figure")
            if row.get("ok") is False:
                problems.append(f"{p.name}: row {row.get('name')} failed its check")
    return problems


def expected_rows(part: str, setting: Setting) -> list[str]:
    """Row names a part must produce in ``setting``."""
    if part == "env":
        return ["versions"]
    if part in ("nll_fp32", "nll_bf16"):
        return [f"chunked {part[4:]}", f"auto {part[4:]}"]
    if part == "cce":
        return ["cce fp32"]
    if part == "cce_bf16":
        return ["cce bf16", "auto bf16 picks cce"]
    if part == "parity":
        return list(TRAIN_PATHS)
    if part == "loss_head":
        return ["full", "ours", "sketch"] + (["cce"] if setting.device == "cuda" else [])
    if part == "perf_time":
        return [*TRAIN_PATHS, "forward", "short_context_nll", RELEASE_PATH]
    if part == "perf_memory":
        return list(TRAIN_PATHS)
    if part == "model":
        return ["gguf"]
    if part == "study":
        return [
            "context check",
            "dense:0.75 (self) / all targets",
            "dense:0.75 (frozen) / all targets",
        ]
    raise KeyError(part)


# ---------------------------------------------------------------------- driver
@dataclass
class Call:
    setting: Setting
    call: int
    state: Path
    out: Path
    bundle: Path
    log_lines: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def log(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        print(stamp, flush=True)
        self.log_lines.append(stamp)


def _child_env(c: Call) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(HERE)]
    site = c.state / "site"
    if site.is_dir():
        paths.append(str(site))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENWEIGHT_CACHE"] = str(c.state / "cache")
    if c.setting.device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # Triton kernels (cut-cross-entropy) on the CPU
        env.setdefault("OMP_NUM_THREADS", "1")  # oversubscribed threads crawl
    return env


def run_with_deadline(
    cmd: list[str], env: dict[str, str], limit: float, log_file: Path
) -> int | None:
    """Run ``cmd`` with its output appended to ``log_file``; at ``limit`` seconds stop it
    and every process it started. Returns the exit status, ``None`` when stopped."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as sink:
        # a session of its own, so that the deadline stops the commands it runs too
        proc = subprocess.Popen(
            cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def run_part(c: Call, part: Part, budget: float) -> dict[str, Any]:
    """Run one part in its own process under its deadline; returns its status entry."""
    done = result_path(c.state, part.name)
    if done.is_file():
        c.log(f"{part.name}: results exist from an earlier run, skipped")
        return json.loads(done.read_text(encoding="utf-8"))
    missing = [n for n in part.needs if not result_path(c.state, n).is_file()]
    if missing:
        c.log(f"{part.name}: not started, it needs the results of {', '.join(missing)}")
        return {"status": "not started", "reason": f"needs {', '.join(missing)}"}
    left = c.setting.call_limit_s - (time.monotonic() - c.t0)
    limit = min(deadline(budget, c.setting.deadline_factor), left - 5)
    if limit < min(budget, 30):
        c.log(f"{part.name}: not started, {left:.0f} s left of the call, needs ~{budget:.0f} s")
        return {"status": "not started", "reason": f"{left:.0f} s left, budget {budget:.0f} s"}
    c.log(f"{part.name}: start (budget {budget:.0f} s, deadline {limit:.0f} s) -- {part.title}")
    cmd = [
        sys.executable,
        str(Path(__file__)),
        "part",
        part.name,
        "--setting",
        c.setting.name,
        "--state",
        str(c.state),
        "--bundle",
        str(c.bundle),
    ]
    log_file = c.state / "logs" / f"{part.name}.log"
    start = time.monotonic()
    rc = run_with_deadline(cmd, _child_env(c), limit, log_file)
    seconds = time.monotonic() - start
    tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
    if done.is_file():
        entry = json.loads(done.read_text(encoding="utf-8"))
        c.log(f"{part.name}: done in {seconds:.0f} s")
        return entry
    status = "deadline" if rc is None else f"failed (exit {rc})"
    c.log(f"{part.name}: {status} after {seconds:.0f} s; last lines:\n  " + "\n  ".join(tail))
    return {"status": status, "seconds": seconds, "log_tail": tail}


def park_half(c: Call) -> None:
    """Call 1: copy the model's first half out of the checkout (kept on the machine for
    call 2), checked against the manifest."""
    from gpu_bundle import park

    dest = park(c.bundle, 1, c.state / "model")
    c.log(f"parked the model's first half at {dest}")


def install_wheels(c: Call) -> None:
    """Install the bundled wheels whose distributions this Python lacks into
    ``STATE/site`` (put on the parts' ``PYTHONPATH``)."""
    from gpu_bundle import install_missing

    installed = install_missing(c.bundle / "base", c.state / "site")
    c.log("installed from the bundle: " + (", ".join(installed) if installed else "nothing needed"))


def collect(c: Call, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every part's entry so far (this call's and earlier calls' results)."""
    parts: dict[str, Any] = {}
    for p in PARTS:
        if p.name in c.setting.skipped:
            parts[p.name] = {"status": "not rehearsed", "reason": c.setting.skipped[p.name]}
        elif p.name in entries:
            parts[p.name] = entries[p.name]
        elif result_path(c.state, p.name).is_file():
            parts[p.name] = json.loads(result_path(c.state, p.name).read_text(encoding="utf-8"))
        else:
            parts[p.name] = {"status": "not run yet"}
    return {"format": FORMAT, "setting": c.setting.name, "goals": GOALS, "parts": parts}


def run_call(c: Call) -> int:
    """Run the parts of call ``c.call``; write ``OUT``'s files; 0 if every part is done."""
    lines = plan_lines(c.setting, c.bundle)
    for line in lines:
        c.log(line)
    c.out.mkdir(parents=True, exist_ok=True)
    (c.out / "plan.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entries: dict[str, dict[str, Any]] = {}
    try:
        install_wheels(c)
        if c.call == 1:
            park_half(c)
        plan = budgets(c.setting)
        for part in (p for p in PARTS if p.call == c.call):
            if part.name in c.setting.skipped:
                c.log(f"{part.name}: not rehearsed here ({c.setting.skipped[part.name]})")
                continue
            entries[part.name] = run_part(c, part, plan[part.name])
            write_json(c.out / "results.json", collect(c, entries))
    finally:
        results = collect(c, entries)
        write_json(c.out / "results.json", results)
        report = c.state / "study" / "study.md"
        if c.call == 2 and report.is_file():
            (c.out / "study.md").write_bytes(report.read_bytes())
        (c.out / f"log-call{c.call}.txt").write_text(
            "\n".join(c.log_lines) + "\n", encoding="utf-8"
        )
    ok = all(
        results["parts"][p.name].get("status") in ("done", "not rehearsed")
        for p in PARTS
        if p.call == c.call
    )
    c.log(
        f"call {c.call}: {'every part done' if ok else 'some parts did not finish'}; files in {c.out}"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one call's parts")
    run.add_argument("--call", type=int, choices=(1, 2), required=True)
    run.add_argument("--setting", default="gpu", choices=sorted(SETTINGS))
    run.add_argument("--out", type=Path, required=True, help="where the call's files go")
    run.add_argument("--state", type=Path, default=Path("/tmp/tokenweight-gpu"))
    run.add_argument("--bundle", type=Path, default=BUNDLE)
    run.add_argument("--dry-run", action="store_true", help="print the plan only")
    part = sub.add_parser("part", help=argparse.SUPPRESS)  # one part, in its own process
    part.add_argument("name", choices=PART_NAMES)
    part.add_argument("--setting", default="gpu", choices=sorted(SETTINGS))
    part.add_argument("--state", type=Path, required=True)
    part.add_argument("--bundle", type=Path, default=BUNDLE)
    check = sub.add_parser("check", help="check a results.json: every row present and finite")
    check.add_argument("results", type=Path)
    check.add_argument("--setting", default="gpu", choices=sorted(SETTINGS))
    args = parser.parse_args(argv)

    if args.command == "check":
        results = json.loads(args.results.read_text(encoding="utf-8"))
        from gpu_tables import missing_rows

        problems = check_results(results, SETTINGS[args.setting])
        problems += [f"{row}: not in the rendered tables" for row in missing_rows(results)]
        for p in problems:
            print(f"error: {p}")
        if not problems:
            print(
                f"{args.results}: every part present, every row present, finite and in "
                "the rendered tables"
            )
        return 1 if problems else 0
    setting = SETTINGS[args.setting]
    if args.command == "part":
        from gpu_parts import run_one

        t0 = time.monotonic()
        body = run_one(args.name, setting, args.state, args.bundle)
        entry = {"status": "done", "seconds": round(time.monotonic() - t0, 1), **body}
        write_json(result_path(args.state, args.name), entry)
        return 0
    try:
        if args.dry_run:
            for line in plan_lines(setting, args.bundle, need_bundle=False):
                print(line)
            return 0
        return run_call(Call(setting, args.call, args.state, args.out, args.bundle))
    except (PlanError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def replace_setting(setting: Setting, **changes: Any) -> Setting:
    """A copy of ``setting`` with ``changes`` (for tests and one-off runs)."""
    return dataclasses.replace(setting, **changes)


if __name__ == "__main__":
    sys.exit(main())
