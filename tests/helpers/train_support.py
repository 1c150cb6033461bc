"""Shared helpers for the training tests (a learnable word corpus over ``fixtures``'
``"words"`` tokenizer, reference NLLs); ``tests/test_fixtures.py`` checks that the helpers themselves behave.

Everything is built offline from configs: no downloads.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.fixtures import SPECIALS, make_tokenizer

VOCAB = len(make_tokenizer())  # 4 special tokens + the words w0 .. w55
WORDS = VOCAB - len(SPECIALS)


def markov_words(n: int, rng: random.Random) -> list[str]:
    """Text with learnable structure: each word mostly determines the next one."""
    words = [rng.randrange(WORDS)]
    for _ in range(n - 1):
        prev = words[-1]
        words.append((prev * 7 + 3) % WORDS if rng.random() < 0.8 else rng.randrange(WORDS))
    return [f"w{w}" for w in words]


def write_corpus(folder: Path, docs: int = 6, words: int = 200, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for d in range(docs):
        (folder / f"doc{d}.txt").write_text(" ".join(markov_words(words, rng)) + "\n")
    return folder


def prepare(tmp: Path, model_dir: Path, seq_len: int, *, keep_tail: bool = False, **corpus):
    """A prepared dataset folder built by the real ``tokenweight prepare`` code."""
    from tokenweight.data.prepare import prepare_dataset

    corpus_dir = write_corpus(Path(tmp) / "corpus", **corpus)
    out = Path(tmp) / f"prepared-{seq_len}"
    prepare_dataset(
        [str(corpus_dir)], tokenizer=str(model_dir), seq_len=seq_len, out=out, keep_tail=keep_tail
    )
    return out


def full_logits_nll(model, input_ids, attention_mask=None) -> torch.Tensor:
    """``(B, N-1)`` NLL from the plain model's full logits and ``F.cross_entropy``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view(input_ids.shape[0], -1)
    if attention_mask is not None:
        nll = torch.where(attention_mask[:, 1:].bool(), nll, torch.zeros_like(nll))
    return nll


def window_loop_short_nll(model, input_ids, window, stride, bos=None, first_window=False):
    """Short NLL by the window rule of docs/method.md, one window at a time, full logits (``(N - window) % stride == 0``).

    Window 0 covers targets ``1 .. window-1``; with ``first_window=False`` those are left
    NaN for the caller (the self scorer uses the long NLL there).
    """
    batch, n = input_ids.shape
    assert (n - window) % stride == 0
    out = torch.full((batch, n - 1), float("nan"))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        starts = [0, *range(stride, n - window + 1, stride)] if n > window else [0]
        for a in starts:
            if a == 0 and not first_window:
                continue
            win = input_ids[:, a : a + window].clone()
            if bos is not None and a > 0:
                win[:, 0] = bos
            nll = full_logits_nll(model, win)  # (B, window - 1), target a + j + 1 at column j
            first_target = 1 if a == 0 else a + window - stride
            for t in range(first_target, a + window):
                out[:, t - 1] = nll[:, t - a - 1]
    model.train(was_training)
    return out


def reference_short_nll(kind, model, ids, long, window, stride, bos, scorer_model=None):
    """``(B, N-1)`` short NLL of scorer ``kind`` by :func:`window_loop_short_nll`: ``self``
    scores with ``model`` and takes window 0 from ``long``; ``model`` scores every target
    with ``scorer_model``."""
    if kind == "self":
        short = window_loop_short_nll(model, ids, window, stride, bos=bos)
        short[:, : window - 1] = long[:, : window - 1].detach()
        return short
    if kind == "model":
        return window_loop_short_nll(scorer_model, ids, window, stride, bos=bos, first_window=True)
    raise ValueError(f"no reference for scorer {kind!r}")


def clone_params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def copy_model(model):
    return copy.deepcopy(model)
