"""``TokenWeightTrainer``: the Hugging Face ``Trainer`` with a token-weighted loss.

Per micro-batch (``compute_loss``):

1. long NLL ``l``: :func:`tokenweight.core.losses.model_token_nll` through the (possibly
   DDP/DeepSpeed/FSDP-wrapped) model, never materializing full logits, ``(B, N-1)``;
2. short NLL ``s``: the scorer (skipped for the uniform scheme), ``(B, N-1)``;
3. weights ``w = compute_weights(l, s, scheme, mask)`` (detached);
4. loss ``sum_i w_i l_i / n`` with :func:`tokenweight.core.weighting.weighted_nll_loss`.

``n`` is the number of valid targets of the whole optimizer step: every micro-batch of
the gradient accumulation, summed over all processes (``num_items_in_batch``, counted by
:meth:`TokenWeightTrainer.get_batch_samples`). Since data-parallel backends (DDP,
DeepSpeed, FSDP) average gradients over processes, the loss is multiplied by the number
of processes, so the applied gradient is exactly the gradient of
``sum over all valid targets of the step of w*l, divided by n`` — the same as one process
with the whole batch, whatever the padding. (With ``average_tokens_across_devices=False``
each process normalizes by its own count instead, as in the plain Trainer.)

Used as a library::

    from tokenweight.core.scoring import SelfScorer
    from tokenweight.training import TokenWeightCollator, TokenWeightTrainer

    trainer = TokenWeightTrainer(
        model=model,
        args=TrainingArguments(output_dir="out", max_steps=240, gradient_accumulation_steps=16),
        train_dataset=dataset,  # rows with input_ids (and attention_mask)
        data_collator=TokenWeightCollator(pad_token_id=tokenizer.pad_token_id or 0),
        scheme="dense:0.75",
        scorer=SelfScorer(window=8192, stride=6144, bos_token_id=tokenizer.bos_token_id),
    )
    trainer.train()
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from tokenweight.core.packed_batches import find_documents, target_mask
from tokenweight.core.weighting import Scheme
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.callbacks import StepStats, describe_batch, nonfinite_error
from tokenweight.training.collator import TokenWeightCollator
from tokenweight.training.loss import LossParts, missing_scorer, token_weighted_loss
from tokenweight.training.refusals import check_self_scorer, refuse_replaced_losses

if TYPE_CHECKING:
    from tokenweight.core.scoring import Scorer

__all__ = ["TokenWeightTrainer", "count_valid_targets"]

# dataset columns the collator uses beyond the model's forward arguments
EXTRA_COLUMNS = ("short_nll", "row", "input_hash")
# tie-breaking seeds for sparsification: distinct per (run seed, optimizer step)
_SEED_MIX = (1_000_003, 10_007)


def count_valid_targets(batch: dict[str, Any]) -> torch.Tensor:
    """Number of valid targets in a collated batch (int64 scalar on the batch's device);
    completion masks and packed documents count as in the loss
    (:func:`tokenweight.core.packed_batches.target_mask`)."""
    return target_mask(batch, find_documents(batch)).sum()


def _plain_trainer_parent(cls: type) -> bool:
    """Whether ``TokenWeightTrainer``'s parent in ``cls``'s MRO is the plain ``Trainer``
    (then it supplies the default collator; a parent such as TRL's ``SFTTrainer`` builds
    its own, with its padding-free and completion-mask handling)."""
    mro = cls.__mro__
    return mro[mro.index(TokenWeightTrainer) + 1] is Trainer


_UNIFORM = Scheme.uniform()  # the default scheme: plain cross-entropy


class TokenWeightTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is the token-weighted NLL (module docstring).

    Args:
        scheme: a :class:`~tokenweight.core.weighting.Scheme`, its text (``"dense:0.75"``) or
            dict form. Default: uniform (plain cross-entropy, no scorer).
        scorer: a :class:`~tokenweight.core.scoring.Scorer`,
            ``scorer(batch, long_nll, model=None) -> short_nll``; required unless the
            scheme is uniform.
        *args, **kwargs: everything ``Trainer`` takes. ``data_collator`` defaults to a
            :class:`~tokenweight.training.collator.TokenWeightCollator` -- unless another
            trainer follows in the MRO (``class X(TokenWeightTrainer, SFTTrainer)``),
            whose own collator is then used. Labels ``-100``, ``completion_mask`` 0 and
            padding are not targets; packed batches are handled per document
            (:mod:`tokenweight.core.packed_batches`).

    Every log line gets the figures of :class:`~tokenweight.training.callbacks.StepStats`
    (through :meth:`log`, so ``report_to`` integrations see them). A NaN or infinite
    NLL or loss raises :class:`TokenWeightError` naming the step and batch before the
    optimizer step, so no broken state is ever saved.
    """

    # compute_loss normalizes by the number of targets of the whole accumulated step, so the
    # Trainer must not divide by the accumulation steps again (transformers >= 5.19; older
    # releases are told the same through ``model_accepts_loss_kwargs`` in ``__init__``)
    loss_is_scaled_for_ga = True
    # the model card text :meth:`create_model_card` writes (``None``: the parent's draft)
    model_card: str | None = None

    def __init__(
        self,
        *args: Any,
        scheme: Scheme | str | dict[str, Any] = _UNIFORM,
        scorer: Scorer | None = None,
        **kwargs: Any,
    ) -> None:
        self.scheme = Scheme.coerce(scheme)
        if not self.scheme.is_uniform and scorer is None:
            scorers = "tokenweight.core.scoring.SelfScorer, ModelScorer or PrecomputedScorer"
            raise missing_scorer(self.scheme, scorers)
        given_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        refuse_replaced_losses(given_args, kwargs.get("compute_loss_func"))
        if kwargs.get("data_collator") is None and _plain_trainer_parent(type(self)):
            tok = kwargs.get("processing_class")
            pad = getattr(tok, "pad_token_id", None)
            kwargs["data_collator"] = TokenWeightCollator(pad_token_id=pad or 0)
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise TokenWeightError(
                f"{self.args.n_gpu} GPUs are visible to one process; launch one process per "
                "GPU with torchrun or accelerate launch (DataParallel is not supported), or "
                "set CUDA_VISIBLE_DEVICES to one GPU"
            )
        if not hasattr(Trainer, "loss_is_scaled_for_ga"):
            # transformers < 5.19 has no ``loss_is_scaled_for_ga``; its training_step skips
            # its own division by the accumulation steps when ``model_accepts_loss_kwargs``
            # is set and ``num_items_in_batch`` is given (get_batch_samples always counts).
            self.model_accepts_loss_kwargs = True
        check_self_scorer(scorer, self.model, self.args, self.train_dataset)
        self.scorer = scorer
        from tokenweight.training.fsdp2 import is_fully_sharded

        # sharded with FSDP2 before the Trainer (tokenweight.training.fsdp2): saved and
        # loaded here as whole tensors; accelerate's own FSDP route needs none of this
        self.own_fsdp2 = is_fully_sharded(self.model) and not self.is_fsdp_enabled
        config = getattr(self.args, "parallelism_config", None)
        self.sequence_parallel = int(getattr(config, "sp_size", 1) or 1)  # Ulysses degree
        self.step_stats = StepStats()
        self._micro_step = 0
        self._micro_for_step = -1
        self.add_callback(_GradientGuard(self))

    # ------------------------------------------------------------------ data plumbing
    def _set_signature_columns_if_needed(self) -> None:
        # keep the score columns when remove_unused_columns=True: the collator needs them
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            for name in EXTRA_COLUMNS:
                if name not in self._signature_columns:
                    self._signature_columns.append(name)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        # DeepSpeed casts float inputs to the model dtype; stored scores stay float32
        inputs = dict(inputs)
        short = inputs.pop("short_nll", None)
        inputs = super()._prepare_inputs(inputs)
        if short is not None:
            inputs["short_nll"] = short.to(self.args.device, dtype=torch.float32)
        return inputs

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | None]:
        """Fetch the micro-batches of one optimizer step and count their valid targets.

        The count is summed over processes (unless ``average_tokens_across_devices`` is
        off), and passed to :meth:`compute_loss` as ``num_items_in_batch``.
        """
        batches: list = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        if self.sequence_parallel > 1:
            from tokenweight.training.sequence_parallel import count_slice_targets

            count = torch.stack([count_slice_targets(b).to(device) for b in batches]).sum()
        else:
            count = torch.stack([count_valid_targets(b).to(device) for b in batches]).sum()
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count.view(1)).sum()
        return batches, count

    # ------------------------------------------------------------------ the loss
    def _loss_scale(self, num_items_in_batch: Any) -> int:
        if self.sequence_parallel > 1:
            from tokenweight.training.sequence_parallel import gradient_scale

            return gradient_scale(self.accelerator, self.sequence_parallel)
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.accelerator.num_processes > 1
        ):
            return self.accelerator.num_processes
        return 1

    def _tie_generator(self) -> torch.Generator:
        """Tie-breaking randomness of this optimizer step: the run's seed and the step
        only, so with each document's own seed (:func:`~tokenweight.training.loss.tie_seeds`)
        a document's choice does not depend on its micro-batch, process or batch-mates."""
        seed = self.args.seed * _SEED_MIX[0] + self.state.global_step * _SEED_MIX[1]
        return torch.Generator().manual_seed(seed % (2**63))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The token-weighted loss of one micro-batch (module docstring).

        ``inputs``: a collated batch (``input_ids`` ``(B, N)``, optional
        ``attention_mask``, ``labels``, ``short_nll`` ``(B, N-1)``, ``row``).
        ``num_items_in_batch``: valid targets of the whole optimizer step over all
        processes; ``None`` normalizes by this micro-batch's own count.
        With ``return_outputs`` the second value holds ``long_nll``, ``short_nll`` (when
        scored) and ``weights``, each ``(B, N-1)``.
        """
        if self._micro_for_step != self.state.global_step:
            self._micro_for_step, self._micro_step = self.state.global_step, 0
        self.step_stats.start()
        loss_fn: Callable[..., LossParts] = token_weighted_loss
        if self.sequence_parallel > 1:
            from tokenweight.training.sequence_parallel import sequence_parallel_loss as loss_fn
        parts = loss_fn(
            model,
            inputs,
            self.scheme,
            self.scorer,
            num_items=num_items_in_batch,
            generator=self._tie_generator(),
        )
        self.step_stats.scoring_seconds += parts.scoring_seconds
        self._stop_if_nonfinite(parts.problem, parts.where, inputs)
        assert parts.loss is not None
        loss = parts.loss * self._loss_scale(num_items_in_batch)

        self.step_stats.add(
            parts.long_nll, parts.weights, parts.mask, parts.short_nll, parts.no_context_targets
        )
        self._micro_step += 1
        if return_outputs:
            outputs = {"long_nll": parts.long_nll.detach(), "weights": parts.weights}
            if parts.short_nll is not None:
                outputs["short_nll"] = parts.short_nll
            return loss, outputs
        return loss

    def check_gradients(self, model: torch.nn.Module) -> None:
        """Before the optimizer step: stop if any local gradient is NaN or infinite (a
        finite loss can still overflow in the backward pass)."""
        # FSDP2 gradients are DTensors: check this process's shard (the flag is then
        # reduced over processes). DeepSpeed keeps gradients to itself (p.grad is None).
        grads = [
            g.to_local() if hasattr(g, "to_local") else g
            for g in (p.grad for p in model.parameters())
            if g is not None
        ]
        bad = False
        if grads:
            bad = not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        name = "the gradient" if bad else None
        accumulated = self.current_gradient_accumulation_steps
        self._stop_if_nonfinite(name, None, {}, batch=f"all {accumulated} micro-batch(es)")

    def _stop_if_nonfinite(
        self,
        problem: str | None,
        where: tuple[int, int, float] | None,
        inputs: dict[str, Any],
        batch: str | None = None,
    ) -> None:
        # All processes agree before anyone raises, so no process hangs in a collective.
        bad = problem is not None
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(bad)], device=self.args.device)
            any_bad = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        else:
            any_bad = bad
        if not any_bad:
            return
        out = self.args.output_dir
        last = get_last_checkpoint(out) if out and os.path.isdir(out) else None
        multi = self.accelerator.num_processes > 1
        raise nonfinite_error(
            problem or "a value on another process",
            where,
            step=self.state.global_step + 1,
            batch=batch
            or describe_batch(inputs, self._micro_step, self.args.gradient_accumulation_steps),
            process=self.accelerator.process_index if multi else None,
            last_checkpoint=last,
        )

    # ------------------------------------------------------------------ the model card
    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """With :attr:`model_card` set (``tokenweight train`` sets it), write that card
        (:func:`tokenweight.training.card.write_model_card`: never over a ``README.md``
        the package did not write) instead of the Trainer's draft; ``push_to_hub`` calls
        this before it uploads the output folder. Without it, the parent's card."""
        if self.model_card is None:
            super().create_model_card(*args, **kwargs)
            return
        if self.is_world_process_zero():
            from tokenweight.training.card import write_model_card

            write_model_card(str(self.args.output_dir), self.model_card)

    # ------------------------------------------------------------------ FSDP2 checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As the Trainer's; a model sharded by tokenweight (``own_fsdp2``) is gathered
        whole in every process, then process 0 writes it."""
        if not self.own_fsdp2:
            super().save_model(output_dir, _internal_call)
            return
        from tokenweight.training.fsdp2 import full_model_state

        state = full_model_state(self.model)
        self._save(output_dir if output_dir is not None else self.args.output_dir, state)
        if self.args.push_to_hub and not _internal_call:  # as the Trainer's save_model
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.own_fsdp2:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        from tokenweight.training.fsdp2 import full_optimizer_state

        state = full_optimizer_state(self.model, self.optimizer)
        scheduler = self.lr_scheduler
        assert scheduler is not None  # made with the optimizer, before any checkpoint
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, OPTIMIZER_NAME))
            torch.save(scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.own_fsdp2 or checkpoint is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        from tokenweight.training.fsdp2 import load_full_optimizer_state

        state = torch.load(os.path.join(checkpoint, OPTIMIZER_NAME), weights_only=True)
        load_full_optimizer_state(self.model, self.optimizer, state)
        schedule = torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True)
        assert self.lr_scheduler is not None  # made with the optimizer, before resuming
        self.lr_scheduler.load_state_dict(schedule)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self.own_fsdp2:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from tokenweight.training.fsdp2 import load_full_model_state, read_saved_model

        load_full_model_state(self.model, read_saved_model(resume_from_checkpoint))

    # ------------------------------------------------------------------ logging
    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        if self.sequence_parallel > 1:  # log the step's loss, not the scaled slice share
            loss = loss * (self.accelerator.num_processes / self._loss_scale(None))
        if self._micro_step >= self.current_gradient_accumulation_steps:
            self.step_stats.steps += 1
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the token-weighting figures to every training log line (all processes
        call this together, so the figures are reduced over processes)."""
        if "loss" in logs and "learning_rate" in logs:
            logs.update(self.step_stats.summarize(self.accelerator))
        super().log(logs, start_time)


class _GradientGuard(TrainerCallback):
    """Runs :meth:`TokenWeightTrainer.check_gradients` before every optimizer step."""

    def __init__(self, trainer: TokenWeightTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = model if model is not None else self.trainer.model
        assert model is not None  # the Trainer has its model at an optimizer step
        self.trainer.check_gradients(model)
