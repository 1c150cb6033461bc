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
from tokenweight.infra.constants import IGNORE_INDEX
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import (
    atomic_write_json,
    check_output_dir,
    json_text,
    read_json,
    remove_path,
    sha256_file,
)
from tokenweight.infra.folder_lock import shared_output_lock

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


# The signature (every setting of ``tokenweight score``) and the docstring are long but
# flat; the body is the recipe: check settings and tokenizer, record the run, score shards.
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
    :func:`tokenweight.core.scoring.short_context_nll`. ``dtype`` ``auto`` means bf16 on CUDA,
    fp32 otherwise. ``rank``/``world_size`` default to the launcher's environment.
    The scorer's tokenizer is checked against the prepared manifest before any compute.
    ``with_long`` also stores ``long_nll``: the same model's NLL of every target with the
    whole sequence as context (one full forward per row; 0 at padding targets), which
    ``tokenweight select`` compares with ``short_nll``.
    """
    start_time = time.perf_counter()
    prepared, out = Path(prepared), Path(out)
    env_rank, env_world, local_rank = distributed_rank()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    manifest = read_manifest(prepared)
    seq_len = int(manifest["seq_len"])
    stride = _check_settings(seq_len, window, stride, batch_size, windows_per_batch)
    dev = _scoring_device(device, local_rank)
    dtype_name = ("bf16" if dev.type == "cuda" else "fp32") if dtype == "auto" else dtype
    source, identity = _check_scorer_tokenizer(scorer, manifest, trust_remote_code)

    plan = ShardPlan(int(manifest["counts"]["sequences"]), shard_size)
    run = _run_record(
        prepared, manifest, source, identity, dtype_name, window, stride, half, plan, with_long
    )
    result = ScoreResult(out=out, rank=rank, world_size=world, num_shards=plan.num_shards)
    data = _load_rows(prepared, plan)  # memory-mapped; read before anything is written
    # one scoring run per folder (every process of a launch shares rank 0's lock)
    with shared_output_lock(out, "--out", start_group=True):
        _prepare_out_dir(out, run, overwrite, world, [prepared, source.path])
        todo = _shards_to_score(out, plan, rank, world, result)
        if todo:
            job = _ScoreJob(
                source=source,
                trust_remote_code=trust_remote_code,
                nll_fn=nll_fn or _default_nll_fn(),
                device=dev,
                window=window,
                stride=stride,
                bos_token_id=manifest["bos_token_id"],
                windows_per_batch=windows_per_batch,
                batch_size=batch_size,
                seq_len=seq_len,
                dtype_name=dtype_name,
                half=half,
                with_long=with_long,
            )
            columns = ["input_ids"] + (["attention_mask"] if manifest["keep_tail"] else [])
            data = data.with_format("numpy", columns=columns)
            _score_shards(job, data, out, plan, todo, result, progress)
        result.complete = finalize_manifest(out, plan, run)
    result.seconds = time.perf_counter() - start_time
    return result


def _run_record(
    prepared: Path,
    manifest: dict[str, Any],
    source: Any,
    identity: dict[str, Any],
    dtype_name: str,
    window: int,
    stride: int,
    half: bool,
    plan: ShardPlan,
    with_long: bool,
) -> dict[str, Any]:
    """The settings saved as ``run.json`` (a resumed run must match them)."""
    from tokenweight import __version__

    return {
        "tokenweight_version": __version__,
        "prepared": manifest,
        "prepared_manifest_sha256": sha256_file(prepared / MANIFEST),
        "scorer": {"source": str(source), "tokenizer": identity, "dtype": dtype_name},
        "window": window,
        "stride": stride,
        "half": half,
        "num_rows": plan.num_rows,
        "shard_size": plan.shard_size,
        "columns": ["input_ids", "short_nll", "input_hash", "row"]
        + (["attention_mask"] if manifest["keep_tail"] else [])
        + (["long_nll"] if with_long else []),
    }


def _load_rows(prepared: Path, plan: ShardPlan) -> Any:
    """The prepared rows (memory-mapped), refused when their count is not the manifest's."""
    data = load_prepared(prepared)
    if len(data) != plan.num_rows:
        raise TokenWeightError(
            f"{prepared} holds {len(data)} rows but its manifest says {plan.num_rows}; "
            "prepare it again"
        )
    return data


def _default_nll_fn() -> NllFn:
    from tokenweight.core.scoring import short_context_nll

    return short_context_nll


def _check_settings(
    seq_len: int, window: int, stride: int | None, batch_size: int, windows_per_batch: int | None
) -> int:
    """Validate the window plan and batch sizes; returns the stride (planned when ``None``)."""
    from tokenweight.core.scoring import plan_stride, plan_windows, require_short_window

    if isinstance(window, int) and not isinstance(window, bool):
        require_short_window(window, seq_len, "--window")
    if stride is None:
        stride = plan_stride(seq_len, window)
    plan_windows(seq_len, window, stride)  # validates window and stride
    if batch_size < 1:
        raise TokenWeightError(f"--batch-size must be at least 1, got {batch_size}")
    if windows_per_batch is not None and windows_per_batch < 1:
        raise TokenWeightError(f"--windows-per-batch must be at least 1, got {windows_per_batch}")
    return stride


