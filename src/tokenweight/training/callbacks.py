"""Per-step statistics, the non-finite-loss guard, and the console progress line.

:class:`StepStats` accumulates, over the micro-batches since the last log line, the sums
that the logged figures are made of (on the device, no synchronisation per micro-batch);
:meth:`StepStats.summarize` reduces them over processes and turns them into:

- ``weighted_loss``: ``sum w*l / n`` (the optimized loss; equals the Trainer's ``loss``)
- ``nll``: unweighted mean long-context NLL ``sum l / n`` (nats)
- ``weight_mean``, ``weight_std``, ``weight_max``, ``weight_nonzero`` (fraction of valid
  targets with a non-zero weight)
- ``abs_score``: mean ``|l - s|`` in nats, the raw long/short gap, whatever the scheme's
  transforms (absent for the uniform scheme, which runs no scorer)
- ``no_context_share`` (self scorer only): the fraction of valid targets in rows no
  longer than the scorer's window, which have no shorter context and so uniform weights
- ``scoring_share``: the fraction of wall time spent in the short-context scorer
- ``step_time``: wall seconds per optimizer step

``n`` counts valid targets (not padding, not ``-100`` labels) over every micro-batch and
process since the last log line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tokenweight.infra.errors import TokenWeightError

__all__ = [
    "JsonlLogCallback",
    "StepStats",
    "TokenWeightProgressCallback",
    "describe_batch",
    "nonfinite_error",
]

# order of the summed statistics in StepStats._sums
_N, _WL, _L, _W, _W2, _NZ, _ABS, _NS, _NC, _NCN = range(10)
_SUMS = 10


class StepStats:
    """Sums of per-target statistics since the last log line (see the module docstring)."""

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None
        self._max: torch.Tensor | None = None
        self.scoring_seconds = 0.0
        self.window_start: float | None = None
        self.steps = 0

    def start(self) -> None:
        if self.window_start is None:
            self.window_start = time.perf_counter()

    def add(
        self,
        long_nll: torch.Tensor,
        weights: torch.Tensor,
        mask: torch.Tensor,
        short_nll: torch.Tensor | None,
        no_context_targets: int | None = None,
    ) -> None:
        """Add one micro-batch: ``(B, T)`` NLL (nats), weights and bool mask of valid
        targets; ``no_context_targets``: those of them without a shorter context (self
        scorer; ``None`` for others)."""
        with torch.no_grad():
            m = mask.to(torch.float64)
            lo = torch.where(mask, long_nll.detach().double(), 0.0)
            w = weights.detach().double() * m
            sums = torch.stack(
                [
                    m.sum(),
                    (w * lo).sum(),
                    lo.sum(),
                    w.sum(),
                    (w * w).sum(),
                    ((w != 0) & mask).sum().double(),
                    *[torch.zeros((), dtype=torch.float64, device=m.device)] * 4,
                ]
            )
            if no_context_targets is not None:
                sums[_NC] = float(no_context_targets)
                sums[_NCN] = m.sum()
            if short_nll is not None:
                gap = torch.where(
                    mask, (long_nll.detach().double() - short_nll.double()).abs(), 0.0
                )
                sums[_ABS] = gap.sum()
                sums[_NS] = m.sum()
            wmax = torch.where(mask, weights.detach().double(), -torch.inf).amax()
            self._sums = sums if self._sums is None else self._sums + sums.to(self._sums.device)
            self._max = wmax if self._max is None else torch.maximum(self._max, wmax)

    def summarize(self, accelerator: Any = None) -> dict[str, float]:
        """Reduce over processes (collective when ``accelerator.num_processes > 1``: call it
        on every process) and reset. Returns the figures of the module docstring."""
        now = time.perf_counter()
        elapsed = now - self.window_start if self.window_start is not None else 0.0
        scoring = torch.tensor(self.scoring_seconds, dtype=torch.float64)
        sums, wmax = self._sums, self._max
        self._sums = self._max = None
        self.scoring_seconds = 0.0
        self.window_start = None
        steps, self.steps = self.steps, 0
        if accelerator is not None and accelerator.num_processes > 1:
            device = accelerator.device
            if sums is None or wmax is None:  # keep the collective shape identical on every process
                sums = torch.zeros(_SUMS, dtype=torch.float64)
                wmax = torch.tensor(-torch.inf, dtype=torch.float64)
            packed = torch.cat([sums.to(device), scoring.to(device).view(1)])
            packed = accelerator.reduce(packed, reduction="sum")
            wmax = accelerator.gather(wmax.to(device).view(1)).amax()
            sums, scoring = packed[:_SUMS], packed[_SUMS] / accelerator.num_processes
        if sums is None or wmax is None:  # both are set together
            return {}
        s = sums.cpu().tolist()
        n = s[_N]
        out: dict[str, float] = {}
        if n > 0:
            mean = s[_W] / n
            out.update(
                weighted_loss=s[_WL] / n,
                nll=s[_L] / n,
                weight_mean=mean,
                weight_std=max(s[_W2] / n - mean * mean, 0.0) ** 0.5,
                weight_max=float(wmax),
                weight_nonzero=s[_NZ] / n,
            )
            if s[_NS] > 0:
                out["abs_score"] = s[_ABS] / s[_NS]
            if s[_NCN] > 0:
                out["no_context_share"] = s[_NC] / s[_NCN]
        if elapsed > 0:
            out["scoring_share"] = min(float(scoring) / elapsed, 1.0)
            if steps > 0:
                out["step_time"] = elapsed / steps
        return out


def describe_batch(inputs: dict[str, Any], micro: int, accumulation: int) -> str:
    """``micro-batch 2 of 16 (dataset rows [17, 4])`` for error messages."""
    text = f"micro-batch {micro + 1} of {accumulation}"
    rows = inputs.get("row")
    if isinstance(rows, torch.Tensor):
        text += f" (dataset rows {rows.view(-1).tolist()})"
    return text


class TokenWeightProgressCallback(ProgressCallback):
    """The Trainer's progress bar, with one compact line per log instead of a raw dict."""

    _FORMAT = (
        ("loss", "loss {:.4f}"),
        ("nll", "nll {:.4f}"),
        ("weight_mean", "w mean {:.3f}"),
        ("weight_std", "std {:.3f}"),
        ("weight_max", "max {:.2f}"),
        ("weight_nonzero", "nonzero {:.1%}"),
        ("abs_score", "|l-s| {:.3f}"),
        ("scoring_share", "scoring {:.0%}"),
        ("step_time", "{:.2f} s/step"),
        ("learning_rate", "lr {:.2e}"),
        ("grad_norm", "grad {:.3g}"),
    )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" not in logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        parts = [f"step {state.global_step}/{state.max_steps}"]
        for key, fmt in self._FORMAT:
            value = logs.get(key)
            if isinstance(value, (int, float)):
                parts.append(fmt.format(value))
        self.training_bar.write(" | ".join(parts))


