"""TokenWeightTrainer's loss and gradients against a hand computation.

The reference is independent of the code under test: full logits from the plain model,
``F.cross_entropy``, short NLL from a one-window-at-a-time loop (or the stored values),
weights from ``compute_weights`` and ``sum(w * l) / n_valid`` written out by hand.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from helpers.fixtures import PAD_ID, build_tiny_causal_lm, training_args
from helpers.train_support import (
    VOCAB,
    clone_params,
    copy_model,
    full_logits_nll,
    reference_short_nll,
)
from tokenweight import TokenWeightError
from tokenweight.core import scoring
from tokenweight.core.scoring import PrecomputedScorer
from tokenweight.core.weighting import compute_weights
from tokenweight.training.collator import TokenWeightCollator
from tokenweight.training.trainer import TokenWeightTrainer

N, WINDOW, STRIDE, BOS = 48, 16, 8, 1


def make_args(tmp_path, **kwargs) -> TrainingArguments:
    base = dict(logging_steps=1, remove_unused_columns=False, max_grad_norm=0.0)
    return training_args(tmp_path / "out", **{**base, **kwargs})


def make_batch(seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    """Two BOS-led sequences; the second right-padded (valid counts differ)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 60, (2, N), generator=g)
    ids[:, 0] = BOS
    examples = [{"input_ids": ids[0].tolist(), "row": 7}, {"input_ids": ids[1].tolist(), "row": 3}]
    if padded:
        mask = [1] * 37 + [0] * (N - 37)
        examples[1]["attention_mask"] = mask
        examples[1]["input_ids"] = [t if m else PAD_ID for t, m in zip(ids[1].tolist(), mask)]
        examples[0]["attention_mask"] = [1] * N
    return TokenWeightCollator(pad_token_id=PAD_ID)(examples)


def hand_loss(model, batch, scheme, short_source, scorer_model=None):
    """sum(w * l) / n over valid targets, from full logits (differentiable in ``model``)."""
    ids, am = batch["input_ids"], batch.get("attention_mask")
    long = full_logits_nll(model, ids, am)
    mask = am[:, 1:].bool() if am is not None else torch.ones_like(long, dtype=torch.bool)
    if short_source in ("self", "model"):
        lengths = mask.sum(-1) + 1  # each row scored alone on its real tokens
        short = reference_short_nll(
            short_source, model, ids, long, WINDOW, STRIDE, BOS, scorer_model, lengths
        )
    elif short_source == "precomputed":
        short = batch["short_nll"]
    else:
        short = None
    if short is not None:
        short = torch.where(mask, short, torch.zeros_like(short))
    w = compute_weights(long.detach(), short, scheme, mask=mask)
    return (w * long)[mask].sum() / mask.sum(), w


def build_scorer(kind, scorer_model=None):
    return scoring.build_scorer(
        kind, window=WINDOW, stride=STRIDE, bos_token_id=BOS, scorer_model=scorer_model
    )


CASES = [
    ("uniform", "none"),
    ("dense:0.75", "self"),
    ("sparse:0.25", "self"),
    ("longce:5", "self"),
    ("dense:0.75", "precomputed"),
    ("sparse:0.25", "precomputed"),
    ("longce:5", "precomputed"),
    ("dense:0.5", "model"),
]


@pytest.mark.parametrize(("scheme", "kind"), CASES)
def test_loss_and_gradients_equal_hand_computation(tmp_path, scheme, kind):
    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    reference = copy_model(model)
    scorer_model = build_tiny_causal_lm(seed=2, vocab_size=VOCAB) if kind == "model" else None
    batch = make_batch()
    if kind == "precomputed":
        g = torch.Generator().manual_seed(5)
        batch["short_nll"] = torch.rand(2, N - 1, generator=g) * 6
    trainer = TokenWeightTrainer(
        model=model,
        args=make_args(tmp_path),
        scheme=scheme,
        scorer=build_scorer(kind, scorer_model),
    )
    loss, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
    loss.backward()

    expected, w = hand_loss(reference, batch, scheme, kind, scorer_model)
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["weights"], w, rtol=1e-4, atol=1e-5)
    grads = {k: p.grad for k, p in model.named_parameters()}
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    if scheme != "uniform":  # the weighting really changes the loss
        uniform = full_logits_nll(reference, batch["input_ids"], batch["attention_mask"])
        assert (
            abs(
                float(uniform.detach().sum() / batch["attention_mask"][:, 1:].sum())
                - float(loss.detach())
            )
            > 1e-4
        )