def _scoring_device(device: str, local_rank: int) -> Any:
    """The ``torch.device`` to score on; ``auto`` on CUDA picks this process's GPU."""
    import torch

    from tokenweight.infra.models import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and str(device) == "auto":
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def _check_scorer_tokenizer(
    scorer: str | os.PathLike[str], manifest: dict[str, Any], trust_remote_code: bool
) -> tuple[Any, dict[str, Any]]:
    """Resolve the scorer and refuse one whose tokenizer differs from the prepared data's;
    returns ``(source, tokenizer identity)``."""
    from tokenweight.infra.models import (
        compare_tokenizer_identity,
        load_tokenizer,
        resolve_model_source,
        tokenizer_identity,
    )

    source = resolve_model_source(scorer)
    identity = tokenizer_identity(load_tokenizer(source, trust_remote_code=trust_remote_code))
    diffs = compare_tokenizer_identity(manifest["tokenizer"], identity)
    if diffs:
        raise TokenWeightError(
            f"scorer {source} does not share the prepared data's tokenizer ({'; '.join(diffs)}); "
            "score with a model of the same tokenizer, or prepare the data with this one"
        )
    return source, identity


def _shards_to_score(
    out: Path, plan: ShardPlan, rank: int, world: int, result: ScoreResult
) -> list[int]:
    """This process's shards that still need scoring (finished ones go to
    ``result.skipped``).

    A finished folder is verified too: a shard whose bytes no longer match its record (or
    whose record is gone) is scored again, and the manifest rewritten.
    """
    todo = []
    for i in plan.owned(rank, world):
        if shard_done(out, plan, i):
            clean_shard(out, plan, i, temporary_only=True)
            result.skipped.append(i)
        else:
            clean_shard(out, plan, i)
            todo.append(i)
    return todo


@dataclass
class _ScoreJob:
    """The scorer and the settings every batch is scored with."""

    source: Any
    trust_remote_code: bool
    nll_fn: NllFn
    device: Any
    window: int
    stride: int
    bos_token_id: int | None
    windows_per_batch: int | None
    batch_size: int
    seq_len: int
    dtype_name: str
    half: bool
    with_long: bool


def _score_shards(
    job: _ScoreJob,
    data: Any,
    out: Path,
    plan: ShardPlan,
    todo: list[int],
    result: ScoreResult,
    progress: bool,
) -> None:
    """Load the scorer, then score and write each shard in ``todo``, counting rows,
    tokens and compute time in ``result``."""
    from tqdm.auto import tqdm

    from tokenweight.infra.models import load_model

    model = load_model(
        job.source, dtype=job.dtype_name, device=job.device, trust_remote_code=job.trust_remote_code
    )
    compute_start = time.perf_counter()
    rank, world = result.rank, result.world_size
    total = sum(plan.rows(i)[1] - plan.rows(i)[0] for i in todo)
    desc = f"scoring (rank {rank}/{world})" if world > 1 else "scoring"
    with tqdm(total=total, desc=desc, unit="seq", disable=not progress) as bar:
        for i in todo:
            lo, hi = plan.rows(i)
            chunk = data[lo:hi]
            ids = np.stack(chunk["input_ids"]).astype(np.int32)
            mask = np.stack(chunk["attention_mask"]) if "attention_mask" in chunk else None
            nll, long = _score_rows(job, model, ids, mask, bar)
            _check_finite(nll, lo, job.dtype_name)
            if long is not None:
                _check_finite(long, lo, job.dtype_name)
            write_shard(
                out,
                plan,
                i,
                input_ids=ids,
                short_nll=nll.astype(np.float16) if job.half else nll,
                attention_mask=mask,
                long_nll=long.astype(np.float16) if long is not None and job.half else long,
            )
            result.scored.append(i)
            result.rows += hi - lo
            result.tokens += (hi - lo) * job.seq_len if mask is None else int(mask.sum())
    result.compute_seconds = time.perf_counter() - compute_start


def _score_rows(
    job: _ScoreJob, model: Any, ids: np.ndarray, mask: np.ndarray | None, bar: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows, N - 1)`` float32 short-context NLL of one shard's rows (and the
    whole-sequence NLL with ``with_long``), in batches; 0 at padding targets."""
    import torch

    rows = len(ids)
    nll = np.empty((rows, job.seq_len - 1), dtype=np.float32)
    long = np.empty_like(nll) if job.with_long else None
    for b in range(0, rows, job.batch_size):
        kwargs: dict[str, Any] = {}
        if mask is not None:
            kwargs["attention_mask"] = torch.from_numpy(
                mask[b : b + job.batch_size].astype(np.int64)
            ).to(job.device)
        batch_ids = torch.from_numpy(ids[b : b + job.batch_size].astype(np.int64)).to(job.device)
        scores = job.nll_fn(
            model,
            batch_ids,
            window=job.window,
            stride=job.stride,
            bos_token_id=job.bos_token_id,
            windows_per_batch=job.windows_per_batch,
            **kwargs,
        )
        nll[b : b + job.batch_size] = scores.detach().float().cpu().numpy()
        if long is not None:
            long[b : b + job.batch_size] = _long_nll(model, batch_ids, kwargs)
        bar.update(len(batch_ids))
    if mask is not None:
        nll[mask[:, 1:] == 0] = 0.0
        if long is not None:
            long[mask[:, 1:] == 0] = 0.0
    return nll, long


def _long_nll(model: Any, input_ids: Any, kwargs: dict[str, Any]) -> np.ndarray:
    """``(batch, N - 1)`` float32 NLL with the whole sequence as context (no gradient)."""
    import torch

    from tokenweight.core.losses import model_token_nll

    mask = kwargs.get("attention_mask")
    labels = None if mask is None else torch.where(mask.bool(), input_ids, IGNORE_INDEX)
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