def nonfinite_error(
    what: str,
    where: tuple[int, int, float] | None,
    *,
    step: int,
    batch: str,
    process: int | None,
    last_checkpoint: str | None,
) -> TokenWeightError:
    """The error that stops training on a NaN or infinite value (nothing saved after it)."""
    detail = f"{what}"
    if where is not None:
        row, col, value = where
        detail += f" is {value} at batch row {row}, target {col}"
    proc = f" on process {process}" if process is not None else ""
    kept = (
        f"the last checkpoint {last_checkpoint} is intact; continue from it with --resume "
        "(perhaps with a lower learning rate or after removing the bad rows)"
        if last_checkpoint
        else "no checkpoint had been saved yet"
    )
    kind = "gradient" if what == "the gradient" else "loss"
    return TokenWeightError(
        f"non-finite {kind} at step {step}, {batch}{proc}: {detail}. Training stopped "
        f"before the optimizer step; {kept}"
    )


class JsonlLogCallback(TrainerCallback):
    """Appends every log line to a JSON-lines file (main process only).

    After a resume, lines for steps at or past the first newly logged step (left by the
    interrupted run) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fresh = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, **logs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._fresh:
            self._fresh = False
            kept = []
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line).get("step", 0) < state.global_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        continue
            from tokenweight.infra.files import atomic_write_text

            # atomic: a kill here keeps the old log whole rather than half-written
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=float) + "\n")


CHECKPOINT_MARKER = "tokenweight_checkpoint.json"


class CheckpointMarkerCallback(TrainerCallback):
    """Writes :data:`CHECKPOINT_MARKER` into each checkpoint folder once the Trainer has
    saved every file of it: a checkpoint without the marker was cut off while saving.

    The marker also holds the run's ``segments`` up to that step (which settings trained
    which steps, see :mod:`tokenweight.training.run_record`); ``segments`` are the run's
    segments with the open one last."""

    def __init__(self, segments: list[dict[str, Any]] | None = None) -> None:
        self.segments = segments or []

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        from tokenweight.infra.files import atomic_write_json

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process has written its part (RNG state, ZeRO shards)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            from tokenweight.training.run_record import close_segments

            record = {
                "global_step": state.global_step,
                "segments": close_segments(self.segments, state.global_step),
            }
            atomic_write_json(folder / CHECKPOINT_MARKER, record)
