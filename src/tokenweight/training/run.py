"""The train entry point: config -> data, model, scorer, trainer -> checkpoints.

:func:`train` is what ``tokenweight train`` runs, in every process of a distributed launch.
Order matters for DeepSpeed ZeRO-3: a frozen scorer model is loaded before the
``TrainingArguments`` (whose DeepSpeed config makes ``from_pretrained`` partition weights),
the trained model after them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import check_output_dir, read_json, remove_path
from tokenweight.training.config import Config, to_training_arguments

__all__ = ["TrainResult", "find_last_checkpoint", "train"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "tokenweight_train.yaml"
LOG_NAME = "train_log.jsonl"
SUMMARY_NAME = "train_summary.json"
# files that mark a folder as an earlier ``tokenweight train`` output
TRAIN_MARKERS = (CONFIG_NAME, SUMMARY_NAME, LOG_NAME)


@dataclass
class TrainResult:
    """What a finished run left behind.

    ``output_dir`` holds the final model (safetensors, config with the extended RoPE
    settings, tokenizer), ``checkpoint-*`` folders, :data:`CONFIG_NAME` (the resolved
    config) and :data:`LOG_NAME` (one JSON object per log line).
    """

    output_dir: Path
    global_step: int
    train_loss: float | None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    loss_steps: tuple[int, int] | None = None  # first and last step ``train_loss`` averages
    # which settings trained which steps: [{"steps": [first, last], "settings": {...}}, ...]
    segments: list[dict[str, Any]] = field(default_factory=list)


def _checkpoints(output_dir: Path) -> list[Path]:
    """Every ``checkpoint-N`` folder of ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def _step_of(path: Path) -> int | None:
    name, _, step = path.name.partition("-")
    return int(step) if name == "checkpoint" and step.isdigit() else None


def _complete(checkpoint: Path) -> bool:
    """Whether a checkpoint was saved to the end: its marker exists (a checkpoint of an
    older version, without markers, counts when its ``trainer_state.json`` reads back)."""
    from tokenweight.training.callbacks import CHECKPOINT_MARKER

    if (checkpoint / CHECKPOINT_MARKER).is_file():
        return True
    if any(checkpoint.parent.glob(f"checkpoint-*/{CHECKPOINT_MARKER}")):
        return False
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == _step_of(checkpoint)


def find_last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir`` (one whose save
    finished, see :class:`~tokenweight.training.callbacks.CheckpointMarkerCallback`), or
    ``None``."""
    done = [p for p in _checkpoints(Path(output_dir)) if _complete(p)]
    return str(done[-1]) if done else None


def _check_output_dir(config: Config) -> None:
    """``train.output_dir`` must be new, empty or an earlier run of ``tokenweight train``,
    and apart from the start model, the data and the scorer model."""
    inputs = [config.model.source, config.data.path, config.scorer.model]
    check_output_dir(
        config.train.output_dir,
        "tokenweight train output",
        markers=TRAIN_MARKERS,
        inputs=[p for p in inputs if p],
        option="train.output_dir",
    )


# ------------------------------------------------------------------ pieces
def _model_path(source: str, cache_dir: str | None) -> str:
    """A folder (or hub name) that loads fast: GGUF sources are converted once and cached."""
    from tokenweight.infra.models import ensure_local_model

    return str(ensure_local_model(source, cache_dir))


def _load_model(config: Config, path: str, dtype: str, **extra: Any) -> Any:
    """``load_model`` with the run's attention and remote-code settings; ``dtype`` "auto"
    keeps the checkpoint's. ``extra`` goes to ``load_model`` (e.g. RoPE settings)."""
    from tokenweight.infra.models import load_model

    return load_model(
        path,
        dtype=None if dtype == "auto" else dtype,
        attn_implementation=config.model.attn_implementation,
        trust_remote_code=config.model.trust_remote_code,
        **extra,
    )


