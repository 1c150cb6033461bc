"""Pieces shared by the ``bench_*.py`` scripts: random-weight Llama shapes and their builder,
dtype names, timing and memory helpers.

Not a benchmark. A script imports it as ``from common import ...``: Python puts a script's
own folder first on ``sys.path``, so ``python benchmarks/bench_x.py`` finds it from anywhere.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama-architecture model (no weights)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = True  # input and output embeddings share one matrix


# Real models' shapes; each script adds its own small CPU default ("tiny") beside them.
REAL_SHAPES = {
    "smollm2-135m": LlamaShape(576, 30, 9, 3, 1536, 49152),
    "llama-1b": LlamaShape(2048, 16, 32, 8, 8192, 128256),  # Llama-3.2-1B
}


def build_llama(
    shape: LlamaShape,
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    attn: str,
    seed: int = 0,
    **config: Any,
) -> Any:
    """A random-weight ``LlamaForCausalLM`` of ``shape``, created on ``device`` in ``dtype``
    after ``torch.manual_seed(seed)``; ``config`` adds ``LlamaConfig`` fields (e.g.
    ``max_position_embeddings``, ``rope_theta``). The caller sets train/eval mode."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    llama = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        **config,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(llama, attn_implementation=attn, dtype=dtype)


# ---------------------------------------------------------------- timing
def sync(device: str | torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere), so a clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Wall-clock seconds of one call of ``fn``, including its CUDA work."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(
    fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu"
) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    return statistics.median(timed(fn, device) for _ in range(repeats))


# ---------------------------------------------------------------- CPU memory (Linux)
def proc_status_bytes(key: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; ``None``
    where there is no such file or field."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_cpu_peak() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current one (``VmRSS``);
    ``False`` where the kernel does not support it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
