"""The training callbacks: the JSONL log after a resume, the checkpoint marker across
processes."""

from __future__ import annotations


def test_log_after_a_resume_drops_the_interrupted_lines_and_never_half_writes(
    tmp_path, monkeypatch
):
    import json
    import os
    from types import SimpleNamespace

    import pytest

    from tokenweight.training.callbacks import JsonlLogCallback

    path = tmp_path / "train_log.jsonl"
    old = "".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in range(1, 6))
    path.write_text(old)
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        JsonlLogCallback(path).on_log(None, state, None, logs={"loss": 9.0})
    assert path.read_text() == old  # the rewrite failed, the old log is whole
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.jsonl"]  # no temp left
    monkeypatch.undo()

    cb = JsonlLogCallback(path)
    cb.on_log(None, state, None, logs={"loss": 9.0})
    cb.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=4), None, {"loss": 8.0})
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 3..5 of the interrupted run replaced by the new 3, 4


def test_checkpoint_marker_waits_for_every_process(tmp_path, monkeypatch):
    """In a multi-process run the marker is written only after all processes meet, so a
    checkpoint marked complete holds every process's files."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from tokenweight.training.callbacks import CHECKPOINT_MARKER, CheckpointMarkerCallback

    events = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: events.append("barrier"))
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    import tokenweight.infra.files as files

    real = files.atomic_write_json
    monkeypatch.setattr(
        files, "atomic_write_json", lambda path, obj: (events.append("marker"), real(path, obj))
    )
    state = SimpleNamespace(global_step=7)
    for should_save in (False, True):  # another rank, then the main one
        args = SimpleNamespace(output_dir=str(tmp_path), should_save=should_save)
        CheckpointMarkerCallback().on_save(args, state, None)
    assert events == ["barrier", "barrier", "marker"]
    assert (folder / CHECKPOINT_MARKER).is_file()
