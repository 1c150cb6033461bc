"""Packed (padding-free) batches give what the same documents give unpacked.

The reference runs every document on its own through the plain model (full logits,
``F.cross_entropy``), scores it with a one-window-at-a-time loop, weights it as a row of
its own with ``compute_weights`` and writes ``sum(w * l) / n`` out by hand.
"""

from __future__ import annotations

import pytest
import torch

from helpers.fixtures import build_tiny_causal_lm
from helpers.packed import packed_batch, split_targets
from helpers.train_support import VOCAB, copy_model, full_logits_nll, reference_short_nll
from tokenweight import TokenWeightError
from tokenweight.core import scoring
from tokenweight.core.packed_batches import find_documents, right_padded_lengths
from tokenweight.core.scoring import SelfScorer
from tokenweight.core.weighting import compute_weights
from tokenweight.training.collator import TokenWeightCollator
from tokenweight.training.loss import token_weighted_loss
from tokenweight.training.trainer import count_valid_targets

WINDOW, STRIDE, BOS = 8, 4, 1
LENGTHS = (28, 16, 40, 8)  # (n - WINDOW) % STRIDE == 0 for the window loop
ATOL = 2e-5  # float32 model: packed and per-document forwards differ by rounding only


def make_docs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(4, 60, (n,), generator=g) for n in LENGTHS]
    for d in docs:
        d[0] = BOS
    return docs


def reference(model, docs, scheme, kind, scorer_model=None, stored=None):
    """Per document: long NLL, short NLL, weights; the loss over all documents."""
    longs, shorts, weights = [], [], []
    for i, d in enumerate(docs):
        ids = d[None]
        long = full_logits_nll(model, ids)
        if kind in ("self", "model"):
            short = reference_short_nll(kind, model, ids, long, WINDOW, STRIDE, BOS, scorer_model)
        elif kind == "precomputed":
            short = stored[i][None]
        else:
            short = None
        w = compute_weights(long.detach(), short, scheme)
        longs.append(long[0])
        shorts.append(None if short is None else short[0])
        weights.append(w[0])
    n = sum(len(d) - 1 for d in docs)
    loss = sum((w * nll).sum() for w, nll in zip(weights, longs)) / n
    return loss, longs, shorts, weights


def make_scorer(kind, scorer_model=None):
    return scoring.build_scorer(
        kind, window=WINDOW, stride=STRIDE, bos_token_id=BOS, scorer_model=scorer_model
    )


CASES = [
    ("uniform", "none"),
    ("dense:0.75", "self"),
    ("longce:5", "self"),
    ("dense:0.5", "model"),
    ("sparse:0.25", "precomputed"),  # random stored scores: no ties in the top fraction
]


@pytest.mark.parametrize(("scheme", "kind"), CASES)
def test_packed_batch_equals_documents_run_one_by_one(scheme, kind):
    model = build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train()
    ref_model = copy_model(model)
    scorer_model = build_tiny_causal_lm(seed=2, vocab_size=VOCAB) if kind == "model" else None
    docs = make_docs()
    batch = packed_batch(docs)
    stored = None
    if kind == "precomputed":
        g = torch.Generator().manual_seed(5)
        stored = [torch.rand(len(d) - 1, generator=g) * 6 for d in docs]
        batch["short_nll"] = torch.cat([torch.cat([s, torch.zeros(1)]) for s in stored])[None, :-1]

    parts = token_weighted_loss(model, batch, scheme, make_scorer(kind, scorer_model))
    parts.loss.backward()
    expected, longs, shorts, weights = reference(
        ref_model, docs, scheme, kind, scorer_model, stored
    )
    expected.backward()

    # document starts are no targets; everything else is
    starts = torch.tensor(LENGTHS).cumsum(0)[:-1] - 1
    assert not parts.mask[0, starts].any()
    assert int(parts.mask.sum()) == sum(n - 1 for n in LENGTHS)
    for got, want in zip(split_targets(parts.long_nll.detach(), docs), longs):
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=ATOL)
    for got, want in zip(split_targets(parts.weights, docs), weights):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if parts.short_nll is not None:
        for got, want in zip(split_targets(parts.short_nll, docs), shorts):
            torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    torch.testing.assert_close(parts.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_equals_padded_unpacked_batch():
    """The same documents as a right-padded batch (one per row) give the same numbers."""
    model = build_tiny_causal_lm(seed=3, vocab_size=VOCAB).train()
    docs = make_docs(1)
    scorer = SelfScorer(WINDOW, STRIDE, bos_token_id=BOS)
    packed = token_weighted_loss(model, packed_batch(docs), "dense:0.75", scorer)
    padded = TokenWeightCollator()([{"input_ids": d.tolist()} for d in docs])
    unpacked = token_weighted_loss(model, padded, "dense:0.75", scorer)
    torch.testing.assert_close(packed.loss, unpacked.loss, rtol=1e-5, atol=1e-6)
    for i, (w, nll) in enumerate(
        zip(split_targets(packed.weights, docs), split_targets(packed.long_nll, docs))
    ):
        n = LENGTHS[i] - 1
        torch.testing.assert_close(w, unpacked.weights[i, :n], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(nll, unpacked.long_nll[i, :n], rtol=0, atol=ATOL)


def test_document_boundaries_from_cu_seq_lens_or_positions_agree():
    docs = make_docs()
    with_pos = find_documents(packed_batch(docs, with_cu=False))
    batch = packed_batch(docs)
    del batch["position_ids"]
    with_cu = find_documents(batch)
    assert with_pos is not None and with_cu is not None
    want = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0)[:-1].tolist()])
    for found in (with_pos, with_cu):
        assert found.start.tolist() == want.tolist()
        assert found.length.tolist() == list(LENGTHS)
    assert torch.equal(with_pos.positions, with_cu.positions)
    # one document per row is not packed
    assert (
        find_documents({"input_ids": docs[0][None], "position_ids": torch.arange(28)[None]}) is None
    )


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_unlabelled_packed_batch_masks_document_starts(attention):
    """Without labels (or with a first label that is not -100) the target that would be
    predicted across a document boundary is still dropped; attention stays inside each
    document with either attention implementation."""
    model = build_tiny_causal_lm(seed=4, vocab_size=VOCAB)
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    docs = make_docs(2)
    batch = packed_batch(docs, with_cu=False)
    del batch["labels"]
    parts = token_weighted_loss(model, batch, "uniform")
    with torch.no_grad():
        want = torch.cat([full_logits_nll(model, d[None])[0] for d in docs])
    got = torch.cat(split_targets(parts.long_nll, docs))
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert int(parts.mask.sum()) == int(count_valid_targets(batch)) == sum(n - 1 for n in LENGTHS)


