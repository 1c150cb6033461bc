"""Short-context scoring against an independent per-window loop over full logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.fixtures import build_tiny_causal_lm
from tokenweight import TokenWeightError
from tokenweight.core.scoring import (
    ModelScorer,
    PrecomputedScorer,
    Scorer,
    SelfScorer,
    build_scorer,
    plan_batch_windows,
    plan_stride,
    plan_windows,
    score_windows,
    short_context_nll,
)

VOCAB = 97


SHAPE = dict(vocab_size=VOCAB, max_position_embeddings=512, tie_word_embeddings=False)


def context_start(t: int, n: int, window: int, stride: int) -> int:
    """The window rule of docs/method.md, written per target: the start of the window that predicts target t."""
    if t < window:
        return 0
    return min(stride * math.ceil((t - window + 1) / stride), n - window)


def reference_short_nll(model, ids, window, stride, bos=None):
    """One window at a time through the plain model, full logits, F.cross_entropy."""
    batch, n = ids.shape
    out = torch.zeros(batch, n - 1)
    starts = {context_start(t, n, window, stride) for t in range(1, n)}
    with torch.no_grad():
        for b in range(batch):
            for a in starts:
                win = ids[b, a : a + window].clone()
                if bos is not None and a > 0:
                    win[0] = bos
                logits = model(win[None]).logits[0].float()
                nll = F.cross_entropy(logits[:-1], win[1:], reduction="none")
                for t in range(a + 1, min(a + window, n)):
                    if context_start(t, n, window, stride) == a:
                        out[b, t - 1] = nll[t - a - 1]
    return out


def full_nll(model, ids):
    with torch.no_grad():
        logits = model(ids).logits.float()
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).view(ids.shape[0], -1)


@pytest.fixture(scope="module")
def model():
    return build_tiny_causal_lm(**SHAPE)


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, VOCAB, (3, 40), generator=g)


@pytest.mark.parametrize("stride", [7, 4, 8, 11])  # 28 % 7 == 28 % 4 == 0; 8, 11 don't divide
@pytest.mark.parametrize("bos", [None, 1])
@pytest.mark.parametrize("wpb", [1, 5, 1000])
def test_matches_per_window_loop(model, ids, stride, bos, wpb):
    expected = reference_short_nll(model, ids, 12, stride, bos)
    got = short_context_nll(
        model, ids, window=12, stride=stride, bos_token_id=bos, windows_per_batch=wpb
    )
    assert got.shape == (3, 39) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_default_stride_matches_loop(model, ids):
    stride = plan_stride(40, 12)
    expected = reference_short_nll(model, ids, 12, stride, 1)
    torch.testing.assert_close(
        short_context_nll(model, ids, window=12, bos_token_id=1), expected, atol=1e-4, rtol=1e-4
    )


def test_window_zero_targets_equal_full_context(model, ids):
    short = short_context_nll(model, ids, window=12, stride=5)
    torch.testing.assert_close(short[:, :11], full_nll(model, ids)[:, :11], atol=1e-4, rtol=1e-4)


def test_sequence_not_longer_than_window_equals_long(model, ids):
    short = short_context_nll(model, ids[:, :12], window=12)
    torch.testing.assert_close(short, full_nll(model, ids[:, :12]), atol=1e-4, rtol=1e-4)
    short = short_context_nll(model, ids[:, :9], window=12)
    torch.testing.assert_close(short, full_nll(model, ids[:, :9]), atol=1e-4, rtol=1e-4)


def test_first_window_false_leaves_nan_for_caller(model, ids):
    short = short_context_nll(model, ids, window=12, stride=7, first_window=False)
    assert torch.isnan(short[:, :11]).all()
    expected = reference_short_nll(model, ids, 12, 7)
    torch.testing.assert_close(short[:, 11:], expected[:, 11:], atol=1e-4, rtol=1e-4)


def test_right_padding_matches_unpadded_rows(model, ids):
    lengths = [40, 31, 17]
    mask = (torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]).long()
    padded = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    got = short_context_nll(model, padded, window=12, stride=7, attention_mask=mask)
    for b, n in enumerate(lengths):
        assert (got[b, n - 1 :] == 0).all()
    # every row is planned on its own length: its values are those of the row alone
    for b, n in enumerate(lengths):
        alone = reference_short_nll(model, ids[b : b + 1, :n], 12, 7)[0]
        torch.testing.assert_close(got[b, : n - 1], alone, atol=1e-4, rtol=1e-4)
    # the same with the planned stride (each row's own plan_stride) and BOS
    got = short_context_nll(model, padded, window=12, bos_token_id=1, attention_mask=mask)
    for b, n in enumerate(lengths):
        alone = reference_short_nll(model, ids[b : b + 1, :n], 12, plan_stride(n, 12), 1)[0]
        torch.testing.assert_close(got[b, : n - 1], alone, atol=1e-4, rtol=1e-4)


def test_model_calls_follow_each_rows_plan_and_pad_to_an_agreed_count(model, ids):
    """Padded rows need fewer windows (their own plan); ``score_windows`` pads the work
    with calls to a given count (what processes of a sharded run agree on)."""
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        short_context_nll(model, ids, window=12, stride=7, windows_per_batch=2)
        full = len(calls)
        calls.clear()
        mask = torch.ones_like(ids)
        mask[:, 15:] = 0
        short_context_nll(model, ids, window=12, stride=7, windows_per_batch=2, attention_mask=mask)
        padded = len(calls)
        plan = plan_batch_windows([15, 15, 15], 12, 7)
        assert padded == plan.model_calls(2) == math.ceil(3 * 2 / 2) < full
        calls.clear()
        out = score_windows(model, ids, plan.windows, windows_per_batch=2, model_calls=full)
        assert len(calls) == full
        expected = short_context_nll(model, ids[:, :15], window=12, stride=7)
        torch.testing.assert_close(out[:, :14], expected, atol=1e-5, rtol=1e-5)
        assert torch.isnan(out[:, 14:]).all()  # no window of the plan reaches them
    finally:
        handle.remove()


def test_batch_plan_lists_each_rows_own_windows():
    plan = plan_batch_windows([40, 17, 9, 1], 12, first_window=False)
    for row, n in enumerate([40, 17, 9]):
        alone = plan_windows(n, 12)
        got = plan.row_windows(row)
        assert [w.start for w in got] == list(alone.starts[1:])
        covered = sorted(t for w in got for t in w.targets)
        assert covered == list(range(12, n))  # every target past window 0, once
    assert plan.rows[3] is None and plan.row_windows(3) == ()
    full = plan_batch_windows([9], 12)
    assert [(w.start, w.length, w.first) for w in full.windows] == [(0, 9, 1)]


def test_left_padding_is_refused(model, ids):
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with pytest.raises(TokenWeightError, match="right padding"):
        short_context_nll(model, ids, window=12, attention_mask=mask)


# ------------------------------------------------------------------ plans
@pytest.mark.parametrize(
    ("n", "w", "expected"),
    [(32768, 8192, 6144), (8192, 1024, 896), (2048, 512, 384), (4096, 1024, 768)],
)
def test_plan_stride_paper_values(n, w, expected):
    assert plan_stride(n, w) == expected


@pytest.mark.parametrize("n", [13, 20, 40, 41, 100, 257, 1000, 4097])
@pytest.mark.parametrize("w", [2, 3, 12, 64])
def test_plan_covers_every_target_with_bounded_context(n, w):
    stride = plan_stride(n, w)
    plan = plan_windows(n, w, stride)
    owner = {}
    for k, (a, c) in enumerate(zip(plan.starts, plan.counts)):
        end = min(a + w, n)
        targets = range(1, end) if k == 0 else range(end - c, end)
        for t in targets:
            assert t not in owner, "target predicted twice"
            owner[t] = a
            if t >= w:
                assert w - stride <= t - a <= w - 1
    assert sorted(owner) == list(range(1, n))
    if n > w:
        ideal = w * (1 - w / n)
        assert stride <= max(1, ideal) + 1e-9
        # cost: no more later windows than the ideal stride would need (+1 at most)
        assert plan.num_windows - 1 <= math.ceil((n - w) / max(1, math.floor(ideal))) + 1
        if (n - w) % stride == 0:
            assert plan.starts == tuple(range(0, n - w + 1, stride))


def test_bad_window_and_stride():
    with pytest.raises(TokenWeightError, match="window must be an integer >= 2"):
        plan_windows(10, 1)
    with pytest.raises(TokenWeightError, match=r"stride must be an integer in \[1, window - 1\]"):
        plan_windows(40, 12, 12)
    with pytest.raises(TokenWeightError, match="stride"):
        plan_windows(40, 12, 0)


# ------------------------------------------------------------------ scorers
def test_self_scorer_reuses_long_nll_and_leaves_no_gradient(ids):
    model = build_tiny_causal_lm(seed=1, **SHAPE).train()
    long = full_nll(model.eval(), ids)
    model.train()
    scorer = SelfScorer(window=12, stride=7)
    short = scorer({"input_ids": ids}, long, model=model)
    assert model.training, "training mode must be restored"
    assert not short.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(short[:, :11], long[:, :11])  # window 0: score exactly 0
    expected = reference_short_nll(model.eval(), ids, 12, 7)
    torch.testing.assert_close(short[:, 11:], expected[:, 11:], atol=1e-4, rtol=1e-4)


def test_self_scorer_short_sequences_equal_long(model, ids):
    long = full_nll(model, ids[:, :10])
    short = SelfScorer(window=12)({"input_ids": ids[:, :10]}, long, model=model)
    assert torch.equal(short, long)


def test_model_scorer_with_smaller_model(model, ids):
    small = build_tiny_causal_lm(
        seed=5, **SHAPE, num_hidden_layers=1, hidden_size=16, intermediate_size=32
    )
    scorer = ModelScorer(small, window=12, stride=7, reference=model)
    long = full_nll(model, ids)
    got = scorer({"input_ids": ids}, long, model=model)
    torch.testing.assert_close(got, reference_short_nll(small, ids, 12, 7), atol=1e-4, rtol=1e-4)
    assert all(not p.requires_grad for p in small.parameters())


def test_model_scorer_refuses_other_vocabulary_before_compute(model, ids):
    other = build_tiny_causal_lm(seed=5, **{**SHAPE, "vocab_size": VOCAB + 3})
    calls = []
    other.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(TokenWeightError, match=rf"vocabulary size {VOCAB + 3} vs {VOCAB}"):
        ModelScorer(other, window=12, reference=model)
    scorer = ModelScorer(other, window=12)
    with pytest.raises(TokenWeightError, match="does not share the trained model's tokenizer"):
        scorer({"input_ids": ids}, full_nll(model, ids), model=model)
    assert calls == []


def test_model_scorer_refuses_other_special_tokens(model):
    other = build_tiny_causal_lm(seed=5, **SHAPE)
    other.config.bos_token_id = 7
    with pytest.raises(TokenWeightError, match="bos_token_id 7 vs 1"):
        ModelScorer(other, window=12, reference=model.config)


def _wordlevel_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["<unk>", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def test_model_scorer_compares_tokenizer_fingerprints_when_both_are_known(model):
    words = [f"w{i}" for i in range(VOCAB - 3)]
    swapped = [words[1], words[0], *words[2:]]  # same size and special tokens, other ids
    tok, same, other = (_wordlevel_tokenizer(w) for w in (words, list(words), swapped))
    assert len(tok) == len(other) == VOCAB
    small = build_tiny_causal_lm(
        seed=5, **SHAPE, num_hidden_layers=1, hidden_size=16, intermediate_size=32
    )
    calls = []
    small.register_forward_pre_hook(lambda *a: calls.append(1))
    ModelScorer(small, window=12, tokenizer=tok, reference=model, reference_tokenizer=same)
    # sizes and special ids agree, so only the fingerprint (vocabulary hash) tells them apart
    ModelScorer(small, window=12, tokenizer=tok, reference=model)
    with pytest.raises(TokenWeightError, match="vocabulary hash"):
        ModelScorer(small, window=12, tokenizer=tok, reference=model, reference_tokenizer=other)
    assert calls == []


def test_scorers_satisfy_the_scorer_protocol(model):
    small = build_tiny_causal_lm(
        seed=5, **SHAPE, num_hidden_layers=1, hidden_size=16, intermediate_size=32
    )
    for scorer in (SelfScorer(window=12), ModelScorer(small, window=12), PrecomputedScorer()):
        assert isinstance(scorer, Scorer)
    assert isinstance(lambda batch, long_nll, model=None: long_nll, Scorer)
    assert not isinstance(object(), Scorer)
    assert build_scorer("none") is None


def test_precomputed_scorer(ids):
    long = torch.rand(3, 39)
    stored = torch.rand(3, 39, dtype=torch.float16)
    got = PrecomputedScorer()({"input_ids": ids, "short_nll": stored}, long)
    assert got.dtype == torch.float32 and torch.equal(got, stored.float())
    with pytest.raises(TokenWeightError, match="no 'short_nll'"):
        PrecomputedScorer()({"input_ids": ids}, long)
    with pytest.raises(TokenWeightError, match="another sequence length"):
        PrecomputedScorer()({"input_ids": ids, "short_nll": stored[:, :5]}, long)


def test_build_scorer():
    assert isinstance(build_scorer("self", window=12), SelfScorer)
    assert isinstance(build_scorer("precomputed"), PrecomputedScorer)
    assert build_scorer("none") is None
    with pytest.raises(TokenWeightError, match="unknown scorer 'frozen2'"):
        build_scorer("frozen2")
    with pytest.raises(TokenWeightError, match="needs a window"):
        build_scorer("self")
