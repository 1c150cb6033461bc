"""Helpers of the safety tests (``tests/safety/``): the shared set of inputs made with the
real commands (``build_env``; the ``env`` fixture of ``tests/safety/conftest.py``), the
``score`` command line over it, a training config file, sha256 trees of folders, and
``fails``: exit 2 with exactly one ``error: ...`` line naming what was wrong.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from helpers.corpus import CORPUS_DIR
from helpers.fixtures import save_tiny_model, save_tokenizer
from helpers.train_config import tiny_train_config
from tokenweight.cli import main

N, W = 32, 8


def build_env(root: Path) -> dict[str, Path]:
    """Tokenizers, two tiny models (different tokenizers), a user corpus, prepared and
    scored data under ``root``, all made with the real commands."""
    tok = save_tokenizer(root / "tok")
    bpe = save_tokenizer(root / "bpe", kind="bpe")
    paths = {
        "root": root,
        "tok": tok,
        "model": save_tiny_model(root / "model", tok, max_position_embeddings=256),
        "other": save_tiny_model(root / "other", bpe, max_position_embeddings=256),
        "corpus": root / "corpus",
        "prep": root / "prep",
        "prep_bpe": root / "prep_bpe",
        "scored": root / "scored",
    }
    shutil.copytree(CORPUS_DIR, paths["corpus"])
    prepare = ["prepare", str(paths["corpus"]), "--seq-len", str(N)]
    assert main([*prepare, "--tokenizer", str(tok), "--out", str(paths["prep"])]) == 0
    assert main([*prepare, "--tokenizer", str(bpe), "--out", str(paths["prep_bpe"])]) == 0
    assert main([*score_argv(paths), "--out", str(paths["scored"])]) == 0
    return paths


def score_argv(env, prep: str = "prep") -> list[str]:
    return [
        "score",
        str(env[prep]),
        "--scorer",
        str(env["model"]),
        "--window",
        str(W),
        "--shard-size",
        "4",
        "--device",
        "cpu",
    ]


def tree(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (hidden ones included), by path."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def fails(capsys, argv: list[str], *needles: str) -> str:
    rc, err = run_cli(capsys, argv)
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def train_yaml(env, folder: Path, **sections) -> Path:
    """A training config file for the tiny model on the prepared data."""
    config = tiny_train_config(
        env["model"], env["prep"], folder / "run", window=W, max_steps=4, save_steps=1, use_cpu=True
    )
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path = folder / "train.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path
