"""The test corpus: a few text files and a JSONL file (tiny tokenizers and models built
from it are in ``fixtures.py``)."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CORPUS_DIR = DATA_DIR / "corpus"
JSONL_FILE = DATA_DIR / "letters.jsonl"


def corpus_files() -> list[Path]:
    """The text files of the test corpus, in the order `prepare` reads a folder (sorted)."""
    return sorted(p for p in CORPUS_DIR.rglob("*.txt"))


def corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in corpus_files()]
