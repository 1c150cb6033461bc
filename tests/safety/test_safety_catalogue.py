"""The catalogue of broken inputs: ONE table (``CATALOGUE``, case name -> builder) of
every command's inputs that must each end in ``error: ...`` and exit 2 with every file
unchanged. A new refusal of any command is one entry here; the per-command safety tests
are the other ``test_safety_*.py`` files of this folder."""

from __future__ import annotations

import json
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


# ---- outputs in use and outputs that cannot be written, for every command that writes
_HELD: list = []  # locks a case holds while its command runs (released by the test)


def _in_use(folder: Path) -> Path:
    """``folder``, locked as if another run were writing it."""
    from tokenweight.infra.folder_lock import acquire

    _HELD.append(acquire(folder))
    return folder


def _under_file(work: Path) -> Path:
    """An output that cannot be made: its parent is a regular file (also under root)."""
    return work / "user-notes.txt" / "out"


def _prepare_to(env, out) -> list:
    return ["prepare", env["corpus"], "--tokenizer", env["tok"], "--seq-len", N, "--out", out]


def _writers(env, out) -> dict[str, list]:
    """Every command that writes a folder, writing ``out`` (``option``: how it names it)."""
    select = ["select", env["scored"], "--prepared", env["prep"], "--top", 0.5, "--out", out]
    study = ["study", f"work_dir={out}", "seeds=[0]"]
    return {
        "prepare --out": _prepare_to(env, out),
        "score --out": [*score_argv(env), "--out", out],
        "train train.output_dir": None,  # built per case (needs a config file)
        "eval --out": ["eval", env["model"], "--tasks", "passkey", "--lengths", 64, "--out", out],
        "inspect --out": ["inspect", env["model"], None, "--window", W, "--out", out],
        "select --out": select,
        "synth --out": [
            "synth",
            "--tokenizer",
            env["tok"],
            *("--out", out, "--seq-len", 64, "--sequences", 2, "--distances", 8, "--copies", 1),
        ],
        "study work_dir": study,
        "demo work_dir": ["demo", f"work_dir={out}"],
    }


_WRITERS = (
    "prepare --out",
    "score --out",
    "train train.output_dir",
    "eval --out",
    "inspect --out",
    "select --out",
    "synth --out",
    "study work_dir",
    "demo work_dir",
)


def _writer_case(command: str, make_out):
    def build(env, work):
        out = make_out(work)
        argv = _writers(env, out)[command]
        if command.startswith("train"):
            argv = ["train", train_yaml(env, work), f"train.output_dir={out}"]
        if command.startswith("inspect"):
            argv[2] = _passage(work)
        option = command.split()[1]
        needle = "is in use by pid" if make_out is not _under_file else "cannot be written"
        return argv, f"{option} {out} {needle}"

    return build


def _config_json(work: Path, data) -> Path:
    folder = work / "shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(data))
    return folder


_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "vocab_size": 256,
}


def _case_scores_window_contradicts(env, work):
    scorer = {"kind": "precomputed", "window": 2 * W}
    config = train_yaml(env, work, data={"path": str(env["scored"])}, scorer=scorer)
    return ["train", config], f"scorer.window: the config says {2 * W}"


def _case_manifest_names_a_file_outside(env, work):
    scored = _copy(env, "scored", work)
    manifest = json.loads((scored / "manifest.json").read_text())
    outside = work / "other.arrow"
    shutil.copy(scored / manifest["shards"][0]["file"], outside)
    manifest["shards"][0]["file"] = "../other.arrow"  # same bytes, same hash: still refused
    (scored / "manifest.json").write_text(json.dumps(manifest))
    config = train_yaml(env, work, data={"path": str(scored)}, scorer={"kind": "precomputed"})
    return ["train", config], "'../other.arrow', which is not a file of"


def _case_prepared_state_names_a_file_outside(env, work):
    prep = _copy(env, "prep", work)
    state = json.loads((prep / "state.json").read_text())
    state["_data_files"][0]["filename"] = "../../elsewhere.arrow"
    (prep / "state.json").write_text(json.dumps(state))
    return _score_copy(env, work), "which is not a file of"


def _corrupt_manifest(env, work) -> Path:
    prep = _copy(env, "prep", work)
    _truncate(prep / "manifest.json")
    return prep


