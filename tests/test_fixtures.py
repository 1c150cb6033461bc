"""Checks of ``fixtures.py`` itself, so that a broken helper fails loudly here."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fixtures import build_tiny_causal_lm, make_tokenizer, save_tiny_model


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

    from fixtures import assert_same_parameters

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
