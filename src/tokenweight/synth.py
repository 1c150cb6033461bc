"""Synthetic long-range data (``tokenweight synth``): controlled dependency distances.

Each sequence is BOS followed by *filler* from a sparse bigram grammar over ``words``
single-token words of a tokenizer (every word has ``branching`` possible successors, so
the filler has local structure a small model can learn), into which spans of ``span``
tokens are *copied* from exactly ``d`` tokens earlier, for each ``d`` in ``distances``.
Copies and their sources never overlap each other, so a copied token depends on the
context ``d`` tokens back and nothing else explains it; the filler after a copy continues
the grammar from the copy's last token.

The output is a prepared dataset (the same folder layout as ``tokenweight prepare``, so
``score``, ``select``, ``train`` and ``study`` take it) plus ``dependencies.json``, the side
record: one ``[row, start, length, distance]`` per copy, meaning tokens
``start .. start + length - 1`` of that row equal the tokens ``distance`` earlier. The
first token of a copy cannot be predicted (where a copy starts is random); targets
``start + 1 .. start + length - 1`` are the *dependent targets* at that distance
(:func:`dependency_map`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.errors import TokenWeightError

__all__ = [
    "DEPENDENCIES",
    "SynthConfig",
    "dependency_map",
    "generate",
    "nll_by_distance",
    "read_dependencies",
    "word_tokens",
    "write_synth",
]

DEPENDENCIES = "dependencies.json"
SYNTH_FORMAT = "tokenweight.synth-dependencies"


@dataclass
class SynthConfig:
    """Settings of a synthetic corpus; lengths and distances in tokens."""

    seq_len: int = 1024
    sequences: int = 64
    distances: list[int] = field(default_factory=lambda: [32, 128, 512])
    span: int = 8
    copies: int = 4  # per distance per sequence
    words: int = 256
    branching: int = 4
    seed: int = 0  # the sequences and copies
    grammar_seed: int = 0  # the bigram grammar (share it to continue training on new data)

    def validate(self) -> None:
        for name in ("seq_len", "sequences", "span", "copies", "words", "branching"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenWeightError(f"{name}: must be a positive integer, got {value!r}")
        if self.span < 2:
            raise TokenWeightError(f"span: a copy needs at least 2 tokens, got {self.span}")
        if not self.distances or any(int(d) < self.span for d in self.distances):
            raise TokenWeightError(
                f"distances: give distances of at least span={self.span} tokens (a copy must "
                f"not overlap its source), got {self.distances}"
            )
        if max(self.distances) + self.span >= self.seq_len:
            raise TokenWeightError(
                f"distances: {max(self.distances)} + span {self.span} does not fit in a "
                f"{self.seq_len}-token sequence after BOS; use a longer seq_len"
            )
        if self.branching > self.words:
            raise TokenWeightError(f"branching {self.branching} exceeds words {self.words}")
        room = (self.seq_len - 1) // (2 * self.span)
        if self.copies * len(self.distances) > room:
            raise TokenWeightError(
                f"copies: {self.copies} per distance x {len(self.distances)} distances do not "
                f"fit (at most {room} copies of {self.span} tokens with their sources per "
                f"{self.seq_len}-token sequence); lower copies or span"
            )


def word_tokens(tokenizer: Any, count: int, seed: int) -> np.ndarray:
    """``count`` token ids of the tokenizer that are whole alphabetic words (a leading
    space marker allowed), chosen at random with ``seed`` from all such ids."""
    special = set(tokenizer.all_special_ids)
    ids = []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = token.lstrip("Ġ▁ ")
        if i not in special and len(word) >= 2 and word.isascii() and word.isalpha():
            ids.append(i)
    if len(ids) < count:
        raise TokenWeightError(
            f"words: the tokenizer has only {len(ids)} single-token words, {count} asked"
        )
    return np.sort(np.random.default_rng(seed).choice(np.array(ids), size=count, replace=False))


def _plan_copies(
    rng: np.random.Generator, config: SynthConfig, row: int
) -> list[tuple[int, int, int, int]]:
    """Non-overlapping (row, start, length, distance) copies; sources avoid every copy.
    A row whose random placement gets stuck starts over (up to 200 times)."""
    n, span = config.seq_len, config.span
    for _row_attempt in range(200):
        busy = np.zeros(n, dtype=bool)
        busy[0] = True  # BOS
        copies = []
        for d in sorted(config.distances, reverse=True):  # long distances first
            for _ in range(config.copies):
                for _attempt in range(200):
                    start = int(rng.integers(1 + d, n - span + 1))
                    src = slice(start - d, start - d + span)
                    dst = slice(start, start + span)
                    if not busy[src].any() and not busy[dst].any():
                        busy[src] = busy[dst] = True
                        copies.append((row, start, span, d))
                        break
                else:
                    break
        if len(copies) == config.copies * len(config.distances):
            return sorted(copies, key=lambda c: c[1])
    raise TokenWeightError(
        f"could not place {config.copies} copies per distance {config.distances} in row "
        f"{row}; lower copies or span, or use a longer seq_len"
    )


def generate(
    config: SynthConfig, words: np.ndarray, bos_token_id: int | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """``(input_ids (sequences, seq_len) int32, successors (words, branching), copies)``.

    Token 0 of every row is ``bos_token_id`` (or a filler word when ``None``).
    """
    config.validate()
    grammar = np.random.default_rng(config.grammar_seed)
    words = np.asarray(words)
    w = len(words)
    succ = np.stack([grammar.choice(w, size=config.branching, replace=False) for _ in range(w)])
    rng = np.random.default_rng(config.seed)
    ids = np.empty((config.sequences, config.seq_len), dtype=np.int64)
    copies: list[tuple[int, int, int, int]] = []
    for r in range(config.sequences):
        plan = _plan_copies(rng, config, r)
        copies += plan
        source = np.zeros(config.seq_len, dtype=np.int64)  # distance of a copied token
        for _, start, length, d in plan:
            source[start : start + length] = d
        state = np.empty(config.seq_len, dtype=np.int64)  # word index of each token
        state[0] = rng.integers(w)
        for t in range(1, config.seq_len):
            if source[t]:
                state[t] = state[t - source[t]]
            else:
                state[t] = succ[state[t - 1], rng.integers(config.branching)]
        ids[r] = words[state]
        if bos_token_id is not None:
            ids[r, 0] = bos_token_id
    return ids.astype(np.int32), words[succ], copies


def dependency_map(copies: Any, rows: int, seq_len: int) -> np.ndarray:
    """``(rows, seq_len - 1)`` int: for each target (column ``t - 1``), the distance its
    token was copied from, 0 for targets without a planted dependency. The first token
    of each copy is not counted (it cannot be predicted)."""
    out = np.zeros((rows, seq_len - 1), dtype=np.int64)
    for row, start, length, d in copies:
        out[row, start : start + length - 1] = d  # targets start + 1 .. start + length - 1
    return out


def nll_by_distance(nll: np.ndarray, dep: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean NLL of the dependent targets at each distance and of all other targets.

    ``nll``, ``dep``: ``(rows, N - 1)``. Keys: ``"d=<distance>"`` and ``"other"``;
    values ``{"targets": count, "mean_nll": nats}``.
    """
    nll = np.asarray(nll, dtype=np.float64)
    out = {}
    for d in sorted(set(np.unique(dep).tolist()) - {0}):
        sel = dep == d
        out[f"d={d}"] = {"targets": int(sel.sum()), "mean_nll": float(nll[sel].mean())}
    sel = dep == 0
    out["other"] = {"targets": int(sel.sum()), "mean_nll": float(nll[sel].mean())}
    return out


