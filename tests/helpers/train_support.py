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
from transformers import TrainerCallback

from helpers.fixtures import SPECIALS, make_tokenizer, save_tiny_model

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


def model_and_data(
    root: Path,
    seq_len: int,
    *,
    model_seed: int = 0,
    positions: int = 256,
    keep_tail: bool = False,
    score: dict[str, int] | None = None,
    **corpus,
) -> dict[str, Path]:
    """A tiny model over the ``"words"`` tokenizer (seeded ``model_seed``, ``positions``
    positions) saved in ``root/model`` and a corpus prepared for it (:func:`prepare`;
    ``corpus``: :func:`write_corpus`'s options); with ``score`` (``window``, ``stride``),
    also that data scored by the model itself (``root/scored``, for ``precomputed``).
    Returns the folders by name: ``model``, ``prepared`` and, with ``score``, ``scored``."""
    from tokenweight.data.score import score_dataset

    model = save_tiny_model(
        Path(root) / "model", make_tokenizer(), seed=model_seed, max_position_embeddings=positions
    )
    out = {"model": model, "prepared": prepare(root, model, seq_len, keep_tail=keep_tail, **corpus)}
    if score is not None:
        out["scored"] = Path(root) / "scored"
        score_dataset(out["prepared"], out["scored"], scorer=str(model), progress=False, **score)
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
    """Short NLL by the window rule of docs/method.md, one window at a time, full logits.

    Target ``t < window`` belongs to window 0; a later target to the window starting at
    ``min(stride * ceil((t - window + 1) / stride), n - window)``. With
    ``first_window=False`` window 0's targets are left NaN for the caller (the self
    scorer uses the long NLL there).
    """
    batch, n = input_ids.shape
    out = torch.full((batch, n - 1), float("nan"))

    def start_of(t: int) -> int:
        return 0 if t < window else min(stride * -(-(t - window + 1) // stride), n - window)

    was_training = model.training
    model.eval()
    with torch.no_grad():
        for a in sorted({start_of(t) for t in range(1, n)}):
            if a == 0 and not first_window:
                continue
            win = input_ids[:, a : a + window].clone()
            if bos is not None and a > 0:
                win[:, 0] = bos
            nll = full_logits_nll(model, win)  # (B, window - 1), target a + j + 1 at column j
            for t in range(a + 1, min(a + window, n)):
                if start_of(t) == a:
                    out[:, t - 1] = nll[:, t - a - 1]
    model.train(was_training)
    return out


def reference_short_nll(
    kind, model, ids, long, window, stride, bos, scorer_model=None, lengths=None
):
    """``(B, N-1)`` short NLL of scorer ``kind`` by :func:`window_loop_short_nll`: ``self``
    scores with ``model`` and takes window 0 from ``long``; ``model`` scores every target
    with ``scorer_model``. With ``lengths`` (real tokens per row), each row is scored
    alone on its real tokens (0 after them), as a document of its own."""
    if lengths is not None:
        out = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        for b, n in enumerate(int(x) for x in lengths):
            row = reference_short_nll(
                kind,
                model,
                ids[b : b + 1, :n],
                long[b : b + 1, : n - 1],
                window,
                stride,
                bos,
                scorer_model,
            )
            out[b, : n - 1] = row[0]
        return out
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


class SimulatedCrash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    """Raises ``error`` at the start of optimizer step ``step`` (after the previous one was
    saved): a crash, or with ``KeyboardInterrupt`` a kill."""

    def __init__(self, step: int, error: type[BaseException] = SimulatedCrash) -> None:
        self.step = step
        self.error = error

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise self.error(f"simulated crash at step {self.step}")