def _load_dataset(config: Config) -> tuple[Any, dict[str, Any], str]:
    """The training rows, the prepared data's manifest and the content fingerprint of
    ``data.path`` (its manifest's ``fingerprint``; computed for a folder written before
    manifests had one).

    ``data.path`` is a ``tokenweight prepare`` folder, or a ``tokenweight score`` folder
    (required by the precomputed scorer; its shards are verified against their hashes).
    """
    from tokenweight.data import load_scored_dataset, read_manifest
    from tokenweight.data.manifest import FINGERPRINT
    from tokenweight.data.prepare import load_prepared
    from tokenweight.data.store import (
        SCORED_FORMAT,
        SCORED_MANIFEST,
        rows_fingerprint,
        shards_fingerprint,
    )

    assert config.data.path  # required by Config.validate
    path = Path(config.data.path)
    manifest_file = path / SCORED_MANIFEST  # the same file name as a prepared manifest
    if not manifest_file.is_file():
        raise TokenWeightError(
            f"data.path: {path} is not a prepared or scored dataset (no {SCORED_MANIFEST}); "
            "create one with `tokenweight prepare` (and `tokenweight score`)"
        )
    head = read_json(manifest_file, "prepare (or score) the data again")
    kind = head.get("format") if isinstance(head, dict) else None
    if kind == SCORED_FORMAT:
        scored = read_manifest(path, "scored")
        manifest = scored["prepared"]
        dataset = load_scored_dataset(path, verify=True)
        fingerprint = scored.get(FINGERPRINT) or shards_fingerprint(
            [x["sha256"] for x in scored["shards"]]
        )
        if config.used_scorer.stored_scores:
            _check_stored_scores(config, path, scored)
    else:
        if config.used_scorer.stored_scores:
            raise TokenWeightError(
                f"data.path: {path} holds no scores, but scorer.kind is {config.scorer_kind!r}; "
                "score it first with `tokenweight score` and point data.path at the result"
            )
        manifest = read_manifest(path)
        dataset = load_prepared(path)
        fingerprint = manifest.get(FINGERPRINT) or rows_fingerprint(dataset)
    seq_len = manifest.get("seq_len")
    if config.data.seq_len is not None and seq_len is not None and seq_len != config.data.seq_len:
        raise TokenWeightError(
            f"data.seq_len: the config says {config.data.seq_len} but {path} holds "
            f"{seq_len}-token sequences; prepare the data again or fix the config"
        )
    if len(dataset) == 0:
        raise TokenWeightError(f"data.path: {path} holds no sequences")
    return dataset, manifest, fingerprint


def _check_stored_scores(config: Config, path: Path, scored: dict[str, Any]) -> None:
    """A ``scorer.window`` / ``scorer.stride`` given with the precomputed scorer must be
    the one the stored scores were computed with (they cannot change now)."""
    for key in ("window", "stride"):
        wanted, stored = getattr(config.scorer, key), scored.get(key)
        if wanted is not None and wanted != stored:
            raise TokenWeightError(
                f"scorer.{key}: the config says {wanted}, but the scores in {path} were "
                f"computed with {key} {stored}; stored scores cannot change: set "
                f"scorer.{key}={stored} (or leave it out), or score the data again with "
                f"`tokenweight score --{key} {wanted}`"
            )


def _apply_lora(model: Any, config: Config) -> Any:
    lora = config.model.lora
    if lora is None:
        return model
    try:
        import peft
    except ImportError:
        raise TokenWeightError(
            "model.lora: needs the peft package; install it with `pip install 'tokenweight[peft]'`"
        ) from None
    peft_config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; it only divides by it
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, peft_config)
    except ValueError as exc:
        raise TokenWeightError(f"model.lora: peft refused the settings: {exc}") from None


def _build_frozen_scorer_model(config: Config) -> tuple[Any, Any] | None:
    """The frozen scorer model (original RoPE settings) and its tokenizer, on the CPU."""
    if not config.used_scorer.uses_model:
        return None
    from tokenweight.infra.models import load_tokenizer

    source = config.scorer.model or config.model.source
    assert source  # model.source is required by Config.validate
    path = _model_path(source, config.model.cache_dir)
    model = _load_model(config, path, config.scorer.dtype)
    return model, load_tokenizer(path, trust_remote_code=config.model.trust_remote_code)


def _bos_token_id(manifest: dict[str, Any], dataset: Any) -> int | None:
    """BOS replaces each later window's first token only if the sequences start with it."""
    bos = manifest.get("bos_token_id")
    if bos is None:
        return None
    return int(bos) if int(dataset[0]["input_ids"][0]) == int(bos) else None


def _build_scorer(
    config: Config, frozen: tuple[Any, Any] | None, tokenizer: Any, model: Any, bos: int | None
) -> Any:
    from tokenweight.core.scorer_kinds import ScorerInputs

    s = config.scorer
    scorer_model = None
    kwargs: dict[str, Any] = {}
    if frozen is not None:  # the kind uses a model of its own (_build_frozen_scorer_model)
        scorer_model, scorer_tok = frozen
        kwargs = {"tokenizer": scorer_tok, "reference": model, "reference_tokenizer": tokenizer}
        if s.device is not None:
            kwargs["device"] = s.device
    inputs = ScorerInputs(s.window, s.stride, bos, s.windows_per_batch, scorer_model, kwargs)
    return config.used_scorer.build(inputs)


