"""Token weighting inside TRL's ``SFTTrainer`` and a plain ``Trainer`` (``compute_loss_func``).

For every batch layout TRL produces -- one document per padded row (``packing=False``),
fixed-length rows cut from the document stream (``packing="wrapped"``) and the default
padding-free best-fit packing (``bfd``: one row, ``position_ids`` restarting per
document) -- the loss and the gradients of a step equal a hand computation: every
document run alone through the plain model (full logits, ``F.cross_entropy``), scored by
the scorer model alone, weighted as a row of its own with ``compute_weights``, and
``sum(w * l) / n`` over TRL's labels. TRL comes with the ``dev`` extra
(``tokenweight[trl]`` for users).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from helpers.fixtures import build_tiny_causal_lm, make_tokenizer, training_args
from helpers.train_support import VOCAB, copy_model, markov_words
from tokenweight import make_compute_loss_func
from tokenweight.core.scoring import ModelScorer
from tokenweight.core.weighting import compute_weights
from tokenweight.training import TokenWeightCollator, TokenWeightTrainer

SCHEME = "dense:0.75"
MAX_LEN = 48
WINDOW = 64  # >= every document: the scorer model sees each document whole


class TokenWeightSFTTrainer(TokenWeightTrainer, SFTTrainer):
    """The recipe of docs/python-api.md: token weighting with TRL's data handling."""


def texts(count: int = 6, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(markov_words(rng.randrange(8, 30), rng)) for _ in range(count)]


def prompt_completion(count: int = 6, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    prompts = [" ".join(markov_words(rng.randrange(4, 12), rng)) for _ in range(count)]
    completions = [" ".join(markov_words(rng.randrange(4, 16), rng)) for _ in range(count)]
    return {"prompt": prompts, "completion": completions}


def sft_trainer(
    tmp_path, model, scorer_model, packing, data=None, *, scheme=SCHEME, scorer=None, **kwargs
) -> TokenWeightSFTTrainer:
    config = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_length=MAX_LEN,
        packing=packing is not False,
        packing_strategy=packing or "bfd",
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,
        dataset_num_proc=None,
        bf16=False,  # SFTConfig turns bf16 autocast on by default; the reference is float32
        **kwargs,
    )
    return TokenWeightSFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_dict(data or {"text": texts()}),
        processing_class=make_tokenizer(),
        scheme=scheme,
        scorer=scorer if scorer is not None else ModelScorer(scorer_model, WINDOW),
    )


def documents(batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids, labels) of every document of a collated batch, found independently:
    padding-free rows split where ``position_ids`` is 0, other rows cut at their
    attention mask."""
    docs = []
    for r in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][r], batch["labels"][r]
        if "position_ids" in batch:
            starts = [t for t, p in enumerate(batch["position_ids"][r].tolist()) if p == 0]
            bounds = zip(starts, [*starts[1:], len(ids)])
        else:
            bounds = [(0, int(batch["attention_mask"][r].sum()))]
        docs += [(ids[a:b], labels[a:b]) for a, b in bounds if b - a > 1]
    return docs


def hand_loss(model, scorer_model, batch) -> torch.Tensor:
    terms, count = [], 0
    for ids, labels in documents(batch):
        targets = labels[1:]
        mask = targets != -100
        if not mask.any():
            continue
        long = F.cross_entropy(
            model(input_ids=ids[None]).logits[0, :-1].float(),
            targets,
            reduction="none",
            ignore_index=-100,
        )
        with torch.no_grad():
            logits = scorer_model(input_ids=ids[None]).logits[0, :-1].float()
            short = F.cross_entropy(logits, targets, reduction="none", ignore_index=-100)
        w = compute_weights(long.detach()[None], short[None], SCHEME, mask=mask[None])[0]
        terms.append((w * long)[mask].sum())
        count += int(mask.sum())
    return torch.stack(terms).sum() / count


@pytest.mark.parametrize(
    ("packing", "data"),
    [(False, "text"), ("wrapped", "text"), ("bfd", "text"), ("bfd", "prompt-completion")],
)
def test_sft_trainer_step_equals_hand_computation(tmp_path, packing, data):
    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    reference = copy_model(model)
    scorer_model = build_tiny_causal_lm(seed=2, vocab_size=VOCAB)
    rows = prompt_completion() if data == "prompt-completion" else None
    trainer = sft_trainer(tmp_path, model, scorer_model, packing, rows)
    batch = next(iter(trainer.get_train_dataloader()))
    if rows is not None:  # TRL's completion-only loss: prompt tokens carry label -100
        prompt_targets = (batch["labels"] == -100) & (batch["position_ids"] > 0)
        assert int(prompt_targets.sum()) > 0
    if packing == "bfd":  # TRL's padding-free layout: one row, positions restart per document
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        assert int((batch["position_ids"] == 0).sum()) > 1
    if packing == "wrapped":
        assert batch["input_ids"].shape[1] == MAX_LEN
    n = sum(int((lab[1:] != -100).sum()) for _, lab in documents(batch))

    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(n))
    loss.backward()
    expected = hand_loss(reference, scorer_model, batch)
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sft_trainer_padding_free_trains_with_the_step_gradient(tmp_path):
    """A whole optimizer step under bfd packing (the case that used to crash): with SGD the
    update is exactly ``-lr`` times the hand gradient of the step's batch."""
    model = build_tiny_causal_lm(seed=3, vocab_size=VOCAB).train()
    reference = copy_model(model)
    scorer_model = build_tiny_causal_lm(seed=4, vocab_size=VOCAB)
    lr = 0.5
    trainer = sft_trainer(
        tmp_path,
        model,
        scorer_model,
        "bfd",
        max_steps=1,
        optim="sgd",
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert len(trainer.train_dataset) <= 8  # one step sees the whole (packed) dataset
    trainer.train()
    hand_loss(reference, scorer_model, batch).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(
            p.detach(), q.detach() - lr * q.grad, rtol=1e-4, atol=1e-6, msg=name
        )
    logged = [h for h in trainer.state.log_history if "weight_mean" in h]
    assert logged, trainer.state.log_history


def test_plain_trainer_compute_loss_func_step(tmp_path):
    """``Trainer(compute_loss_func=make_compute_loss_func(...))``: one SGD step with two
    accumulated micro-batches equals ``-lr`` times the hand gradient over both."""
    model = build_tiny_causal_lm(seed=5, vocab_size=VOCAB).train()
    reference = copy_model(model)
    scorer_model = build_tiny_causal_lm(seed=6, vocab_size=VOCAB)
    tok = make_tokenizer()
    rows = [{"input_ids": tok(t)["input_ids"][:MAX_LEN]} for t in texts(4, seed=1)]
    collate = TokenWeightCollator(pad_token_id=tok.pad_token_id)
    lr = 0.5
    args = training_args(
        tmp_path / "out",
        max_grad_norm=0.0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        optim="sgd",
        learning_rate=lr,
        lr_scheduler_type="constant",
    )
    loss_func = make_compute_loss_func(model, SCHEME, ModelScorer(scorer_model, WINDOW))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
        compute_loss_func=loss_func,
    )
    batches = list(trainer.get_train_dataloader())
    trainer.train()
    loss_func.remove()
    # the hand gradient of the whole step: every document of both micro-batches, one divisor
    everything = collate(
        [
            {"input_ids": b["input_ids"][r][b["labels"][r] != -100].tolist()}
            for b in batches
            for r in range(b["input_ids"].shape[0])
        ]
    )
    hand_loss(reference, scorer_model, everything).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(
            p.detach(), q.detach() - lr * q.grad, rtol=1e-4, atol=1e-6, msg=name
        )


@pytest.mark.parametrize("scheme", ["dense:0.75", "npmi:c=1,kappa=0.5"])
@pytest.mark.parametrize("packing", [False, "bfd"])
def test_sft_trainer_self_scored_documents_weigh_as_if_alone(tmp_path, scheme, packing):
    """Under the TRL mixin with the self scorer and windows much shorter than the
    documents: padded rows and padding-free packing give each document the short NLL,
    weights and tie choices (NPMI: many tied zeros) it has alone, so the loss and the
    gradients equal the documents run one by one (the same optimizer step's seed)."""
    from tokenweight.core.scoring import SelfScorer
    from tokenweight.training.loss import token_weighted_loss

    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    reference = copy_model(model)
    trainer = sft_trainer(
        tmp_path, model, None, packing, scheme=scheme, scorer=SelfScorer(window=6)
    )
    batch = next(iter(trainer.get_train_dataloader()))
    docs = documents(batch)
    assert max(len(ids) for ids, _ in docs) > 3 * 6  # several windows per long document
    n = sum(int((lab[1:] != -100).sum()) for _, lab in docs)

    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(n))
    loss.backward()
    total = torch.zeros(())
    for ids, labels in docs:
        parts = token_weighted_loss(
            reference,
            {"input_ids": ids[None], "labels": labels[None]},
            scheme,
            SelfScorer(window=6),
            num_items=n,
            generator=trainer._tie_generator(),
        )
        assert parts.loss is not None
        total = total + parts.loss
    total.backward()
    torch.testing.assert_close(loss.detach(), total.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
