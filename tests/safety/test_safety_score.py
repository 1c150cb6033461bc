"""Nothing lost in ``tokenweight score``: ``--out .``, a re-run verifies and re-scores
broken shards, ``--device cuda`` without a GPU leaves nothing behind."""

from __future__ import annotations

import shutil

import torch

from helpers.safety import fails, run_cli, score_argv, tree


def test_score_out_dot_overwrite_keeps_the_working_directory(env, tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path, env["root"])
    fails(capsys, [*score_argv(env), "--out", ".", "--overwrite"], "current directory")
    assert tree(tmp_path, env["root"]) == before


def test_score_rerun_verifies_and_rescores_broken_shards(env, tmp_path, capsys):
    out = tmp_path / "scored"
    shutil.copytree(env["scored"], out)
    reference = tree(out)
    shards = sorted(out.glob("shard-*.arrow"))
    data = bytearray(shards[0].read_bytes())
    data[-100:] = bytes(100)  # bytes changed in place
    shards[0].write_bytes(bytes(data))
    shards[1].unlink()  # a shard gone
    (out / "manifest.json").write_text('{"format": "tokenweight.sc')  # truncated
    rc, err = run_cli(capsys, [*score_argv(env), "--out", out])
    assert rc == 0, err
    assert tree(out) == {k.replace(str(env["scored"]), str(out)): v for k, v in reference.items()}
    # and the advice printed by train now works: a training load succeeds
    from tokenweight.data import load_scored_dataset

    assert len(load_scored_dataset(out)) == len(load_scored_dataset(env["scored"]))


def test_device_cuda_without_a_gpu_leaves_nothing_that_blocks_the_next_run(
    env, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "s"
    argv = [*score_argv(env)[:-2], "--out", out]
    fails(capsys, [*argv, "--device", "cuda"], "not available")
    assert not out.exists()
    assert run_cli(capsys, [*argv, "--device", "cpu"])[0] == 0