def _save_merged(model: Any, tokenizer: Any, folder: Path, config: Config) -> None:
    """A LoRA run also leaves a plain model folder with the adapters merged in."""
    if config.train.deepspeed or config.train.fsdp:
        logger.warning(
            "LoRA with DeepSpeed/FSDP: only the adapter was saved; merge it with peft's "
            "merge_and_unload() after loading it on one device"
        )
        return
    merged = model.merge_and_unload()
    merged.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


# ------------------------------------------------------------------ entry point
def train(
    config: Config,
    *,
    resume: bool = False,
    allow_changed_settings: bool = False,
    callbacks: list[Any] | None = None,
    training_arguments: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or continue) a token-weighted training run described by ``config``.

    Args:
        config: a validated :class:`~tokenweight.training.config.Config`.
        resume: continue from the newest checkpoint in ``train.output_dir`` (exactly:
            model, optimizer, scheduler, RNG and data position); starts fresh when there
            is none. Without it, an output folder that already holds checkpoints is
            refused. A resume whose settings differ from those that trained the
            checkpoint is refused (listing the differences), except for the settings in
            :data:`~tokenweight.training.run_record.FREE_SETTINGS`.
        allow_changed_settings: resume anyway; the run's record (checkpoint markers,
            ``train_summary.json``) then keeps each segment of steps with its settings.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        training_arguments: overrides for ``transformers.TrainingArguments``.

    Returns:
        a :class:`TrainResult`; the final model is saved in ``train.output_dir``.

    The output folder is locked (:mod:`tokenweight.infra.folder_lock`) from before the first
    write to the end; in a multi-process launch rank 0 holds the lock for every rank.
    """
    from tokenweight.training.distributed import check_sequence_parallel, is_distributed_launch

    out = Path(config.train.output_dir)
    check_report_to(config.train.report_to)
    check_sequence_parallel(config.train.sequence_parallel)
    _check_output_dir(config)
    with contextlib.ExitStack() as held:
        # one process: the lock comes first; a launch: rank 0 takes it for every rank
        # once the process group is up (before the model loads and anything is written)
        alone = not is_distributed_launch()
        lock = held.enter_context(_output_lock(out)) if alone else None
        dataset, manifest, fingerprint = _load_dataset(config)
        plan = _RunPlan(config, out, resume, allow_changed_settings, fingerprint, manifest)
        last = plan.check(final=alone)  # a used folder or a changed resume: refused here
        tokenizer, model_path, frozen = _load_start(config, manifest)
        args, fsdp = _setup_training_arguments(config, training_arguments)
        if not alone:
            lock = held.enter_context(_output_lock(out, shared=True))
            last = plan.check(final=lock is not None)  # again, now under the lock
        model = _setup_model(config, model_path, manifest.get("seq_len"))
        shards = _shard(model, fsdp)
        if frozen is not None:
            frozen[0].to(args.device if config.scorer.device is None else config.scorer.device)
        bos = _bos_token_id(manifest, dataset)
        scorer = _build_scorer(config, frozen, tokenizer, model, bos)
        trainer = _setup_trainer(
            config, model, args, dataset, manifest, tokenizer, scorer, out, callbacks, plan.segments
        )
        if trainer.is_world_process_zero():
            from tokenweight.infra.files import atomic_write_text

            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / CONFIG_NAME, config.to_yaml())
        result = trainer.train(resume_from_checkpoint=last)
        return _finish(
            config, trainer, result, tokenizer, out, last, manifest, plan.segments, shards
        )


# train.report_to values that name no integration (nothing, or every one installed)
_REPORT_TO_KEYWORDS = ("none", "all")


def check_report_to(report_to: list[str] | str | None) -> None:
    """Refuse a ``train.report_to`` integration that is unknown or not installed, before
    any data or model is loaded (the Trainer would fail only after loading the model)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    wanted = [str(n) for n in names if str(n) not in _REPORT_TO_KEYWORDS]
    unknown = [n for n in wanted if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise TokenWeightError(
            f"train.report_to: unknown integration(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or none"
        )
    available = set(get_available_reporting_integrations())
    missing = [n for n in wanted if n not in available]
    if missing:
        raise TokenWeightError(
            f"train.report_to: {', '.join(missing)} is not installed in this environment; "
            f"install it (e.g. pip install {missing[0]}) or remove it from train.report_to"
        )


def _output_lock(out: Path, shared: bool = False) -> Any:
    """The lock of ``train.output_dir`` (``shared``: rank 0's, for every rank)."""
    from tokenweight.infra.folder_lock import output_lock, shared_output_lock

    return (shared_output_lock if shared else output_lock)(out, "train.output_dir")


def _load_start(config: Config, manifest: dict[str, Any]) -> tuple[Any, str, Any]:
    """The tokenizer (checked against the data's), the start model's folder and the frozen
    scorer model (loaded before the ``TrainingArguments``: ZeRO-3 would partition it)."""
    from tokenweight.infra.models import check_data_tokenizer, load_tokenizer

    if config.used_scorer.window and manifest.get("seq_len"):
        from tokenweight.core.scoring import require_short_window

        assert config.scorer.window is not None  # required for these scorers by Config.validate
        require_short_window(config.scorer.window, int(manifest["seq_len"]), "scorer.window")
    assert config.model.source  # required by Config.validate
    model_path = _model_path(config.model.source, config.model.cache_dir)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.model.trust_remote_code)
    check_data_tokenizer(manifest, tokenizer, "model.source")
    return tokenizer, model_path, _build_frozen_scorer_model(config)


