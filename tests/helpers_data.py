"""Shared test helpers for the data and model tests: a small corpus, tiny tokenizers and a
tiny random Llama, all built offline."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
CORPUS_DIR = DATA_DIR / "corpus"
JSONL_FILE = DATA_DIR / "letters.jsonl"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def corpus_files() -> list[Path]:
    """The text files of the test corpus, in the order `prepare` reads a folder (sorted)."""
    return sorted(p for p in CORPUS_DIR.rglob("*.txt"))


def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in corpus_files()]


def build_tokenizer(
    folder: Path, *, kind: str = "wordlevel", bos: bool = True, texts: list[str] | None = None
) -> Path:
    """Train a tiny tokenizer on ``texts`` (default: the test corpus) and save it to ``folder``.

    ``wordlevel``: whitespace/punctuation words; ``bpe``: byte-level BPE with 300 tokens.
    Specials: ``<unk>`` 0, ``<s>`` 1 (BOS, unless ``bos=False``), ``</s>`` 2, ``<pad>`` 3.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts if texts is not None else corpus_texts()
    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise ValueError(kind)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="<pad>",
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path, tokenizer_folder: Path, *, seed: int = 0, **overrides) -> Path:
    """A tiny random Llama sharing the tokenizer in ``tokenizer_folder``, saved to ``folder``
    (weights + tokenizer, i.e. a complete local model folder)."""
    from transformers import AutoTokenizer

    from conftest import build_tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    settings = dict(
        vocab_size=len(tok),
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = build_tiny_causal_lm(seed=seed, **{**settings, **overrides})
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
