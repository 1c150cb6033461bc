"""The catalogue of broken inputs: ONE table (``CATALOGUE``, case name -> builder) of
every command's inputs that must each end in ``error: ...`` and exit 2 with every file
unchanged. A new refusal of any command is one entry here; the per-command safety tests
are the other ``test_safety_*.py`` files of this folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers.corpus import CORPUS_DIR
from helpers.safety import N, W, run_cli, score_argv, train_yaml, tree


def _copy(env, name: str, work: Path) -> Path:
    target = work / name
    shutil.copytree(env[name], target)
    return target


def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _score_copy(env, work: Path) -> list:
    """``tokenweight score`` on a copy of the prepared data (to be broken by the case)."""
    return [*score_argv(env)[:1], work / "prep", *score_argv(env)[2:], "--out", work / "s"]


def _case_corrupt_prepared_manifest(env, work):
    _truncate(_copy(env, "prep", work) / "manifest.json")
    return _score_copy(env, work), "manifest.json"


def _case_corrupt_prepared_arrow(env, work):
    for f in _copy(env, "prep", work).glob("data-*.arrow"):
        _truncate(f, 300)
    return _score_copy(env, work), "prepare it again"


def _case_corrupt_run_json(env, work):
    scored = _copy(env, "scored", work)
    _truncate(scored / "run.json")
    return [*score_argv(env), "--out", scored], "run.json"


def _case_corrupt_scored_manifest_in_train(env, work):
    scored = _copy(env, "scored", work)
    _truncate(scored / "manifest.json")
    config = train_yaml(env, work, data={"path": str(scored)}, scorer={"kind": "precomputed"})
    return ["train", config], "manifest.json"


def _case_corrupt_scored_shard_in_train(env, work):
    scored = _copy(env, "scored", work)
    shard = sorted(scored.glob("shard-*.arrow"))[0]
    _truncate(shard, 100)
    config = train_yaml(env, work, data={"path": str(scored)}, scorer={"kind": "precomputed"})
    return ["train", config], "rerun `tokenweight score`"


def _case_eval_corrupt_manifest(env, work):
    prep = _copy(env, "prep", work)
    _truncate(prep / "manifest.json")
    return ["eval", env["model"], "--data", prep, "--tasks", "ppl", "--out", work / "e"], "manifest"


def _yaml(work: Path, name: str, data: bytes) -> Path:
    path = work / name
    path.write_bytes(data)
    return path


def _passage(work: Path) -> Path:
    return _yaml(work, "passage.txt", (CORPUS_DIR / "orchard.txt").read_bytes())


CATALOGUE = {
    "prepare --out .": lambda env, work: (
        ["prepare", env["corpus"], "--tokenizer", env["tok"], "--seq-len", N, "--out", "."],
        "current directory",
    ),
    "prepare --out CORPUS --overwrite": lambda env, work: (
        [
            "prepare",
            env["corpus"],
            "--tokenizer",
            env["tok"],
            "--seq-len",
            N,
            "--out",
            env["corpus"],
            "--overwrite",
        ],
        "overlaps the input",
    ),
    "prepare --out TOKENIZER --overwrite": lambda env, work: (
        [
            "prepare",
            env["corpus"],
            "--tokenizer",
            env["tok"],
            "--seq-len",
            N,
            "--out",
            env["tok"],
            "--overwrite",
        ],
        "overlaps the input",
    ),
    "score --out . --overwrite": lambda env, work: (
        [*score_argv(env), "--out", ".", "--overwrite"],
        "current directory",
    ),
    "score --out PREPARED --overwrite": lambda env, work: (
        [*score_argv(env), "--out", env["prep"], "--overwrite"],
        "overlaps the input",
    ),
    "score --window >= seq_len": lambda env, work: (
        [*score_argv(env)[:4], "--window", N, "--out", work / "s"],
        "covers",
    ),
    "score corrupt prepared manifest.json": _case_corrupt_prepared_manifest,
    "score corrupt prepared Arrow file": _case_corrupt_prepared_arrow,
    "score corrupt run.json": _case_corrupt_run_json,
    "train corrupt scored manifest.json": _case_corrupt_scored_manifest_in_train,
    "train corrupt scored shard": _case_corrupt_scored_shard_in_train,
    "train binary YAML": lambda env, work: (
        ["train", _yaml(work, "c.yaml", bytes(range(256)))],
        "c.yaml",
    ),
    "train non-UTF-8 YAML": lambda env, work: (
        ["train", _yaml(work, "c.yaml", "scheme: caf\xe9\n".encode("latin-1"))],
        "not a UTF-8",
    ),
    "train duplicate key": lambda env, work: (
        ["train", _yaml(work, "c.yaml", b"scheme: dense:0.5\nscheme: uniform\n")],
        "'scheme' is given twice",
    ),
    "train train.seed=-5": lambda env, work: (
        ["train", train_yaml(env, work), "train.seed=-5"],
        "train.seed",
    ),
    "train scorer.model with another tokenizer": lambda env, work: (
        [
            "train",
            train_yaml(
                env, work, scorer={"kind": "model", "model": str(env["other"]), "window": W}
            ),
        ],
        "does not share the trained model's tokenizer",
    ),
    "train scheme=longce:-1": lambda env, work: (
        ["train", train_yaml(env, work), "scheme=longce:-1"],
        "truncation gamma -1",
    ),
    "train output_dir=model.source": lambda env, work: (
        ["train", train_yaml(env, work), f"train.output_dir={env['model']}"],
        "overlaps the input",
    ),
    "train output_dir=data.path": lambda env, work: (
        ["train", train_yaml(env, work), f"train.output_dir={env['prep']}"],
        "overlaps the input",
    ),
    "eval --seq-len 0": lambda env, work: (
        ["eval", env["model"], "--data", env["corpus"], "--seq-len", 0, "--out", work / "e"],
        "--seq-len",
    ),
    "eval --data prepared with another tokenizer": lambda env, work: (
        ["eval", env["model"], "--data", env["prep_bpe"], "--tasks", "ppl", "--out", work / "e"],
        "tokenizer differs",
    ),
    "eval corrupt prepared manifest.json": _case_eval_corrupt_manifest,
    "eval --out a file": lambda env, work: (
        ["eval", env["model"], "--tasks", "passkey", "--out", _passage(work)],
        "not a folder",
    ),
    "eval --device cuda without a GPU": lambda env, work: (
        [
            "eval",
            env["model"],
            "--tasks",
            "passkey",
            "--lengths",
            64,
            "--device",
            "cuda",
            "--out",
            work / "e",
        ],
        "not available",
    ),
    "inspect --out a file": lambda env, work: (
        ["inspect", env["model"], _passage(work), "--window", W, "--out", _passage(work)],
        "not a folder",
    ),
    "inspect --offset -1": lambda env, work: (
        ["inspect", env["model"], _passage(work), "--window", W, "--offset", -1],
        "--offset",
    ),
    "inspect --short-model with another tokenizer": lambda env, work: (
        ["inspect", env["model"], _passage(work), "--window", W, "--short-model", env["other"]],
        "tokenizer",
    ),
    "inspect --window >= passage": lambda env, work: (
        ["inspect", env["model"], _passage(work), "--window", 64, "--max-tokens", 64],
        "covers",
    ),
    "inspect --device cuda without a GPU": lambda env, work: (
        ["inspect", env["model"], _passage(work), "--window", W, "--device", "cuda"],
        "not available",
    ),
    "weights --scheme longce:0": lambda env, work: (
        ["weights", "--scheme", "longce:0"],
        "truncation gamma 0",
    ),
    "demo binary settings file": lambda env, work: (
        ["demo", _yaml(work, "s.yaml", bytes(range(256)))],
        "s.yaml",
    ),
    "demo duplicate key": lambda env, work: (
        ["demo", _yaml(work, "s.yaml", b"seq_len: 64\nseq_len: 128\n"), "--print-config"],
        "'seq_len' is given twice",
    ),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_broken_input_catalogue(case, env, tmp_path, capsys, monkeypatch):
    """Each broken input: exit 2, one ``error:`` line, no traceback, every file (inputs
    and anything already in the working directory) byte-identical afterwards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    work = tmp_path / "work"
    work.mkdir()
    (work / "user-notes.txt").write_text("not the tool's")
    argv, needle = CATALOGUE[case](env, work)
    monkeypatch.chdir(work)
    before = tree(work, env["root"])
    rc, err = run_cli(capsys, [str(a) for a in argv])
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0], err
    assert tree(work, env["root"]) == before