class _RunPlan:
    """Whether ``train.output_dir`` may be used, and from which checkpoint and with which
    segments a run starts (:meth:`check`)."""

    def __init__(
        self,
        config: Config,
        out: Path,
        resume: bool,
        allow: bool,
        fingerprint: str,
        manifest: dict[str, Any],
    ) -> None:
        from tokenweight.training.run_record import run_settings

        self.config, self.out, self.resume, self.allow = config, out, resume, allow
        seq_len = int(manifest.get("seq_len") or 0)
        self.settings = run_settings(config.to_dict(), fingerprint, seq_len)
        self.segments: list[dict[str, Any]] = []

    def check(self, *, final: bool) -> str | None:
        """Refuse a used folder without ``resume`` and a resume with changed settings
        (unless allowed); returns the newest complete checkpoint to resume from. With
        ``final`` (the lock holder, just before training) checkpoints cut off while
        saving are removed and the decisions are logged."""
        from tokenweight.training.run_record import next_segments

        out = self.out
        _check_output_dir(self.config)
        saved = _checkpoints(out)
        last = find_last_checkpoint(out)
        if not self.resume and (saved or (out / SUMMARY_NAME).is_file()):
            what = saved[-1].name if saved else "a finished run"
            raise TokenWeightError(
                f"train.output_dir: {out} already holds {what}; pass --resume to continue "
                "it, or choose another train.output_dir"
            )
        if final and self.resume:
            _remove_partial_checkpoints(saved, last)
            if last is None:
                logger.warning(
                    "--resume: no complete checkpoint in %s, starting from the beginning", out
                )
        if not self.resume or last is None:
            self.segments = next_segments([], 1, self.settings)
            return None
        step = _step_of(Path(last)) or 0
        earlier = self._recorded_segments(Path(last), final)
        if earlier:
            self._check_changes(earlier[-1]["settings"], step, final)
        self.segments = next_segments(earlier, step + 1, self.settings)
        return last

    def _recorded_segments(self, checkpoint: Path, final: bool) -> list[dict[str, Any]]:
        from tokenweight.training.callbacks import CHECKPOINT_MARKER

        record = read_json(checkpoint / CHECKPOINT_MARKER, "remove that checkpoint folder")
        segments = record.get("segments") if isinstance(record, dict) else None
        if not segments:
            if final:
                logger.warning(
                    "--resume: %s records no settings (written by an older version); they "
                    "are not compared",
                    checkpoint.name,
                )
            return []
        return list(segments)

    def _check_changes(self, before: dict[str, Any], step: int, final: bool) -> None:
        from tokenweight.training.run_record import changed_settings, describe_changes

        if not changed_settings(before, self.settings):
            return
        said = describe_changes(before, self.settings)
        if not self.allow:
            raise TokenWeightError(
                f"--resume: {self.out} was trained up to step {step} with other settings "
                f"({said}); resume with the settings it was trained with, pass "
                "--allow-changed-settings to continue with these (the run's record keeps "
                "both parts), or choose another train.output_dir"
            )
        if final:
            logger.warning(
                "--resume --allow-changed-settings: steps after %d run with changed settings "
                "(%s); train_summary.json records both parts",
                step,
                said,
            )


