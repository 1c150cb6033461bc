"""A document's short NLL, weights and loss contribution are properties of the document:
the same alone, in a right-padded batch and packed into one row with other documents
(in another order), for every scheme and both window scorers.

The reference is each document run alone (a batch of one, no padding). It is itself
checked against an independent per-window loop with full logits in
``test_packed_batches.py`` and ``test_train_loss.py``; here the point is that batching
changes nothing. The schemes include top-kappa ones with many exact ties (``sparse:0.9``:
the self scorer's window-0 targets all score 0; PPMI/NPMI: ``max(., 0)``), whose tie
choice must follow the document, not its row.
"""

from __future__ import annotations

import pytest
import torch

from helpers.fixtures import build_tiny_causal_lm
from helpers.train_support import VOCAB
from tokenweight.core import scoring
from tokenweight.training.loss import LossParts, token_weighted_loss

WINDOW, BOS = 8, 1
LENGTHS = (9, 23, 40, 5, 31, 17)  # shorter than, equal to and several windows past WINDOW
SCHEMES = (
    "uniform",
    "dense:0.75",
    "sparse:0.25",
    "sparse:0.9",
    "longce:5",
    "ppmi:c=1,kappa=0.5",
    "npmi:c=1,kappa=0.5",
)
MODES = ("padded", "packed")
ATOL = 1e-4  # float32: batched and single-document forwards differ by rounding only


def make_docs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(4, VOCAB, (n,), generator=g) for n in LENGTHS]
    for d in docs:
        d[0] = BOS
    return docs


def padded_batch(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, d in enumerate(docs):
        ids[i, : len(d)], mask[i, : len(d)] = d, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_batch(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    return {"input_ids": ids, "position_ids": pos, "labels": ids.masked_fill(pos == 0, -100)}


def per_document(parts: LossParts, docs: list[torch.Tensor], mode: str) -> list[dict]:
    """Each document's short NLL, weights and ``sum(w * l)`` out of a batch's parts."""
    out = []
    start = 0
    for i, d in enumerate(docs):
        n = len(d) - 1
        if mode == "packed":
            cols, row = slice(start, start + n), 0
            start += len(d)
        else:
            cols, row = slice(0, n), i
        w, long = parts.weights[row, cols], parts.long_nll[row, cols].detach()
        short = None if parts.short_nll is None else parts.short_nll[row, cols]
        out.append({"short": short, "weights": w, "contribution": (w * long).sum()})
    return out


def run(model, batch, scheme, scorer, seed=3):
    g = torch.Generator().manual_seed(seed)
    parts = token_weighted_loss(model, batch, scheme, scorer, generator=g, raise_on_nonfinite=True)
    return parts


def differences(model, scheme, scorer) -> dict[str, dict[str, float]]:
    """Largest |batched - alone| per mode: short NLL, weights, loss contribution, and the
    batch loss against the documents' contributions over all their targets."""
    docs = make_docs()
    alone = [
        per_document(run(model, {"input_ids": d[None]}, scheme, scorer), [d], "alone")[0]
        for d in docs
    ]
    n = sum(len(d) - 1 for d in docs)
    expected_loss = sum(a["contribution"] for a in alone) / n
    result = {}
    for mode in MODES:
        order = list(range(len(docs))) if mode == "padded" else list(reversed(range(len(docs))))
        mates = [docs[i] for i in order]
        batch = padded_batch(mates) if mode == "padded" else packed_batch(mates)
        parts = run(model, batch, scheme, scorer)
        got = dict(zip(order, per_document(parts, mates, mode)))
        diff = {"short": 0.0, "weights": 0.0, "contribution": 0.0}
        for i, a in enumerate(alone):
            for key in diff:
                if a[key] is not None:
                    diff[key] = max(diff[key], float((got[i][key] - a[key]).abs().max()))
        diff["loss"] = float((parts.loss.detach() - expected_loss).abs())
        result[mode] = diff
    return result


@pytest.fixture(scope="module")
def models():
    return (
        build_tiny_causal_lm(seed=1, vocab_size=VOCAB).train(),
        build_tiny_causal_lm(seed=2, vocab_size=VOCAB),
    )


def make_scorer(kind, models):
    model, scorer_model = models
    if kind == "self":
        return scoring.SelfScorer(WINDOW, bos_token_id=BOS)
    return scoring.ModelScorer(scorer_model, WINDOW, bos_token_id=BOS, reference=model)


@pytest.mark.parametrize("kind", ["self", "model"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_batching_changes_nothing_for_a_document(models, scheme, kind):
    result = differences(models[0], scheme, make_scorer(kind, models))
    for mode, diff in result.items():
        for key, value in diff.items():
            assert value <= ATOL, f"{mode}: {key} differs by {value:.3g} from the document alone"


def test_ties_really_occur_and_follow_the_document(models):
    """The tie cases are real: a top-kappa row with more tied targets than places, whose
    choice is the same in a padded batch and alone (and differs with the step's seed)."""
    model = models[0]
    scorer = make_scorer("self", models)
    doc = make_docs()[2]
    parts = run(model, {"input_ids": doc[None]}, "sparse:0.9", scorer)
    scores = (parts.long_nll.detach() - parts.short_nll).abs()[0]
    kept = int((parts.weights[0] > 0).sum())
    assert int((scores == 0).sum()) > 0 and kept < scores.numel()
    assert 0 < int((parts.weights[0][scores == 0] > 0).sum()) < int((scores == 0).sum())
    choices = {
        tuple(
            (run(model, {"input_ids": doc[None]}, "sparse:0.9", scorer, seed=s).weights > 0)[
                0
            ].tolist()
        )
        for s in range(6)
    }
    assert len(choices) > 1  # the generator (the training step) does change the draw
