"""Synthetic long-range data (``tokenweight synth``): controlled dependency distances.

Each sequence is BOS followed by *filler*, into which content *recurs* exactly ``d``
tokens after its first appearance. Each entry of ``distances`` is a *distance class*: a
fixed distance ``d``, or a range ``[lo, hi]`` from which every copy draws its own distance
uniformly (varied distances teach a model to look things up by content rather than by a
fixed look-back). ``copies`` recurrences are planted per class and row; copies and their
sources never overlap, so a dependent token depends on the context ``d`` back and nothing
else explains it.

What recurs (``content``):

- ``spans``: ``span`` tokens of filler copied from ``d`` tokens earlier;
- ``facts``: ``[key, value]`` pairs (``span`` 2). Each of ``keys`` key words owns a group
  of ``values`` value words; a row gives each of its keys one value from the key's group,
  and a fact's value is predictable only by finding the key's earlier appearance (a
  key-value retrieval in the spirit of RULER's needle tasks). Every fact of a row has its
  own key.

The filler (``filler``): ``bigram``, a sparse grammar over the filler words (every word has
``branching`` possible successors, local structure a small model can learn; it continues
from a copied span's last token), or ``document``: each row draws uniformly from its own
``doc_words`` words, a topic vocabulary.

The output is a prepared dataset (the same folder layout as ``tokenweight prepare``, so
``score``, ``select``, ``train`` and ``study`` take it) plus ``dependencies.json``, the side
record: one ``[row, start, length, distance]`` per copy, meaning tokens
``start .. start + length - 1`` of that row equal the tokens ``distance`` earlier. The
first token of a copy cannot be predicted (where a copy starts is random); targets
``start + 1 .. start + length - 1`` are the *dependent targets* at that distance
(:func:`dependency_map`): for a fact, its value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import seed_range

__all__ = [
    "DEPENDENCIES",
    "SynthConfig",
    "class_label",
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
    # distance classes: a fixed distance, or [lo, hi] (each copy draws its distance)
    distances: list[Any] = field(default_factory=lambda: [32, 128, 512])
    span: int = 8
    copies: int = 4  # per distance class per sequence
    words: int = 256
    branching: int = 4
    # what recurs: "spans" of filler, or "facts": [key, value] pairs (span 2), where each of
    # ``keys`` key words has a group of ``values`` value words and a row picks one per key
    content: str = "spans"
    keys: int = 16
    values: int = 8
    # the filler: "bigram" (the grammar above) or "document": each row draws uniformly
    # from its own ``doc_words`` words (a topic vocabulary)
    filler: str = "bigram"
    doc_words: int = 32
    seed: int = 0  # the sequences and copies
    grammar_seed: int = 0  # the bigram grammar (share it to continue training on new data)

    def distance_classes(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` per entry of ``distances`` (``lo == hi`` for a fixed distance)."""
        if not isinstance(self.distances, list) or not self.distances:
            raise TokenWeightError(
                f"distances: a list of distances or [lo, hi] ranges, got {self.distances!r}"
            )
        out = []
        for d in self.distances:
            pair = d if isinstance(d, (list, tuple)) else [d, d]
            if (
                len(pair) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)
                or pair[0] > pair[1]
            ):
                raise TokenWeightError(
                    f"distances: {d!r} is neither a distance nor a [lo, hi] range with lo <= hi"
                )
            out.append((int(pair[0]), int(pair[1])))
        return out

    def _validate_roles(self, key: Callable[[str], str]) -> None:
        if self.content not in ("spans", "facts"):
            raise TokenWeightError(f"{key('content')}: spans or facts, got {self.content!r}")
        if self.filler not in ("bigram", "document"):
            raise TokenWeightError(f"{key('filler')}: bigram or document, got {self.filler!r}")
        n_keys, n_values = _roles(self)
        if self.content == "facts":
            if self.span != 2:
                raise TokenWeightError(
                    f"{key('span')}: facts are [key, value] pairs, set span: 2 (got {self.span})"
                )
            if self.keys < self.copies * len(self.distances):
                raise TokenWeightError(
                    f"{key('keys')}: every fact of a row needs its own key; {self.copies} copies x "
                    f"{len(self.distances)} distance classes need at least "
                    f"{self.copies * len(self.distances)} keys, got {self.keys}"
                )
        pool = self.words - n_keys - n_values
        need = self.doc_words if self.filler == "document" else self.branching
        if pool < need:
            raise TokenWeightError(
                f"{key('words')}: {self.words} words leave {pool} filler words after {n_keys} keys and "
                f"{n_values} values, fewer than "
                + (
                    f"doc_words {self.doc_words}"
                    if self.filler == "document"
                    else f"branching {self.branching}"
                )
            )

    def validate(self, key: Callable[[str], str] = str) -> None:
        """Refuse settings that cannot make a corpus; ``key(field)`` is how the user
        named the field (``--seq-len`` on the command line, ``synth.seq_len`` in a study)."""
        for name in (
            "seq_len",
            "sequences",
            "span",
            "copies",
            "words",
            "branching",
            "keys",
            "values",
            "doc_words",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenWeightError(f"{key(name)}: must be a positive integer, got {value!r}")
        for name in ("seed", "grammar_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or seed_range(value):
                raise TokenWeightError(f"{key(name)}: must be in [0, 4294967295], got {value!r}")
        if self.span < 2:
            raise TokenWeightError(
                f"{key('span')}: a copy needs at least 2 tokens, got {self.span}"
            )
        classes = self.distance_classes()
        self._validate_roles(key)
        if any(lo < self.span for lo, _ in classes):
            raise TokenWeightError(
                f"{key('distances')}: give distances of at least span={self.span} tokens (a copy must "
                f"not overlap its source), got {self.distances}"
            )
        longest = max(hi for _, hi in classes)
        if longest + self.span >= self.seq_len:
            raise TokenWeightError(
                f"{key('distances')}: {longest} + span {self.span} does not fit in a "
                f"{self.seq_len}-token sequence after BOS; use a longer seq_len"
            )
        room = (self.seq_len - 1) // (2 * self.span)
        if self.copies * len(self.distances) > room:
            raise TokenWeightError(
                f"{key('copies')}: {self.copies} per distance x {len(self.distances)} distances do not "
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
        for lo, hi in sorted(config.distance_classes(), reverse=True):  # long ones first
            for _ in range(config.copies):
                for _attempt in range(200):
                    d = lo if lo == hi else int(rng.integers(lo, hi + 1))
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


def _roles(config: SynthConfig) -> tuple[int, int]:
    """``(key words, value words)`` reserved at the start of the word list (facts only)."""
    if config.content != "facts":
        return 0, 0
    return config.keys, config.keys * config.values


def generate(
    config: SynthConfig, words: np.ndarray, bos_token_id: int | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
    """``(input_ids (sequences, seq_len) int32, successors (filler words, branching),
    copies)``; ``successors`` lists the bigram grammar of the filler words by token id.

    Token 0 of every row is ``bos_token_id`` (or a filler word when ``None``).
    """
    config.validate()
    words = np.asarray(words)
    n_keys, n_values = _roles(config)
    pool = np.arange(n_keys + n_values, len(words))  # word indices of the filler
    grammar = np.random.default_rng(config.grammar_seed)
    succ = np.stack(
        [pool[grammar.choice(len(pool), size=config.branching, replace=False)] for _ in pool]
    )  # successors of pool[i], as word indices
    successors = np.zeros((len(words), config.branching), dtype=np.int64)
    successors[pool] = succ  # the same, looked up by word index
    rng = np.random.default_rng(config.seed)
    ids = np.empty((config.sequences, config.seq_len), dtype=np.int64)
    copies: list[tuple[int, int, int, int]] = []
    for r in range(config.sequences):
        plan = _plan_copies(rng, config, r)
        copies += plan
        if config.content == "facts":
            zeros = np.zeros(config.seq_len, dtype=np.int64)
            state = _filler(rng, config, pool, successors, zeros)
            _write_facts(rng, config, state, plan)
        else:
            source = np.zeros(config.seq_len, dtype=np.int64)  # distance of a copied token
            for _, start, length, d in plan:
                source[start : start + length] = d
            state = _filler(rng, config, pool, successors, source)
        ids[r] = words[state]
        if bos_token_id is not None:
            ids[r, 0] = bos_token_id
    return ids.astype(np.int32), words[succ], copies


def _filler(
    rng: np.random.Generator,
    config: SynthConfig,
    pool: np.ndarray,
    successors: np.ndarray,
    source: np.ndarray,
) -> np.ndarray:
    """Word indices of one row: filler (the bigram grammar ``successors``, by word index,
    or uniform draws from the row's own ``doc_words`` words of ``pool``), where
    ``source[t] > 0`` copies the word that many tokens back; the grammar continues from a
    copy's last word."""
    n = config.seq_len
    state = np.empty(n, dtype=np.int64)
    document = config.filler == "document"
    vocab = rng.choice(pool, size=config.doc_words, replace=False) if document else pool
    state[0] = vocab[rng.integers(len(vocab))]
    for t in range(1, n):
        if source[t]:
            state[t] = state[t - source[t]]
        elif document:
            state[t] = vocab[rng.integers(len(vocab))]
        else:
            state[t] = successors[state[t - 1], rng.integers(config.branching)]
    return state


def _write_facts(
    rng: np.random.Generator,
    config: SynthConfig,
    state: np.ndarray,
    plan: list[tuple[int, int, int, int]],
) -> None:
    """Write one fact ``[key, value]`` per planned copy at its source and again at the
    copy: every copy of a row has its own key; the row's value of key ``k`` is one of the
    ``values`` words of ``k``'s group."""
    keys = rng.choice(config.keys, size=len(plan), replace=False)
    for k, (_, start, _, d) in zip(keys, plan):
        value = config.keys + int(k) * config.values + int(rng.integers(config.values))
        for at in (start - d, start):
            state[at], state[at + 1] = int(k), value


def dependency_map(copies: Any, rows: int, seq_len: int) -> np.ndarray:
    """``(rows, seq_len - 1)`` int: for each target (column ``t - 1``), the distance its
    token was copied from, 0 for targets without a planted dependency. The first token
    of each copy is not counted (it cannot be predicted)."""
    out = np.zeros((rows, seq_len - 1), dtype=np.int64)
    for row, start, length, d in copies:
        out[row, start : start + length - 1] = d  # targets start + 1 .. start + length - 1
    return out


def class_label(lo: int, hi: int) -> str:
    """``"48"`` for a fixed distance, ``"8-120"`` for a range."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


def nll_by_distance(
    nll: np.ndarray, dep: np.ndarray, classes: Sequence[tuple[int, int]] | None = None
) -> dict[str, dict[str, float]]:
    """Mean NLL of the dependent targets in each distance class and of all other targets.

    ``nll``, ``dep``: ``(rows, N - 1)``; ``classes``: ``(lo, hi)`` pairs
    (:meth:`SynthConfig.distance_classes`), by default every distance in ``dep`` alone.
    Keys: ``"d=<class>"`` and ``"other"``; values ``{"targets": count, "mean_nll": nats}``.
    """
    nll = np.asarray(nll, dtype=np.float64)
    if classes is None:
        classes = [(d, d) for d in sorted(set(np.unique(dep).tolist()) - {0})]
    out = {}
    for lo, hi in classes:
        sel = (dep >= lo) & (dep <= hi)
        out[f"d={class_label(lo, hi)}"] = {
            "targets": int(sel.sum()),
            "mean_nll": float(nll[sel].mean()) if sel.any() else float("nan"),
        }
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
    from tokenweight.data.prepare import MANIFEST
    from tokenweight.infra.files import atomic_dir, atomic_write_json
    from tokenweight.infra.folder_lock import output_lock

    out = Path(out)
    config.validate()
    _check_synth_out(out, overwrite)
    with output_lock(out, "--out"):  # one writer per folder, from here to the end
        _check_synth_out(out, overwrite)  # again: another run may have written
        ds, manifest, record = _generate_rows(config, tokenizer)
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


def _generate_rows(
    config: SynthConfig, tokenizer: str | os.PathLike[str]
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Step: the rows (a ``datasets.Dataset``), their prepared manifest (with its
    fingerprint) and the side record of every copy."""
    import datasets

    from tokenweight.data.manifest import FINGERPRINT
    from tokenweight.data.prepare import column_features
    from tokenweight.data.store import rows_fingerprint
    from tokenweight.infra.models import load_tokenizer

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
    manifest[FINGERPRINT] = rows_fingerprint(ds)
    record = {
        "format": SYNTH_FORMAT,
        "config": asdict(config),
        "columns": ["row", "start", "length", "distance"],
        "copies": [list(c) for c in copies],
        "words": words.tolist(),
        "successors": successors.tolist(),
    }
    return ds, manifest, record


def _check_synth_out(out: Path, overwrite: bool) -> None:
    """Step: an existing ``out`` is replaced only with ``overwrite`` and only when it is an
    earlier synth output (it holds the side record); the output-folder rule of every
    command (a folder, apart from the current directory) holds too."""
    from tokenweight.infra.files import check_output_dir

    check_output_dir(out, "tokenweight synth output", markers=(DEPENDENCIES,))
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
    from tokenweight.infra.models import tokenizer_identity

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