def read_dependencies(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The side record of a synth folder (error if there is none)."""
    import json

    path = Path(folder) / DEPENDENCIES
    if not path.is_file():
        raise TokenWeightError(
            f"{folder} has no {DEPENDENCIES}; create it with `tokenweight synth`"
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != SYNTH_FORMAT:
        raise TokenWeightError(f"{path} is not a tokenweight synth record")
    return record


def write_synth(
    config: SynthConfig,
    tokenizer: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate the corpus and write it as a prepared dataset with ``dependencies.json``;
    returns the prepared manifest. ``overwrite`` replaces only an earlier synth output."""
    import datasets

    from tokenweight.data.prepare import MANIFEST, column_features
    from tokenweight.files import atomic_dir, atomic_write_json
    from tokenweight.models import load_tokenizer

    out = Path(out)
    config.validate()
    _check_synth_out(out, overwrite)
    tok = load_tokenizer(tokenizer)
    words = word_tokens(tok, config.words, config.grammar_seed)
    ids, successors, copies = generate(config, words, tok.bos_token_id)
    n = config.sequences
    table = {
        "input_ids": [row for row in ids],
        "doc_id": np.arange(n, dtype=np.int64),
        "row": np.arange(n, dtype=np.int64),
    }
    ds = datasets.Dataset.from_dict(
        table, features=column_features({"input_ids": "[int32]", "doc_id": "int64", "row": "int64"})
    )
    manifest = _synth_manifest(config, tok, tokenizer, sorted(ds.column_names))
    record = {
        "format": SYNTH_FORMAT,
        "config": asdict(config),
        "columns": ["row", "start", "length", "distance"],
        "copies": [list(c) for c in copies],
        "words": words.tolist(),
        "successors": successors.tolist(),
    }
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            ds.save_to_disk(str(tmp))
            atomic_write_json(tmp / MANIFEST, manifest)
            atomic_write_json(tmp / DEPENDENCIES, record)
    except FileExistsError:
        raise TokenWeightError(
            f"output folder {out} appeared meanwhile; choose another --out"
        ) from None
    return manifest


def _check_synth_out(out: Path, overwrite: bool) -> None:
    """Step: an existing ``out`` is replaced only with ``overwrite`` and only when it is an
    earlier synth output (it holds the side record)."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise TokenWeightError(f"output folder {out} exists; pass --overwrite to replace it")
        if not (out / DEPENDENCIES).is_file():
            raise TokenWeightError(
                f"{out} was not written by `tokenweight synth`; it is left alone - choose "
                "another --out"
            )


def _synth_manifest(
    config: SynthConfig, tok: Any, tokenizer: str | os.PathLike[str], columns: list[str]
) -> dict[str, Any]:
    """Step: the prepared-dataset manifest of the synthetic rows (one document per row,
    no padding, nothing dropped)."""
    from tokenweight import __version__
    from tokenweight.data.prepare import FORMAT
    from tokenweight.models import tokenizer_identity

    bos = tok.bos_token_id
    pad = next((t for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    n, tokens = config.sequences, config.sequences * config.seq_len
    return {
        "format": FORMAT,
        "format_version": 1,
        "tokenweight_version": __version__,
        "tokenizer": {**tokenizer_identity(tok), "source": str(tokenizer)},
        "seq_len": config.seq_len,
        "bos_token_id": bos,
        "pad_token_id": pad,
        "stride": config.seq_len - (bos is not None),
        "keep_tail": False,
        "seed": config.seed,
        "max_sequences": None,
        "text_field": None,
        "encoding_errors": None,
        "inputs": [{"synth": asdict(config)}],
        "counts": {
            "documents": n,
            "empty_documents": 0,
            "short_documents": 0,
            "longest_document": config.seq_len,
            "document_tokens": tokens,
            "sequences": n,
            "sequence_tokens": tokens,
            "padding_tokens": 0,
            "dropped_tokens": 0,
        },
        "columns": columns,
        "synth": asdict(config),
    }


def word_list(count: int) -> list[str]:
    """``count`` distinct pronounceable lowercase words (consonant-vowel-consonant...)."""
    import itertools

    cons, vows = "bdfgklmnprstvz", "aeiou"
    out: list[str] = []
    for n in range(1, 4):
        for parts in itertools.product(*([cons, vows] * n)):
            out.append("".join(parts))
            if len(out) == count:
                return out
    raise TokenWeightError(f"words: at most {len(out)} synthetic words, {count} asked")


def build_word_tokenizer(folder: str | os.PathLike[str], count: int) -> Path:
    """A word-level tokenizer over :func:`word_list` ``(count)`` saved to ``folder``.

    Ids: ``<unk>`` 0, ``<s>`` 1 (BOS), ``</s>`` 2, ``<pad>`` 3, then the words; text is
    split on whitespace. For models trained from scratch on synthetic data.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *word_list(count)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder
