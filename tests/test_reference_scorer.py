"""Rho-1-style reference scoring: the reference model's full-sequence NLL, the excess-loss
weighted loss and its gradients against an independent computation, and a training run
configured with ``scorer.kind: reference``."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.fixtures import build_tiny_causal_lm, make_tokenizer, save_tiny_model
from helpers.packed import packed_batch, split_targets
from helpers.train_config import tiny_train_config
from helpers.train_support import VOCAB, full_logits_nll, model_and_data
from tokenweight.core.reference_scorer import ReferenceScorer
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.config import load_config
from tokenweight.training.loss import token_weighted_loss
from tokenweight.training.run import train


def test_reference_nll_is_plain_cross_entropy_of_the_reference_model():
    ref = build_tiny_causal_lm(seed=5, vocab_size=VOCAB)
    ids = torch.randint(4, 60, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    scorer = ReferenceScorer(ref)
    got = scorer({"input_ids": ids, "attention_mask": mask}, torch.zeros(3, 19))
    with torch.no_grad():
        expected = full_logits_nll(ref, ids, mask)
    valid = mask[:, 1:].bool()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-5, atol=1e-5)
    other = build_tiny_causal_lm(seed=6, vocab_size=VOCAB).train()
    other.config.bos_token_id = 7
    with pytest.raises(TokenWeightError):
        ReferenceScorer(other, reference=ref)


def test_a_packed_batch_is_scored_one_document_at_a_time():
    """Packed documents (restarting positions, as TRL's padding-free collator gives them):
    each document's reference NLL equals that of the document alone, from position 0."""
    ref = build_tiny_causal_lm(seed=5, vocab_size=VOCAB)
    g = torch.Generator().manual_seed(3)
    docs = [torch.randint(4, 60, (n,), generator=g) for n in (9, 14, 7)]
    batch = packed_batch(docs, with_cu=False)
    got = ReferenceScorer(ref)(batch, torch.zeros(1, batch["input_ids"].shape[1] - 1))
    for doc, part in zip(docs, split_targets(got, docs)):
        with torch.no_grad():
            alone = full_logits_nll(ref, doc[None], torch.ones(1, len(doc), dtype=torch.long))
        torch.testing.assert_close(part, alone[0], rtol=1e-5, atol=1e-5)


def test_excess_loss_weighting_matches_an_independent_computation():
    torch.manual_seed(0)
    model, ref = (
        build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train(),
        build_tiny_causal_lm(seed=2, vocab_size=VOCAB).train(),
    )
    ids = torch.randint(4, 60, (2, 24))
    parts = token_weighted_loss(model, {"input_ids": ids}, "rho1:0.25", ReferenceScorer(ref))
    parts.loss.backward()
    got_grad = model.lm_head.weight.grad.clone()

    twin = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    long = full_logits_nll(twin, ids)
    with torch.no_grad():
        s_ref = full_logits_nll(ref.eval(), ids)
    excess = long.detach() - s_ref
    n = excess.shape[1]
    k = int(0.25 * n)  # floor: the top 25% of the 23 targets of each row
    top = torch.zeros_like(excess)
    top.scatter_(1, excess.topk(k, dim=1).indices, 1.0)
    w = top * n / k  # L1-normalized: the weights average 1 over the row
    loss = (w * long).sum() / long.numel()
    loss.backward()
    torch.testing.assert_close(parts.loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.weights, w, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, twin.lm_head.weight.grad, rtol=1e-4, atol=1e-7)


def test_training_with_a_reference_scorer_config(tmp_path):
    assets = model_and_data(tmp_path, 32, docs=4, words=120)
    model_dir, prepared = assets["model"], assets["prepared"]
    ref_dir = save_tiny_model(
        tmp_path / "ref", make_tokenizer(), seed=3, max_position_embeddings=256
    )
    base = tiny_train_config(
        model_dir,
        prepared,
        tmp_path / "out",
        scheme="rho1:0.5",
        scorer={"kind": "reference", "model": str(ref_dir)},
        data_options={"seq_len": 32},
    )
    result = train(load_config(base=base))
    assert result.global_step == 2 and result.train_loss == result.train_loss
    saved = json.dumps(json.loads((tmp_path / "out" / "train_summary.json").read_text()))
    assert "reference" in saved
    with pytest.raises(TokenWeightError, match="required for the 'reference' scorer"):
        load_config(base={**base, "scorer": {"kind": "reference"}})
