"""Batched greedy decoding (left padding, KV cache) against a plain no-cache argmax loop."""

from __future__ import annotations

import pytest
import torch

from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
from tokenweight import TokenWeightError
from tokenweight.evaluation.generate import greedy_generate


def _reference(model, prompt, budget, eos=None):
    """Greedy decoding the slow way: full forward over the whole text at every step."""
    ids = list(prompt)
    new = []
    with torch.no_grad():
        for _ in range(budget):
            logits = model(torch.tensor([ids])).logits[0, -1]
            token = int(torch.argmax(logits))
            if token == eos:
                break
            new.append(token)
            ids.append(token)
    return new


def _prompts(tok):
    texts = [
        "The grass is green. The pass key is 12345.",
        "VAR ABCDE = 58567. VAR XQKKI = VAR ABCDE. Question: Find all variables",
        "One of",
        "Some special magic numbers are hidden within the following text. Make sure",
        "There and back again.",
    ]
    return [tok(t)["input_ids"] for t in texts]


class _EosShim:
    """The tiny tokenizer with another EOS id (to make the random model stop)."""

    def __init__(self, tok, eos):
        self._tok, self.eos_token_id, self.pad_token_id = tok, eos, tok.pad_token_id

    def decode(self, ids, **kwargs):
        return self._tok.decode(ids, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_batched_equals_reference_loop(batch_size):
    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=1)
    prompts = _prompts(tok)
    budgets = [6, 3, 8, 1, 5]
    assert len({len(p) for p in prompts}) == len(prompts)  # padding is exercised
    got = greedy_generate(model, tok, prompts, max_new_tokens=budgets, batch_size=batch_size)
    # decoded as greedy_generate documents: special tokens (here an <unk>) removed
    expected = [
        tok.decode(_reference(model, p, b), skip_special_tokens=True)
        for p, b in zip(prompts, budgets)
    ]
    assert got == expected
    assert all(len(x) > 0 for x in got)


def test_stops_at_eos():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=1)
    prompts = _prompts(tok)
    free = [_reference(model, p, 6) for p in prompts]
    # Make the third generated token of prompt 0 the EOS: its output stops after two tokens.
    eos = free[0][2]
    assert eos not in free[0][:2]
    shim = _EosShim(tok, eos)
    got = greedy_generate(model, shim, prompts, max_new_tokens=6, batch_size=5)
    assert got[0] == tok.decode(free[0][:2])
    for p, out in zip(prompts, got):
        assert out == tok.decode(_reference(model, p, 6, eos=eos))


def test_progress_callback_counts_every_prompt():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=2)
    done = []
    greedy_generate(model, tok, _prompts(tok), max_new_tokens=2, batch_size=2, on_done=done.append)
    assert sum(done) == 5 and len(done) == 3


def test_deterministic():
    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD, seed=3)
    a = greedy_generate(model, tok, _prompts(tok), max_new_tokens=4, batch_size=2)
    b = greedy_generate(model, tok, _prompts(tok), max_new_tokens=4, batch_size=3)
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 3, "batch_size": 0}, "batch_size"),
        ({"max_new_tokens": [3, 3]}, "max_new_tokens values"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_arguments(kwargs, message):
    tok = make_tokenizer("bpe", **EVAL_BPE)
    model = build_tiny_causal_lm(tokenizer=tok, init_std=EVAL_INIT_STD)
    with pytest.raises(TokenWeightError, match=message):
        greedy_generate(model, tok, _prompts(tok), **kwargs)
