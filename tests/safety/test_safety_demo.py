"""Nothing lost in ``tokenweight demo``: user files in its step folders are never removed."""

from __future__ import annotations

import json

from helpers.corpus import CORPUS_DIR
from helpers.safety import fails, tree


def test_demo_never_removes_user_files_in_its_step_folders(env, tmp_path, capsys):
    work = tmp_path / "work"
    (work / "prepared").mkdir(parents=True)
    (work / "prepared" / "draft.md").write_text("a user's file")
    settings = {
        "work_dir": str(work),
        "model": str(env["model"]),
        "corpus": str(CORPUS_DIR),
        "held_out": ["orchard.txt"],
        "seq_len": 64,
        "window": 16,
        "device": "cpu",
    }
    before = tree(tmp_path)
    fails(
        capsys,
        ["demo", *[f"{k}={json.dumps(v)}" for k, v in settings.items()]],
        "draft.md",
        "prepare",
    )
    assert tree(tmp_path) == before
