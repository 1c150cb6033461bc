"""A run folder you can trust: one writer per output folder (the lock), honest resumes
(refused when settings changed; every segment recorded when allowed), and the content
fingerprint of prepared and scored data."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import TrainerCallback

from helpers.train_config import tiny_train_config
from helpers.train_support import model_and_data, prepare
from tokenweight.cli import main
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.folder_lock import acquire, lock_file, output_lock
from tokenweight.training.config import load_config
from tokenweight.training.run import train
from tokenweight.training.run_record import (
    FREE_SETTINGS,
    describe_segments,
    next_segments,
    run_settings,
)

SEQ, WINDOW = 32, 8
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-folder")
    score = {"window": WINDOW}
    return {
        "root": root,
        **model_and_data(root, SEQ, positions=128, score=score, docs=4, words=120),
    }


def config_file(assets, folder: Path, **train) -> Path:
    import yaml

    config = tiny_train_config(
        assets["model"],
        assets["prepared"],
        folder / "run",
        window=WINDOW,
        save_steps=1,
        use_cpu=True,
        **train,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tree(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ------------------------------------------------------------------ the lock
def test_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "--out") as lock:
        assert lock.path == tmp_path / ".out.lock" == lock_file(out)
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(TokenWeightError) as err:
            acquire(out, "--out")
        msg = str(err.value)
        assert f"--out {out} is in use by pid {os.getpid()} on {socket.gethostname()} since" in msg
        assert info["started"] in msg
        # another spelling of the same folder is the same lock
        with pytest.raises(TokenWeightError, match="in use"):
            acquire(tmp_path / "x" / ".." / "out", "--out")
    assert not lock.path.exists()  # released: the file is gone
    with output_lock(out):  # and the folder can be taken again
        pass


def test_lock_of_an_unwritable_place_is_an_error_and_leaves_nothing(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(TokenWeightError, match=r"--out .* cannot be written: a part of the path"):
        acquire(afile / "out", "--out")
    # parents made for the lock file are removed again
    with output_lock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b" / ".out.lock").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _holder(out: Path) -> subprocess.Popen:
    """Another process holding the lock of ``out`` until killed."""
    code = (
        "import sys, time\n"
        "from tokenweight.infra.folder_lock import acquire\n"
        "lock = acquire(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_score_into_a_folder_in_use_then_after_kill_9_of_the_holder(assets, tmp_path, capsys):
    out = tmp_path / "scored"
    argv = ["score", assets["prepared"], "--scorer", assets["model"], "--window", WINDOW]
    argv += ["--device", "cpu", "--out", out]
    holder = _holder(out)
    try:
        before = tree(tmp_path)
        rc, _, err = cli(capsys, *argv)
        assert rc == 2
        assert f"is in use by pid {holder.pid} on {socket.gethostname()} since" in err
        assert err.startswith("error: --out ") and "Traceback" not in err
        assert tree(tmp_path) == before and not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder left its lock file behind; it is not locked any more
    assert lock_file(out).is_file()
    rc, _, err = cli(capsys, *argv)
    assert rc == 0, err
    assert not lock_file(out).exists()
    assert (out / "manifest.json").is_file()


class WaitAtStep(TrainerCallback):
    """Signals once step 1 is done and waits until released (a run in progress)."""

    def __init__(self) -> None:
        self.reached, self.go_on = threading.Event(), threading.Event()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.reached.set()
            assert self.go_on.wait(120)


@pytest.mark.slow
def test_two_trainings_started_together_into_one_folder(assets, tmp_path, capsys):
    """The second start is refused while the first runs; the folder then holds one run:
    one config, one summary, log steps in order."""
    config = load_config(config_file(assets, tmp_path, max_steps=3))
    first = WaitAtStep()
    done: dict[str, object] = {}

    def run_first():
        try:
            done["result"] = train(config, callbacks=[first])
        except BaseException as exc:  # reported below
            done["error"] = exc

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert first.reached.wait(120), done
        rc, _, err = cli(capsys, "train", tmp_path / "train.yaml", "scheme=uniform")
    finally:
        first.go_on.set()
        thread.join()
    assert "error" not in done, done
    assert rc == 2 and f"train.output_dir {config.train.output_dir} is in use by pid" in err
    out = Path(config.train.output_dir)
    assert "scheme: dense:0.75" in (out / "tokenweight_train.yaml").read_text()
    assert json.loads((out / "train_summary.json").read_text())["scheme"] == "dense:0.75"
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 3
    # one after the other, the second is refused as before (the folder holds a run)
    rc, _, err = cli(capsys, "train", tmp_path / "train.yaml", "scheme=uniform")
    assert rc == 2 and "already holds" in err


def test_output_folder_rule_ignores_lock_files(tmp_path):
    from tokenweight.infra.files import check_output_dir

    work = tmp_path / "work"
    work.mkdir()
    (work / ".prepared.lock").write_text("{}")  # left by a killed step
    assert check_output_dir(work, "x", markers=("manifest.json",)) is False


# ------------------------------------------------------------------ honest resume
def test_segments_are_cut_at_the_resumed_checkpoint():
    a, b = {"scheme": "dense"}, {"scheme": "uniform"}
    earlier = [{"steps": [1, 5], "settings": a}]
    assert next_segments(earlier, 6, a) == [{"steps": [1, None], "settings": a}]
    assert next_segments(earlier, 4, b) == [
        {"steps": [1, 3], "settings": a},
        {"steps": [4, None], "settings": b},
    ]
    assert next_segments([], 1, a) == [{"steps": [1, None], "settings": a}]


def test_free_settings_do_not_count_as_changes():
    base = {"train": {"max_steps": 2, "save_steps": 1, "report_to": ["none"], "seed": 0}}
    more = {"train": {"max_steps": 9, "save_steps": 5, "report_to": ["tensorboard"], "seed": 0}}
    assert run_settings(base, "sha256:a", 32) == run_settings(more, "sha256:a", 32)
    assert run_settings(base, "sha256:a", 32) != run_settings(base, "sha256:b", 32)
    assert {"train.max_steps", "train.logging_steps", "train.report_to"} <= set(FREE_SETTINGS)


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused_then_recorded_when_allowed(
    assets, tmp_path, capsys
):
    cfg = config_file(assets, tmp_path)
    out = tmp_path / "run"
    assert cli(capsys, "train", cfg)[0] == 0
    before = tree(tmp_path)
    resume = ["train", cfg, "scheme=uniform", "train.max_steps=4", "--resume"]
    rc, _, err = cli(capsys, *resume)
    assert rc == 2 and "Traceback" not in err
    assert "--resume:" in err and "trained up to step 2 with other settings" in err
    assert "scheme: dense:0.75 -> uniform" in err and "--allow-changed-settings" in err
    assert "max_steps" not in err  # raising max_steps is free
    assert tree(tmp_path) == before

    rc, said, err = cli(capsys, *resume, "--allow-changed-settings")
    assert rc == 0, err
    summary = json.loads((out / "train_summary.json").read_text())
    segments = summary["segments"]
    assert [s["steps"] for s in segments] == [[1, 2], [3, 4]]
    assert [s["settings"]["scheme"] for s in segments] == ["dense:0.75", "uniform"]
    assert summary["settings_changed"] == describe_segments(segments)
    assert "steps 1-2, 3-4 ran with different settings" in said
    assert "from step 3: scheme: dense:0.75 -> uniform" in said
    marker = json.loads((out / "checkpoint-4" / "tokenweight_checkpoint.json").read_text())
    assert [s["steps"] for s in marker["segments"]] == [[1, 2], [3, 4]]
    # the config file says what trained the last steps
    assert "scheme: uniform" in (out / "tokenweight_train.yaml").read_text()


@pytest.mark.slow
def test_resume_with_only_free_changes_keeps_one_segment(assets, tmp_path, capsys):
    cfg = config_file(assets, tmp_path)
    out = tmp_path / "run"
    assert cli(capsys, "train", cfg)[0] == 0
    argv = ["train", cfg, "train.max_steps=3", "train.logging_steps=2", "--resume"]
    rc, said, err = cli(capsys, *argv, "train.save_steps=3", "train.report_to=[none]")
    assert rc == 0, err
    segments = json.loads((out / "train_summary.json").read_text())["segments"]
    assert [s["steps"] for s in segments] == [[1, 3]]
    assert "different settings" not in said


@pytest.mark.slow
def test_resume_on_other_data_is_refused_naming_the_fingerprint(assets, tmp_path, capsys):
    other = prepare(tmp_path / "other", assets["model"], SEQ, docs=4, words=90)
    cfg = config_file(assets, tmp_path)
    assert cli(capsys, "train", cfg)[0] == 0
    rc, _, err = cli(capsys, "train", cfg, f"data.path={other}", "--resume")
    assert rc == 2 and "data.fingerprint: sha256:" in err
    # the same data moved elsewhere is the same data
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(assets["prepared"], moved)
    rc, _, err = cli(capsys, "train", cfg, f"data.path={moved}", "train.max_steps=3", "--resume")
    assert rc == 0, err


def test_allow_changed_settings_needs_resume(assets, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", config_file(assets, tmp_path), "--allow-changed-settings")
    assert rc == 2 and "--allow-changed-settings" in err


# ------------------------------------------------------------------ fingerprints
def _independent_rows_fingerprint(folder: Path) -> str:
    rows = datasets.load_from_disk(str(folder))
    h = hashlib.sha256()
    for ids in rows["input_ids"]:
        h.update(np.asarray(ids, dtype="<i8").tobytes())
    return "sha256:" + h.hexdigest()


def test_prepared_and_scored_manifests_carry_a_content_fingerprint(assets, tmp_path):
    manifest = json.loads((assets["prepared"] / "manifest.json").read_text())
    assert manifest["fingerprint"] == _independent_rows_fingerprint(assets["prepared"])
    scored = json.loads((assets["scored"] / "manifest.json").read_text())
    lines = "".join(s["sha256"] + "\n" for s in scored["shards"]).encode()
    assert scored["fingerprint"] == "sha256:" + hashlib.sha256(lines).hexdigest()
    # other rows, another fingerprint
    other = prepare(tmp_path, assets["model"], SEQ, docs=4, words=90)
    other_fp = json.loads((other / "manifest.json").read_text())["fingerprint"]
    assert other_fp == _independent_rows_fingerprint(other) != manifest["fingerprint"]


# ------------------------------------------------------------------ reports
HOSTILE = [
    "<script>alert(1)</script>",
    "![pixel](http://example.com/p.png)",
    "[click](javascript:alert(1))",
    "[ref]: http://example.com",
    "<http://example.com>",
    "a|b",
    "`code` and ``more``",
    "two\nlines",
    "&lt;b&gt; & co",
    "back\\slash\\|",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_the_markdown_escaper_keeps_user_text_literal(text):
    """Rendered by an independent markdown implementation, in a table cell and in prose:
    no element other than the table, and the cell's text is the user's text."""
    import html
    import re

    import markdown

    from tokenweight.infra.markdown import md_escape

    escaped = md_escape(text)
    cell = markdown.markdown(f"| a | b |\n|---|---|\n| x | {escaped} |", extensions=["tables"])
    tags = set(re.findall(r"<\s*([a-zA-Z]+)", cell))
    assert tags <= {"table", "thead", "tbody", "tr", "th", "td"}, cell
    cells = re.findall(r"<td>(.*?)</td>", cell, flags=re.S)
    assert len(cells) == 2 and html.unescape(cells[1]) == text.replace("\n", "⏎"), cell
    prose = markdown.markdown(f"- **run**: {escaped} is better")
    assert set(re.findall(r"<\s*([a-zA-Z]+)", prose)) <= {"ul", "li", "strong"}, prose


def test_study_report_escapes_run_names_in_prose_and_tables(tmp_path, monkeypatch):
    from tokenweight.workflows.study import report
    from tokenweight.workflows.study.report import write_study_report

    # only the parts that show run names: no start-model section, no figure
    monkeypatch.setattr(report, "_context_section", lambda c: [])
    monkeypatch.setattr(report, "_plot", lambda results, path: None)

    name = "<img src=x onerror=alert(1)>[a](javascript:x)"
    diff = {
        "metric": "all targets",
        "run": name,
        "targets": 10,
        "count": 10,
        "baseline": 1.0,
        "diff": -0.1,
        "low": -0.2,
        "high": 0.0,
        "verdict": "better",
        "inside_noise": False,
    }
    results = {
        "config": {"confidence": 0.95, "window": 8},
        "baseline": "uniform",
        "seeds": [0],
        "held_out_sequences": 2,
        "runs": ["uniform", name],
        "differences": [diff],
        "context_check": {},
    }
    import markdown

    md = write_study_report(results, tmp_path).read_text()
    assert md.count("&lt;img src=x onerror=alert(1)&gt;[a\\](javascript:x)") == 2  # table, prose
    page = markdown.markdown(md, extensions=["tables"])
    assert "<img src=x" not in page and "<a " not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;[a](javascript:x)") == 2