def _remove_partial_checkpoints(saved: list[Path], last: str | None) -> None:
    """Remove the checkpoints newer than ``last``: saves cut off by a kill (the Trainer
    writes them again)."""
    last_step = (_step_of(Path(last)) or 0) if last is not None else -1
    for partial in [p for p in saved if (_step_of(p) or 0) > last_step]:
        logger.warning(
            "--resume: %s is incomplete (the run stopped while saving it); removing it "
            "and resuming from %s",
            partial,
            Path(last).name if last is not None else "the beginning",
        )
        remove_path(partial)


def _setup_training_arguments(config: Config, overrides: dict[str, Any] | None) -> tuple[Any, Any]:
    """``TrainingArguments`` for the run, and the FSDP2 settings when tokenweight shards
    the model itself (FSDP on CPU processes, :mod:`tokenweight.training.fsdp2`; the
    arguments then carry no FSDP settings). Starts the process group (before the model
    loads: ZeRO-3 partitions at load time) and seeds every RNG."""
    import torch
    import transformers

    from tokenweight.training.distributed import (
        deepspeed_settings,
        fsdp_on_cpu,
        single_process_environment,
        start_process_group,
    )

    extra = dict(overrides or {})
    if config.train.deepspeed and "deepspeed" not in extra:
        extra["deepspeed"] = deepspeed_settings(config.train.deepspeed)
    if config.train.deepspeed:
        single_process_environment()  # DeepSpeed needs a process group, also of one
    accelerator_present = torch.cuda.is_available() or torch.backends.mps.is_available()
    if not config.train.use_cpu and not accelerator_present:
        extra.setdefault("use_cpu", True)
    if config.train.sequence_parallel > 1:
        from tokenweight.training.sequence_parallel import parallelism_config

        extra.setdefault(
            "parallelism_config",
            parallelism_config(config.train.sequence_parallel, config.model.attn_implementation),
        )
    args = to_training_arguments(config, **extra)
    fsdp = None
    if fsdp_on_cpu(args):
        from tokenweight.training import fsdp2

        if config.model.lora is not None:
            raise TokenWeightError(
                "model.lora: LoRA with train.fsdp is not supported on CPU processes; "
                "train without one of them"
            )
        fsdp = fsdp2.fsdp2_settings(args.fsdp_plugin_args)  # read as a GPU run reads them
        fsdp2.no_rank0_loading()
        args = to_training_arguments(config, **{**extra, "fsdp": None, "fsdp_config": None})
    start_process_group(args)  # before from_pretrained: ZeRO-3 partitions at load time
    transformers.set_seed(args.seed)
    return args, fsdp


def _shard(model: Any, fsdp: Any) -> list[Any] | None:
    """Shard ``model`` with FSDP2 when ``fsdp`` holds settings; returns every process's
    :class:`~tokenweight.training.fsdp2.ShardReport` (``None``: not sharded here)."""
    if fsdp is None:
        return None
    from tokenweight.training.fsdp2 import gather_reports, shard_model

    return gather_reports(shard_model(model, fsdp))


def _setup_model(config: Config, model_path: str, seq_len: int | None) -> Any:
    """The model to train (with LoRA adapters when configured)."""
    model = _load_model(
        config,
        model_path,
        config.model.dtype,
        rope_theta=config.model.rope_theta,
        max_position_embeddings=config.model.max_position_embeddings,
    )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if seq_len and max_pos and seq_len > max_pos:
        logger.warning(
            "sequences of %d tokens exceed the model's max_position_embeddings %d; set "
            "model.max_position_embeddings (and model.rope_theta) to extend the context",
            seq_len,
            max_pos,
        )
    if config.model.gradient_checkpointing:
        model.config.use_cache = False
    return _apply_lora(model, config)