def test_trailing_padding_in_a_packed_row():
    """pad_to_multiple_of style padding after the last document: padding is no target and
    changes nothing else; left padding is refused."""
    model = build_tiny_causal_lm(seed=5, vocab_size=VOCAB)
    docs = make_docs(3)
    batch = packed_batch(docs, with_cu=False)
    plain = token_weighted_loss(model, batch, "uniform")
    pad = 5
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.zeros(1, pad, dtype=torch.long)], 1),
        "position_ids": torch.cat(
            [batch["position_ids"], torch.zeros(1, pad, dtype=torch.long)], 1
        ),
        "labels": torch.cat([batch["labels"], torch.full((1, pad), -100)], 1),
    }
    padded["attention_mask"] = (padded["labels"] != -100) | (padded["position_ids"] == 0)
    padded["attention_mask"] = padded["attention_mask"].long()
    padded["attention_mask"][0, -pad:] = 0
    out = token_weighted_loss(model, padded, "uniform")
    torch.testing.assert_close(out.loss, plain.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.long_nll[:, : plain.long_nll.shape[1]], plain.long_nll)
    left = dict(padded, attention_mask=padded["attention_mask"].flip(-1))
    with pytest.raises(TokenWeightError, match="padding at the end"):
        token_weighted_loss(model, left, "uniform")


@pytest.mark.parametrize("kind", ["self", "model", "precomputed"])
def test_scorers_called_directly_score_each_document_alone(kind):
    model = build_tiny_causal_lm(seed=6, vocab_size=VOCAB)
    scorer_model = build_tiny_causal_lm(seed=7, vocab_size=VOCAB)
    docs = make_docs(4)
    batch = packed_batch(docs)
    long = torch.rand(1, sum(LENGTHS) - 1, generator=torch.Generator().manual_seed(1))
    if kind == "precomputed":
        batch["short_nll"] = torch.rand(1, sum(LENGTHS) - 1)
    scorer = make_scorer(kind, scorer_model)
    got = scorer(batch, long, model=model)
    for i, (d, part, lg) in enumerate(
        zip(docs, split_targets(got, docs), split_targets(long, docs))
    ):
        if kind in ("self", "model"):
            args = (WINDOW, STRIDE, BOS, scorer_model)
            want = reference_short_nll(kind, model, d[None], lg[None], *args)[0]
        else:
            want = split_targets(batch["short_nll"], docs)[i]
        torch.testing.assert_close(part, want, rtol=0, atol=ATOL)
    # the cross-document targets get 0
    assert not got[0, torch.tensor(LENGTHS).cumsum(0)[:-1] - 1].any()


def test_completion_mask_is_respected():
    """A collator that sends ``completion_mask`` instead of folding it into the labels:
    prompt tokens are no targets, in the loss and in the step's count."""
    model = build_tiny_causal_lm(seed=8, vocab_size=VOCAB).train()
    ref = copy_model(model)
    ids = make_docs(5)[2][None]
    completion = torch.zeros_like(ids)
    completion[:, 15:] = 1
    batch = {"input_ids": ids, "completion_mask": completion}
    parts = token_weighted_loss(model, batch, "uniform")
    parts.loss.backward()
    nll = full_logits_nll(ref, ids)
    expected = nll[:, 14:].mean()
    expected.backward()
    assert int(count_valid_targets(batch)) == ids.shape[1] - 15
    torch.testing.assert_close(parts.loss, expected, rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_raise_on_nonfinite():
    model = build_tiny_causal_lm(seed=9, vocab_size=VOCAB).train()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    batch = {"input_ids": make_docs()[0][None]}
    assert token_weighted_loss(model, batch, "uniform").loss is None
    with pytest.raises(TokenWeightError, match="non-finite loss: the long-context NLL"):
        token_weighted_loss(model, batch, "uniform", raise_on_nonfinite=True)


def test_right_padded_lengths_counts_rows_and_refuses_gaps_with_the_callers_message():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    expected = [sum(1 for v in row if v) for row in mask.tolist()]
    assert right_padded_lengths(mask, "unused").tolist() == expected
    for bad in ([[0, 1, 1, 1, 1]], [[1, 0, 1, 0, 0]]):
        with pytest.raises(TokenWeightError, match=r"^mask needs right padding$"):
            right_padded_lengths(torch.tensor(bad), "mask needs right padding")


def test_packed_batches_depends_on_nothing_above_it():
    """The core module that defines which targets count imports only the package's
    constants and errors (no late import of the training collator)."""
    import ast
    import inspect

    import tokenweight.core.packed_batches as module

    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert {m for m in imported if m and m.startswith("tokenweight")} == {
        "tokenweight.infra.constants",
        "tokenweight.infra.errors",
    }