def _study_dry(*settings: str) -> list:
    return ["study", "--dry-run", *settings]


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
    "train report_to an unknown integration": lambda env, work: (
        ["train", train_yaml(env, work), "train.report_to=[tensorbord]"],
        "unknown integration(s) tensorbord",
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
    "eval --lengths beyond the model's positions": lambda env, work: (
        ["eval", env["model"], "--tasks", "passkey", "--lengths", 1000, "--out", work / "e"],
        "--allow-beyond-positions",
    ),
    "eval --lengths too short for the probe tasks": lambda env, work: (
        ["eval", env["model"], "--tasks", "passkey,needle", "--lengths", 40, "--out", work / "e"],
        "too short for 'needle'",
    ),
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
    "demo shorthand and section key in one file": lambda env, work: (
        ["demo", _yaml(work, "s.yaml", b"max_steps: 4\ntrain: {max_steps: 8}\n"), "--print-config"],
        "max_steps and train.max_steps",
    ),
    "demo train.output_dir (the pipeline's own)": lambda env, work: (
        ["demo", f"work_dir={work / 'w'}", "train.output_dir=elsewhere", "--print-config"],
        "train.output_dir: set by the pipeline",
    ),
    "demo train.warmup_steps=-1": lambda env, work: (
        ["demo", f"work_dir={work / 'w'}", "warmup_steps=-1", "--print-config"],
        "train.warmup_steps: must be >= 0",
    ),
    "demo max_position_embeddings below seq_len": lambda env, work: (
        ["demo", f"work_dir={work / 'w'}", "max_position_embeddings=1024", "--print-config"],
        "model.max_position_embeddings: 1024 is shorter than data.seq_len 2048",
    ),
    # one writer per folder; outputs that cannot be written (under a regular file)
    **{
        f"{command} in use": _writer_case(command, lambda work: _in_use(work / "out"))
        for command in _WRITERS
    },
    **{f"{command} under a file": _writer_case(command, _under_file) for command in _WRITERS},
    # values checked before any work, named as the user wrote them
    "train train.sequence_parallel=2 in one process": lambda env, work: (
        [
            "train",
            train_yaml(env, work),
            "train.sequence_parallel=2",
            "train.deepspeed=configs/deepspeed/zero2.json",
        ],
        "train.sequence_parallel: 2 must divide the number of processes of this launch (1)",
    ),
    "train scorer.window contradicts the stored scores": _case_scores_window_contradicts,
    "train scored manifest names a file outside its folder": _case_manifest_names_a_file_outside,
    "score prepared state.json names a file outside its folder": (
        _case_prepared_state_names_a_file_outside
    ),
    "prepare --seed -1": lambda env, work: (
        [*_prepare_to(env, work / "p"), "--seed", -1],
        "--seed must be in [0, 4294967295], got -1",
    ),
    "synth --seed -1": lambda env, work: (
        ["synth", "--tokenizer", env["tok"], "--out", work / "s", "--seed", -1],
        "--seed: must be in [0, 4294967295], got -1",
    ),
    "synth --seq-len 0": lambda env, work: (
        ["synth", "--tokenizer", env["tok"], "--out", work / "s", "--seq-len", 0],
        "--seq-len: must be a positive integer",
    ),
    "synth --out a file": lambda env, work: (
        ["synth", "--tokenizer", env["tok"], "--out", work / "user-notes.txt"],
        "exists and is not a folder",
    ),
    "select --seed -1": lambda env, work: (
        [*_writers(env, work / "sel")["select --out"], "--seed", -1],
        "--seed must be in [0, 4294967295], got -1",
    ),
    "select --bucket 0": lambda env, work: (
        [*_writers(env, work / "sel")["select --out"], "--bucket", 0],
        "--bucket must be > 0, got 0",
    ),
    "select --show -1": lambda env, work: (
        [*_writers(env, work / "sel")["select --out"], "--show", -1],
        "--show must be >= 0, got -1",
    ),
    "select --top 2": lambda env, work: (
        ["select", env["scored"], "--prepared", env["prep"], "--top", 2, "--out", work / "sel"],
        "--top must be a fraction in (0, 1], got 2",
    ),
    "memory num_attention_heads 0": lambda env, work: (
        [
            "memory",
            "--model",
            _config_json(work, {**_SHAPE, "num_attention_heads": 0}),
            "--seq-len",
            64,
        ],
        "num_attention_heads must be a positive integer, got 0",
    ),
    "memory hidden_size -1": lambda env, work: (
        ["memory", "--model", _config_json(work, {**_SHAPE, "hidden_size": -1}), "--seq-len", 64],
        "hidden_size must be a positive integer, got -1",
    ),
    "memory hidden_size as text": lambda env, work: (
        [
            "memory",
            "--model",
            _config_json(work, {**_SHAPE, "hidden_size": "4096"}),
            "--seq-len",
            64,
        ],
        "hidden_size must be a positive integer, got '4096'",
    ),
    "memory config.json holding a list": lambda env, work: (
        ["memory", "--model", _config_json(work, [_SHAPE]), "--seq-len", 64],
        "holds a JSON list",
    ),
    "memory --seq-len 0": lambda env, work: (
        ["memory", "--model", "llama-3-8b", "--seq-len", 0],
        "--seq-len must be >= 2, got 0",
    ),
    "memory --gpus 0": lambda env, work: (
        ["memory", "--model", "llama-3-8b", "--seq-len", 64, "--gpus", 0],
        "--gpus must be > 0, got 0",
    ),
    "memory --sp 3 with --gpus 2": lambda env, work: (
        ["memory", "--model", "llama-3-8b", "--seq-len", 96, "--gpus", 2, "--sp", 3],
        "--sp 3 must divide --gpus 2",
    ),
    "study --dry-run flops_per_second=0": lambda env, work: (
        _study_dry("flops_per_second=0"),
        "flops_per_second",
    ),
    "study --dry-run seeds=[-1]": lambda env, work: (_study_dry("seeds=[-1]"), "seeds:"),
    "study --dry-run seeds=[0,0]": lambda env, work: (
        _study_dry("seeds=[0,0]"),
        "seeds: 0 given more than once",
    ),
    "study --dry-run seeds=[a]": lambda env, work: (_study_dry("seeds=[a]"), "seeds"),
    "study --dry-run window=1000": lambda env, work: (_study_dry("window=1000"), "window:"),
    "study --dry-run select_top=2": lambda env, work: (
        _study_dry("select_top=2"),
        "select_top: must be a fraction in (0, 1], got 2",
    ),
    "study --dry-run stride=0": lambda env, work: (_study_dry("stride=0"), "stride:"),
    # the training settings are the training config's train section, with its checks
    "study --dry-run warmup_steps=-1": lambda env, work: (
        _study_dry("warmup_steps=-1"),
        "train.warmup_steps: must be >= 0, got -1",
    ),
    "study --dry-run train.seed=3": lambda env, work: (
        _study_dry("train.seed=3"),
        "train.seed: set by the study",
    ),
    "study --dry-run bf16=true dtype=fp16": lambda env, work: (
        _study_dry("bf16=true", "dtype=fp16"),
        "model.dtype: fp16 weights with train.bf16 do not mix",
    ),
    "study --dry-run work_dir=PREPARED": lambda env, work: (
        _study_dry(f"work_dir={env['prep']}"),
        "work_dir:",
    ),
    "study --dry-run eval_data=data": lambda env, work: (
        _study_dry(f"data={env['prep']}", f"eval_data={env['prep']}", "window=8"),
        "eval_data:",
    ),
    "study --dry-run data=CORRUPT manifest": lambda env, work: (
        _study_dry(f"data={_corrupt_manifest(env, work)}", f"eval_data={env['prep']}"),
        "manifest.json is corrupt or truncated",
    ),
    "configs copy under a file": lambda env, work: (
        ["configs", "copy", "paper/dense_self", work / "user-notes.txt" / "x.yaml"],
        "which is a file, not a folder",
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
    try:
        rc, err = run_cli(capsys, [str(a) for a in argv])
        after = tree(work, env["root"])
    finally:
        while _HELD:
            _HELD.pop().release()
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert needle in lines[0], err
    assert after == before


@pytest.mark.parametrize("command", _WRITERS)
def test_an_output_folder_that_refuses_writes_is_an_error(
    command, env, tmp_path, capsys, monkeypatch
):
    """An output place where no file can be created (an immutable folder or a
    read-only mount; permission bits do not stop root, so the refusal is injected): one
    ``error:`` line naming the option, before any work, nothing changed."""
    import os

    work = tmp_path / "work"
    work.mkdir()
    (work / "user-notes.txt").write_text("not the tool's")
    out = work / "out"
    # commands that build their folder beside it and move it in place need its parent;
    # the others write inside an existing one
    beside = command.split()[0] in ("prepare", "select", "synth")
    refused = work if beside else out
    if not beside:
        out.mkdir()
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if Path(path).parent == refused and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    argv, _ = _writer_case(command, lambda work: out)(env, work)
    monkeypatch.chdir(work)
    before = tree(work, env["root"])
    monkeypatch.setattr(os, "open", refuse)
    rc, err = run_cli(capsys, [str(a) for a in argv])
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err, err
    option = command.split()[1]
    assert f"error: {option} {out} cannot be written: Permission denied" in err, err
    assert tree(work, env["root"]) == before
    assert not any(out.iterdir()) if out.exists() else beside