def _setup_trainer(
    config: Config,
    model: Any,
    args: Any,
    dataset: Any,
    manifest: dict[str, Any],
    tokenizer: Any,
    scorer: Any,
    out: Path,
    callbacks: list[Any] | None,
    segments: list[dict[str, Any]],
) -> Any:
    """The :class:`TokenWeightTrainer` with its collator and callbacks (the checkpoint
    markers record the run's ``segments``)."""
    from transformers.trainer_callback import ProgressCallback

    from tokenweight.training.callbacks import (
        CheckpointMarkerCallback,
        JsonlLogCallback,
        TokenWeightProgressCallback,
    )
    from tokenweight.training.collator import TokenWeightCollator
    from tokenweight.training.trainer import TokenWeightTrainer

    pad = next(
        (t for t in (manifest.get("pad_token_id"), tokenizer.pad_token_id) if t is not None), 0
    )
    collator: Any = TokenWeightCollator(pad_token_id=pad)
    if config.train.sequence_parallel > 1:
        from tokenweight.training.sequence_parallel import SequenceParallelCollator

        collator = SequenceParallelCollator(collator, config.train.sequence_parallel)
    try:  # with push_to_hub, the Trainer creates the Hub repository here
        trainer = TokenWeightTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=tokenizer,
            scheme=config.scheme,
            scorer=scorer,
            callbacks=[
                JsonlLogCallback(out / LOG_NAME),
                CheckpointMarkerCallback(segments),
                *(callbacks or []),
            ],
        )
    except OSError as exc:  # the Hub client's errors (HTTP, no token, offline) are OSErrors
        if not config.train.push_to_hub:
            raise
        repo = config.train.hub_model_id or out.resolve().name
        raise TokenWeightError(
            f"train.push_to_hub: could not create the Hub repository {repo!r} ({exc}); "
            "log in (`hf auth login` or HF_TOKEN), check train.hub_model_id, or set "
            "train.push_to_hub=false (nothing was trained)"
        ) from None
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(TokenWeightProgressCallback())
    return trainer


def _model_card(
    config: Config,
    trainer: Any,
    manifest: dict[str, Any],
    mean_loss: float | None,
    loss_steps: tuple[int, int],
) -> str:
    """The model card of the finished run (:mod:`tokenweight.training.card`)."""
    from tokenweight.training.card import card_facts, model_card_text

    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    facts = card_facts(
        config,
        manifest,
        steps=trainer.state.global_step,
        final_loss=float(logged[-1]) if logged else None,
        mean_loss=mean_loss,
        loss_steps=loss_steps,
        world_size=int(trainer.args.world_size),
    )
    return model_card_text(facts)


def _finish(
    config: Config,
    trainer: Any,
    result: Any,
    tokenizer: Any,
    out: Path,
    resumed: str | None,
    manifest: dict[str, Any],
    segments: list[dict[str, Any]],
    shards: list[Any] | None = None,
) -> TrainResult:
    """Write the model card, save the model (``push_to_hub``: and upload the folder,
    card included), the trainer state, the merged LoRA model and ``train_summary.json``
    (with the run's segments: which settings trained which steps; and what each process
    held of an FSDP2-sharded model, ``shards``)."""
    from tokenweight.training.run_record import close_segments, describe_segments

    # the Trainer averages the loss over the steps of this process only: after a resume,
    # those after the checkpoint
    first = (_step_of(Path(resumed)) or 0) + 1 if resumed is not None else 1
    loss_steps = (first, trainer.state.global_step)
    trainer.model_card = _model_card(config, trainer, manifest, result.training_loss, loss_steps)
    if trainer.is_world_process_zero():
        from tokenweight.training.card import write_model_card

        write_model_card(out, trainer.model_card)
    trainer.save_model(str(out))  # push_to_hub writes the card again, then uploads
    trainer.save_state()
    if config.model.lora is not None and trainer.is_world_process_zero():
        _save_merged(trainer.model, tokenizer, out / "merged", config)
    closed = close_segments(segments, trainer.state.global_step)
    if trainer.is_world_process_zero():
        summary = {
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "train_loss_steps": list(loss_steps),
            "scheme": str(config.scheme),
            "scorer": config.scorer_kind,
            "resumed_from": resumed,
            "metrics": result.metrics,
            "segments": closed,
            "settings_changed": describe_segments(closed) or None,
        }
        if shards is not None:
            summary["fsdp2"] = {
                "processes": len(shards),
                "parameter_values": shards[0].total,
                "held_by_process": [r.held for r in shards],
                "largest_share_of_a_tensor": max(r.largest_share for r in shards),
            }
        from tokenweight.infra.files import atomic_write_json

        atomic_write_json(out / SUMMARY_NAME, json.loads(json.dumps(summary, default=str)))
    return TrainResult(
        output_dir=out,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        log_history=list(trainer.state.log_history),
        resumed_from=resumed,
        loss_steps=loss_steps,
        segments=closed,
    )
