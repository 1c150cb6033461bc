"""Checks of the helpers in ``tests/helpers/`` themselves (``fixtures``, ``eval_support``,
``train_support``), so that a broken helper fails loudly here."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer, save_tiny_model
from helpers.train_support import VOCAB, full_logits_nll, window_loop_short_nll


@pytest.mark.parametrize("kind", ["words", "wordlevel", "bpe"])
def test_every_kind_has_the_same_special_ids(kind):
    tok = make_tokenizer(kind)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert make_tokenizer(kind, bos=False).bos_token_id is None


def test_words_tokenizer_round_trip():
    tok = make_tokenizer()
    ids = tok("w0 w5 w55")["input_ids"]
    assert ids == [4, 9, 59]
    assert len(tok) == 60


def test_bpe_encodes_any_text_and_add_bos_prepends_bos():
    tok = make_tokenizer("bpe")
    text = "Zebras quizzed 90210 ~ unseen words."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and 0 not in ids  # no <unk>
    with_bos = make_tokenizer("bpe", add_bos=True)(text)["input_ids"]
    assert with_bos == [1, *ids]


def test_model_takes_the_tokenizer_ids_and_init_std_widens_weights():
    tok = make_tokenizer()
    model = build_tiny_causal_lm(tokenizer=tok)
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == 3
    assert not model.training
    wide = build_tiny_causal_lm(tokenizer=tok, init_std=0.3)
    assert (
        wide.model.layers[0].mlp.up_proj.weight.std()
        > 5 * model.model.layers[0].mlp.up_proj.weight.std()
    )
    again = build_tiny_causal_lm(tokenizer=tok)
    for a, b in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_saved_model_folder_loads(tmp_path):
    folder = save_tiny_model(tmp_path / "m", make_tokenizer(), seed=1)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == model.config.vocab_size == 60
    built = build_tiny_causal_lm(tokenizer=tok, seed=1)
    for a, b in zip(model.parameters(), built.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameter_comparison_fails_on_a_difference_and_on_an_untrained_run():
    import pytest
    import torch

    from helpers.distributed import assert_same_parameters

    start = {"w": torch.zeros(3)}
    ref = {"w": torch.tensor([0.5, 0.0, 0.0])}
    tol = dict(rtol=1e-5, atol=1e-6)
    assert assert_same_parameters({"w": ref["w"].clone()}, ref, start, tol, "ok") == 0.0
    with pytest.raises(AssertionError):
        assert_same_parameters({"w": ref["w"] + 1e-3}, ref, start, tol, "off")
    with pytest.raises(AssertionError):  # equal, but nothing trained
        assert_same_parameters(dict(start), dict(start), start, tol, "still")
    with pytest.raises(AssertionError):  # a missing tensor
        assert_same_parameters({}, ref, start, tol, "missing")


# ---------------------------------------------------------------- eval_support
def test_tokenizer_round_trips_text():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    text = "VAR QWERT = 90210. One of the special magic uuids for x-y is: 0f9e-aa."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges were learned


def test_bos_tokenizer_prepends_bos():
    tok = make_tokenizer("bpe", **EVAL_BPE, add_bos=True)
    ids = tok("The grass is green.")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert ids[1:] == make_tokenizer("bpe", **EVAL_BPE)("The grass is green.")["input_ids"]


def test_tiny_model_predictions_depend_on_context():
    model = build_tiny_causal_lm(
        tokenizer=make_tokenizer("bpe", **EVAL_BPE), init_std=EVAL_INIT_STD
    )
    a = model(torch.tensor([[5, 6, 7, 8]])).logits[0, -1]
    b = model(torch.tensor([[9, 6, 7, 8]])).logits[0, -1]
    assert not torch.allclose(a, b, atol=1e-3)


# ---------------------------------------------------------------- train_support
def test_window_loop_matches_full_context_inside_window_zero():
    model = build_tiny_causal_lm(vocab_size=VOCAB)
    ids = torch.randint(4, 60, (2, 24), generator=torch.Generator().manual_seed(0))
    short = window_loop_short_nll(model, ids, window=8, stride=4, first_window=True)
    with torch.no_grad():
        long = full_logits_nll(model, ids)
    # targets 1..7 see the same context in both; later ones see less and differ
    torch.testing.assert_close(short[:, :7], long[:, :7], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(short[:, 8:], long[:, 8:], atol=1e-3)
    assert torch.isfinite(short).all()
