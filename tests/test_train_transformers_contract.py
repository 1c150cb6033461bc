"""The loss-scaling contract with ``transformers.Trainer`` that TokenWeightTrainer relies on.

``compute_loss`` already divides by the valid targets of the whole accumulated step, so
the Trainer's ``training_step`` must not divide by the accumulation steps again. From
transformers 5.19 a trainer says so with the class attribute ``loss_is_scaled_for_ga``;
older releases skip the division when ``model_accepts_loss_kwargs`` is set and
``num_items_in_batch`` is given. These tests read the installed Trainer's source, so a
release that drops or renames the flag fails here rather than silently scaling the
gradient by ``1 / gradient_accumulation_steps`` (the behaviour itself is checked in
``test_train_loss.py::test_accumulation_two_by_one_equals_batch_two_and_the_global_mean``).
"""

from __future__ import annotations

import inspect

import transformers
from transformers import Trainer, TrainingArguments

from helpers.fixtures import build_tiny_causal_lm, training_args
from helpers.train_support import VOCAB
from tokenweight.training.trainer import TokenWeightTrainer


def _args(tmp_path) -> TrainingArguments:
    return training_args(tmp_path / "out", gradient_accumulation_steps=4)


def _no_loss_kwargs_model():
    model = build_tiny_causal_lm(seed=0, vocab_size=VOCAB).train()
    model.accepts_loss_kwargs = False  # what the Trainer reads to set model_accepts_loss_kwargs
    return model


def test_the_installed_trainer_has_a_flag_that_stops_the_accumulation_division():
    source = inspect.getsource(Trainer.training_step)
    assert "current_gradient_accumulation_steps" in source
    if hasattr(Trainer, "loss_is_scaled_for_ga"):
        assert "self.loss_is_scaled_for_ga" in source, transformers.__version__
    else:
        assert "self.model_accepts_loss_kwargs" in source, transformers.__version__


def test_token_weight_trainer_declares_its_loss_scaled(tmp_path):
    trainer = TokenWeightTrainer(model=_no_loss_kwargs_model(), args=_args(tmp_path))
    if hasattr(Trainer, "loss_is_scaled_for_ga"):
        assert trainer.loss_is_scaled_for_ga is True
        # the plain Trainer, same model: the flag is unset, so it would divide
        plain = Trainer(model=_no_loss_kwargs_model(), args=_args(tmp_path))
        assert not plain.loss_is_scaled_for_ga and not plain.model_accepts_loss_kwargs
    else:
        assert trainer.model_accepts_loss_kwargs is True


def test_older_releases_are_told_through_model_accepts_loss_kwargs(tmp_path, monkeypatch):
    if hasattr(Trainer, "loss_is_scaled_for_ga"):
        monkeypatch.delattr(Trainer, "loss_is_scaled_for_ga")
    trainer = TokenWeightTrainer(model=_no_loss_kwargs_model(), args=_args(tmp_path))
    assert trainer.model_accepts_loss_kwargs is True