def test_self_scoring_leaves_the_model_in_training_mode_and_gets_no_gradient(tmp_path):
    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    trainer = TokenWeightTrainer(
        model=model, args=make_args(tmp_path), scheme="dense:0.75", scorer=build_scorer("self")
    )
    loss = trainer.compute_loss(model, make_batch())
    assert model.training
    # weights are detached: the gradient equals that of sum(w*l)/n with w held constant
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _sgd_train(tmp_path, rows, *, batch, accumulation, scheme="dense:0.75", kind="self"):
    model = build_tiny_causal_lm(seed=3, vocab_size=VOCAB).train()
    args = make_args(
        tmp_path,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        remove_unused_columns=True,  # the Trainer default; the score columns must survive
    )
    trainer = TokenWeightTrainer(
        model=model, args=args, train_dataset=rows, scheme=scheme, scorer=build_scorer(kind)
    )
    trainer.train()
    return model, trainer


def _rows():
    b = make_batch(seed=9)
    rows = []
    for i in range(2):
        rows.append(
            {
                "input_ids": b["input_ids"][i].tolist(),
                "attention_mask": b["attention_mask"][i].tolist(),
                "row": i,
            }
        )
    return rows, b


@pytest.mark.parametrize("scheme", ["dense:0.75", "uniform"])
def test_accumulation_two_by_one_equals_batch_two_and_the_global_mean(tmp_path, scheme):
    kind = "none" if scheme == "uniform" else "self"
    rows, batch = _rows()
    a, _ = _sgd_train(tmp_path / "a", rows, batch=2, accumulation=1, scheme=scheme, kind=kind)
    b, tb = _sgd_train(tmp_path / "b", rows, batch=1, accumulation=2, scheme=scheme, kind=kind)

    # hand: one SGD step on sum(w*l) over both sequences / total valid targets
    reference = build_tiny_causal_lm(seed=3, vocab_size=VOCAB).train()
    start = clone_params(reference)
    expected, _ = hand_loss(reference, batch, scheme, kind)
    expected.backward()
    pa, pb = clone_params(a), clone_params(b)
    for name, p in reference.named_parameters():
        want = start[name] - 0.5 * p.grad
        torch.testing.assert_close(pa[name], want, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(pb[name], want, rtol=1e-4, atol=1e-6, msg=name)
    # the logged loss of the step is the same global weighted mean
    logged = [h for h in tb.state.log_history if "loss" in h and "weighted_loss" in h]
    assert logged and logged[0]["loss"] == pytest.approx(float(expected.detach()), rel=1e-4)
    assert logged[0]["weighted_loss"] == pytest.approx(float(expected.detach()), rel=1e-4)


def test_log_line_has_the_weighting_figures(tmp_path):
    rows, _ = _rows()
    _, trainer = _sgd_train(tmp_path, rows, batch=1, accumulation=2, scheme="sparse:0.25")
    line = next(h for h in trainer.state.log_history if "loss" in h)
    for key in (
        "weighted_loss",
        "nll",
        "weight_mean",
        "weight_std",
        "weight_max",
        "weight_nonzero",
        "abs_score",
        "scoring_share",
        "step_time",
    ):
        assert key in line, key
    assert line["weight_mean"] == pytest.approx(1.0, rel=1e-5)  # L1 normalization
    assert 0 < line["weight_nonzero"] <= 0.3  # kappa 0.25 per sequence (floor, >= 1)
    assert 0 < line["scoring_share"] < 1


def test_nan_in_scores_stops_with_step_and_rows(tmp_path):
    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    trainer = TokenWeightTrainer(
        model=model, args=make_args(tmp_path), scheme="dense:0.75", scorer=PrecomputedScorer()
    )
    batch = make_batch()
    batch["short_nll"] = torch.ones(2, N - 1)
    batch["short_nll"][1, 5] = float("nan")
    with pytest.raises(TokenWeightError, match=r"step 1.*rows \[7, 3\].*short-context NLL"):
        trainer.compute_loss(model, batch)


def test_uniform_needs_no_scorer_but_weighted_schemes_do(tmp_path):
    with pytest.raises(TokenWeightError, match="needs a short-context scorer"):
        TokenWeightTrainer(
            model=build_tiny_causal_lm(vocab_size=VOCAB).train(),
            args=make_args(tmp_path),
            scheme="dense:0.75",
        )
