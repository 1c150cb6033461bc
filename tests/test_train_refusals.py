"""No silent no-op: settings under which token weighting could never do anything are
refused in the Python API (as the command line refuses them), rows that are legitimately
too short for the self scorer's window are reported once and their share logged, and the
TRL mixin refuses the loss settings its token-weighted loss would replace."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from helpers.fixtures import build_tiny_causal_lm, make_tokenizer, training_args
from helpers.train_support import VOCAB
from tokenweight import TokenWeightError, make_compute_loss_func
from tokenweight.core.scoring import ModelScorer, SelfScorer
from tokenweight.training import TokenWeightTrainer
from tokenweight.training.loss import token_weighted_loss

POSITIONS = 64


def small_model(seed: int = 1):
    return build_tiny_causal_lm(
        seed=seed, vocab_size=VOCAB, max_position_embeddings=POSITIONS
    ).train()


class TokenWeightSFTTrainer(TokenWeightTrainer, SFTTrainer):
    """The TRL recipe of the documentation."""


# ------------------------------------------------------------ a window that can never score
@pytest.mark.parametrize("window", [POSITIONS + 1, POSITIONS + 100])
def test_self_scorer_window_above_the_models_positions_is_refused(tmp_path, window):
    model = small_model()
    batch = {"input_ids": torch.randint(4, VOCAB, (1, 40))}
    expected = rf"SelfScorer\(window={window}\).*{POSITIONS} positions.*at most {POSITIONS}"
    with pytest.raises(TokenWeightError, match=expected):
        token_weighted_loss(model, batch, "dense:0.75", SelfScorer(window))
    with pytest.raises(TokenWeightError, match=expected):
        SelfScorer(window, model=model)
    with pytest.raises(TokenWeightError, match=expected):
        make_compute_loss_func(model, "dense:0.75", SelfScorer(window))
    with pytest.raises(TokenWeightError, match=expected):
        TokenWeightTrainer(
            model=model,
            args=training_args(tmp_path),
            scheme="dense:0.75",
            scorer=SelfScorer(window),
        )
    # the frozen scorer model reads whole documents legitimately (a reference model)
    ModelScorer(small_model(2), window, reference=model)


def test_a_window_equal_to_the_positions_scores_sequences_trained_past_them():
    """The method's setting when a RoPE model trains past its configured positions (the
    window is the native context): legitimate, and it scores the targets past it."""
    model = small_model()
    batch = {"input_ids": torch.randint(4, VOCAB, (1, 3 * POSITIONS))}
    parts = token_weighted_loss(model, batch, "dense:0.75", SelfScorer(POSITIONS))
    assert parts.no_context_targets == 0
    assert not torch.equal(parts.short_nll[0, POSITIONS:], parts.long_nll[0, POSITIONS:])


def test_self_scorer_window_covering_every_training_row_is_refused(tmp_path):
    model = small_model()
    rows = Dataset.from_dict({"input_ids": [[5] * n for n in (12, 30, 17)]})
    with pytest.raises(TokenWeightError, match=r"covers the whole 30-token sequence"):
        TokenWeightTrainer(
            model=model,
            args=training_args(tmp_path, remove_unused_columns=False),
            train_dataset=rows,
            scheme="dense:0.75",
            scorer=SelfScorer(30),
        )
    # one row longer than the window: legitimate (the short rows are reported instead)
    TokenWeightTrainer(
        model=model,
        args=training_args(tmp_path, remove_unused_columns=False),
        train_dataset=rows,
        scheme="dense:0.75",
        scorer=SelfScorer(29),
    )


@pytest.mark.parametrize("packing", [False, True])
def test_sft_max_length_within_the_window_is_refused(tmp_path, packing):
    texts = [" ".join(f"w{i % 50}" for i in range(n)) for n in (40, 60, 90)]
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_length=24,
        packing=packing,
        use_cpu=True,
        report_to="none",
        dataset_num_proc=None,
    )
    with pytest.raises(TokenWeightError, match=r"covers the whole 24-token sequence"):
        TokenWeightSFTTrainer(
            model=small_model(),
            args=config,
            train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=make_tokenizer(),
            scheme="dense:0.75",
            scorer=SelfScorer(24),
        )


# ------------------------------------------------------------ rows shorter than the window
def test_rows_without_a_shorter_context_are_counted_warned_once_and_logged(tmp_path, caplog):
    window = 16
    g = torch.Generator().manual_seed(0)
    lengths = [40, 10, 16, 25]  # rows 1 and 2 are no longer than the window
    rows = [{"input_ids": torch.randint(4, VOCAB, (n,), generator=g).tolist()} for n in lengths]
    model = small_model()
    scorer = SelfScorer(window)
    trainer = TokenWeightTrainer(
        model=model,
        args=training_args(
            tmp_path,
            per_device_train_batch_size=4,
            max_steps=2,
            logging_steps=1,
            remove_unused_columns=False,
            train_sampling_strategy="sequential",
        ),
        train_dataset=Dataset.from_list(rows),
        scheme="dense:0.75",
        scorer=scorer,
    )
    with caplog.at_level(logging.WARNING, logger="tokenweight.core.scoring"):
        trainer.train()
    short_targets = (10 - 1) + (16 - 1)
    share = short_targets / sum(n - 1 for n in lengths)
    warnings = [r.getMessage() for r in caplog.records if "no shorter context" in r.message]
    assert len(warnings) == 1, warnings  # two steps with short rows, one warning
    assert f"{short_targets} of the {sum(n - 1 for n in lengths)} targets" in warnings[0]
    assert f"({100 * share:.1f}%)" in warnings[0]
    logged = [h["no_context_share"] for h in trainer.state.log_history if "no_context_share" in h]
    assert logged == [pytest.approx(share)] * 2

    # the same count in the loss parts; those rows' weights are uniform
    batch = trainer.data_collator(rows)
    parts = token_weighted_loss(model, batch, "dense:0.75", scorer)
    assert parts.no_context_targets == short_targets
    for row in (1, 2):
        valid = parts.mask[row]
        torch.testing.assert_close(parts.weights[row][valid], torch.ones(int(valid.sum())))
    assert not torch.allclose(parts.weights[0][parts.mask[0]], torch.ones(39))


# ------------------------------------------------------------ losses the mixin would replace
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"loss_type": "dft"}, r"loss_type='dft'.*never be used.*Leave loss_type at 'nll'"),
        ({"label_smoothing_factor": 0.1}, r"label_smoothing_factor=0.1.*set label_smoothing"),
    ],
)
def test_trl_mixin_refuses_a_loss_it_would_replace(tmp_path, setting, message):
    config = SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", dataset_num_proc=None, **setting
    )
    with pytest.raises(TokenWeightError, match=message):
        TokenWeightSFTTrainer(
            model=small_model(),
            args=config,
            train_dataset=Dataset.from_dict({"text": ["w1 w2 w3 w4"]}),
            processing_class=make_tokenizer(),
            scheme="dense:0.75",
            scorer=SelfScorer(8),
        )


def test_compute_loss_func_given_to_the_trainer_is_refused(tmp_path):
    model = small_model()
    with pytest.raises(TokenWeightError, match=r"compute_loss_func would never be called"):
        TokenWeightTrainer(
            model=model,
            args=training_args(tmp_path),
            compute_loss_func=lambda *a, **k: None,
        )
