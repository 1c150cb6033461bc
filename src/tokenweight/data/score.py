"""Frozen-scorer pass over a prepared dataset (``tokenweight score``).

Each process scores the shards ``i`` with ``i % world_size == rank`` (``RANK`` /
``WORLD_SIZE`` from ``torchrun`` or ``accelerate launch``; alone it does all), skipping
shards already done. The process that completes the last shard writes the manifest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.data.prepare import MANIFEST, load_prepared, read_manifest
from tokenweight.data.store import (
    DONE_SUFFIX,
    RUN_FILE,
    SCORED_MANIFEST,
    ShardPlan,
    clean_shard,
    finalize_manifest,
    shard_done,
    write_shard,
)
from tokenweight.errors import TokenWeightError
from tokenweight.files import (
    atomic_write_json,
    check_output_dir,
    json_text,
    read_json,
    remove_path,
    sha256_file,
)

__all__ = ["ScoreResult", "distributed_rank", "score_dataset"]

NllFn = Callable[..., Any]


@dataclass
class ScoreResult:
    """What one process of :func:`score_dataset` did."""

    out: Path
    rank: int
    world_size: int
    num_shards: int
    scored: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    rows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0
    complete: bool = False

    @property
    def tokens_per_second(self) -> float:
        """Scored tokens per second of scoring (model loading excluded)."""
        return self.tokens / self.compute_seconds if self.compute_seconds > 0 else 0.0


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (default 0, 1, 0)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise TokenWeightError(
            f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {exc}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise TokenWeightError(f"RANK {rank} is not in [0, WORLD_SIZE={world})")
    return rank, world, local


SCORED_FILES = (RUN_FILE, SCORED_MANIFEST, "shard-*.arrow", "shard-*.arrow" + DONE_SUFFIX)


def _prepare_out_dir(
    out: Path, run: dict[str, Any], overwrite: bool, world: int, inputs: list[Any]
) -> None:
    """Create ``out``, or check that it holds a scoring run with the same settings (to
    resume or verify); ``overwrite`` replaces an earlier scoring output, nothing else."""
    ours = check_output_dir(
        out, "tokenweight score output", markers=(RUN_FILE,), known=SCORED_FILES, inputs=inputs
    )
    if overwrite and ours:
        if world > 1:
            raise TokenWeightError(
                "--overwrite cannot be used with several processes (they would delete each "
                f"other's work); remove {out} first, or choose another --out"
            )
        remove_path(out)
    run_path = out / RUN_FILE
    out.mkdir(parents=True, exist_ok=True)
    if run_path.is_file():
        old = read_json(
            run_path, "pass --overwrite to start this scoring run over, or choose another --out"
        )
        if old != json.loads(json_text(run)):
            keys = sorted(k for k in set(old) | set(run) if old.get(k) != run.get(k))
            raise TokenWeightError(
                f"{out} holds a scoring run with other settings ({', '.join(keys)} differ); "
                "pass --overwrite to start over, or choose another --out"
            )
    else:
        atomic_write_json(run_path, run)


def score_dataset(
    prepared: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    scorer: str | os.PathLike[str],
    window: int,
    stride: int | None = None,
    dtype: str = "auto",
    half: bool = False,
    batch_size: int = 8,
    shard_size: int = 256,
    windows_per_batch: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    nll_fn: NllFn | None = None,
    progress: bool = True,
    with_long: bool = False,
) -> ScoreResult:
    """Score a prepared dataset with a frozen model; write verified, resumable shards.

    ``nll_fn(model, input_ids, *, window, stride, bos_token_id, windows_per_batch
    [, attention_mask]) -> (batch, N - 1)`` defaults to
    :func:`tokenweight.scoring.short_context_nll`. ``dtype`` ``auto`` means bf16 on CUDA,
    fp32 otherwise. ``rank``/``world_size`` default to the launcher's environment.
    The scorer's tokenizer is checked against the prepared manifest before any compute.
    ``with_long`` also stores ``long_nll``: the same model's NLL of every target with the
    whole sequence as context (one full forward per row; 0 at padding targets), which
    ``tokenweight select`` compares with ``short_nll``.
    """
    import torch

    from tokenweight import __version__
    from tokenweight.models import (
        compare_tokenizer_identity,
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_model_source,
        tokenizer_identity,
    )
    from tokenweight.scoring import (
        plan_stride,
        plan_windows,
        require_short_window,
        short_context_nll,
    )

    start_time = time.perf_counter()
    prepared, out = Path(prepared), Path(out)
    env_rank, env_world, local_rank = distributed_rank()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    manifest = read_manifest(prepared)
    seq_len = int(manifest["seq_len"])
    if isinstance(window, int) and not isinstance(window, bool):
        require_short_window(window, seq_len, "--window")
    if stride is None:
        stride = plan_stride(seq_len, window)
    plan_windows(seq_len, window, stride)  # validates window and stride
    if batch_size < 1:
        raise TokenWeightError(f"--batch-size must be at least 1, got {batch_size}")
    if windows_per_batch is not None and windows_per_batch < 1:
        raise TokenWeightError(f"--windows-per-batch must be at least 1, got {windows_per_batch}")
    dev = resolve_device(device)
    if dev.type == "cuda" and str(device) == "auto":
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    dtype_name = ("bf16" if dev.type == "cuda" else "fp32") if dtype == "auto" else dtype

    source = resolve_model_source(scorer)
    identity = tokenizer_identity(load_tokenizer(source, trust_remote_code=trust_remote_code))
    diffs = compare_tokenizer_identity(manifest["tokenizer"], identity)
    if diffs:
        raise TokenWeightError(
            f"scorer {source} does not share the prepared data's tokenizer ({'; '.join(diffs)}); "
            "score with a model of the same tokenizer, or prepare the data with this one"
        )

    plan = ShardPlan(int(manifest["counts"]["sequences"]), shard_size)
    run = {
        "tokenweight_version": __version__,
        "prepared": manifest,
        "prepared_manifest_sha256": sha256_file(prepared / MANIFEST),
        "scorer": {"source": str(source), "tokenizer": identity, "dtype": dtype_name},
        "window": window,
        "stride": stride,
        "half": half,
        "num_rows": plan.num_rows,
        "shard_size": shard_size,
        "columns": ["input_ids", "short_nll", "input_hash", "row"]
        + (["attention_mask"] if manifest["keep_tail"] else [])
        + (["long_nll"] if with_long else []),
    }
    result = ScoreResult(out=out, rank=rank, world_size=world, num_shards=plan.num_shards)
    data = load_prepared(prepared)  # memory-mapped; read before anything is written
    if len(data) != plan.num_rows:
        raise TokenWeightError(
            f"{prepared} holds {len(data)} rows but its manifest says {plan.num_rows}; "
            "prepare it again"
        )
    _prepare_out_dir(out, run, overwrite, world, [prepared, source.path])

    # a finished folder is verified too: a shard whose bytes no longer match its record
    # (or whose record is gone) is scored again, and the manifest rewritten
    todo = []
    for i in plan.owned(rank, world):
        if shard_done(out, plan, i):
            clean_shard(out, plan, i, temporary_only=True)
            result.skipped.append(i)
        else:
            clean_shard(out, plan, i)
            todo.append(i)

    if todo:
        columns = ["input_ids"] + (["attention_mask"] if manifest["keep_tail"] else [])
        data = data.with_format("numpy", columns=columns)
        model = load_model(
            source, dtype=dtype_name, device=dev, trust_remote_code=trust_remote_code
        )
        nll_fn = nll_fn or short_context_nll
        bos = manifest["bos_token_id"]
        total = sum(plan.rows(i)[1] - plan.rows(i)[0] for i in todo)
        from tqdm.auto import tqdm

        desc = f"scoring (rank {rank}/{world})" if world > 1 else "scoring"
        compute_start = time.perf_counter()
        with tqdm(total=total, desc=desc, unit="seq", disable=not progress) as bar:
            for i in todo:
                lo, hi = plan.rows(i)
                chunk = data[lo:hi]
                ids = np.stack(chunk["input_ids"]).astype(np.int32)
                mask = np.stack(chunk["attention_mask"]) if "attention_mask" in chunk else None
                nll = np.empty((hi - lo, seq_len - 1), dtype=np.float32)
                long = np.empty_like(nll) if with_long else None
                for b in range(0, hi - lo, batch_size):
                    kwargs: dict[str, Any] = {}
                    if mask is not None:
                        kwargs["attention_mask"] = torch.from_numpy(
                            mask[b : b + batch_size].astype(np.int64)
                        ).to(dev)
                    batch_ids = torch.from_numpy(ids[b : b + batch_size].astype(np.int64)).to(dev)
                    scores = nll_fn(
                        model,
                        batch_ids,
                        window=window,
                        stride=stride,
                        bos_token_id=bos,
                        windows_per_batch=windows_per_batch,
                        **kwargs,
                    )
                    nll[b : b + batch_size] = scores.detach().float().cpu().numpy()
                    if long is not None:
                        long[b : b + batch_size] = _long_nll(model, batch_ids, kwargs)
                    bar.update(len(batch_ids))
                if mask is not None:
                    nll[mask[:, 1:] == 0] = 0.0
                    if long is not None:
                        long[mask[:, 1:] == 0] = 0.0
                _check_finite(nll, lo, dtype_name)
                if long is not None:
                    _check_finite(long, lo, dtype_name)
                write_shard(
                    out,
                    plan,
                    i,
                    input_ids=ids,
                    short_nll=nll.astype(np.float16) if half else nll,
                    attention_mask=mask,
                    long_nll=long.astype(np.float16) if long is not None and half else long,
                )
                result.scored.append(i)
                result.rows += hi - lo
                result.tokens += (hi - lo) * seq_len if mask is None else int(mask.sum())
        result.compute_seconds = time.perf_counter() - compute_start
    result.complete = finalize_manifest(out, plan, run)
    result.seconds = time.perf_counter() - start_time
    return result


def _long_nll(model: Any, input_ids: Any, kwargs: dict[str, Any]) -> np.ndarray:
    """``(batch, N - 1)`` float32 NLL with the whole sequence as context (no gradient)."""
    import torch

    from tokenweight.losses import model_token_nll

    mask = kwargs.get("attention_mask")
    labels = None if mask is None else torch.where(mask.bool(), input_ids, -100)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            out = model_token_nll(model, input_ids, labels=labels, attention_mask=mask)
    finally:
        if was_training:
            model.train()
    return out.float().cpu().numpy()


def _check_finite(nll: np.ndarray, first_row: int, dtype: str) -> None:
    bad = ~np.isfinite(nll)
    if bad.any():
        r = int(np.nonzero(bad.any(axis=1))[0][0])
        raise TokenWeightError(
            f"the scorer produced a non-finite NLL for row {first_row + r}"
            + (f" in {dtype}; try --dtype fp32" if dtype != "fp32" else "")
        )
