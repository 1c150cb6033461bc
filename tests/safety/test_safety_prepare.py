"""Nothing lost in ``tokenweight prepare`` (and the output-folder rule it shares with
``score``): ``--overwrite`` never replaces an input or a folder holding anything else;
orphan scratch folders of killed runs are cleaned, live ones kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers.safety import N, fails, run_cli, score_argv, tree
from tokenweight.cli import main


def test_prepare_overwrite_never_replaces_its_corpus(env, tmp_path, capsys):
    before = tree(env["root"])
    base = ["prepare", env["corpus"], "--tokenizer", env["tok"], "--seq-len", N, "--overwrite"]
    fails(capsys, [*base, "--out", env["corpus"]], "overlaps the input")
    fails(capsys, [*base, "--out", env["corpus"] / "inside"], "overlaps the input")
    fails(capsys, [*base, "--out", env["root"]], "overlaps the input")  # a parent of it
    assert tree(env["root"]) == before
    assert not (env["corpus"] / "inside").exists()


def test_overwrite_refuses_folders_that_hold_anything_else(env, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = tree(tmp_path, env["root"])
    prep = ["prepare", env["corpus"], "--tokenizer", env["tok"], "--seq-len", N]
    fails(capsys, [*prep, "--out", mine, "--overwrite"], "(notes.txt)", "not a tokenweight")
    fails(capsys, [*score_argv(env), "--out", mine, "--overwrite"], "(notes.txt)")
    fails(capsys, [*score_argv(env), "--out", env["prep"], "--overwrite"], "overlaps")
    # a real score output with a user file added: not replaced either
    scored = tmp_path / "scored"
    shutil.copytree(env["scored"], scored)
    (scored / "notes.txt").write_text("mine")
    before = tree(tmp_path, env["root"])
    fails(capsys, [*score_argv(env), "--out", scored, "--overwrite"], "also holds 1 entry")
    assert tree(tmp_path, env["root"]) == before
    # an earlier output of the same command, alone, is replaced
    (scored / "notes.txt").unlink()
    assert main([*score_argv(env), "--out", str(scored), "--overwrite"]) == 0
    assert sorted(p.name for p in scored.iterdir()) == sorted(
        p.name for p in env["scored"].iterdir()
    )


def test_prepare_cleans_the_scratch_folder_of_a_killed_run(env, tmp_path, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = int(dead.stdout)  # a process that has exited
    out = tmp_path / "prep"
    scratch = tmp_path / f".prep.work-{pid}-0123abcd"
    (scratch / "tokens.arrow").parent.mkdir(parents=True)
    (scratch / "tokens.arrow").write_bytes(b"x" * 1000)
    alive = tmp_path / f".prep.work-{os.getpid()}-4567cdef"  # a run still going: kept
    alive.mkdir()
    argv = ["prepare", env["corpus"], "--tokenizer", env["tok"], "--seq-len", N, "--out", out]
    assert run_cli(capsys, argv)[0] == 0
    assert not scratch.exists()
    assert alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, alive.name])
