"""Nothing lost, nothing silently wrong: every command as a user runs it, on a tiny model
and corpus built offline, with files hashed before and after.

Covered: the one output-folder rule (``--overwrite`` and every output option), the demo's
step folders, orphan scratch folders, resume after a kill during a checkpoint save, the
summary loss after a resume, verified re-scoring, the scheme range audit, short-context
windows as long as the sequence, tokenizer identity in eval/inspect, eval lengths and
options, strict configs, markdown escaping, and a catalogue of broken inputs that must each
end in ``error: ...`` and exit 2 with every file unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from fixtures import save_tiny_model, save_tokenizer
from helpers_data import CORPUS_DIR
from tokenweight.cli import main
from tokenweight.errors import TokenWeightError
from tokenweight.weighting import Scheme

N, W = 32, 8


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Tokenizers, two tiny models (different tokenizers), a user corpus, prepared and
    scored data, all made with the real commands."""
    root = tmp_path_factory.mktemp("safety")
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
    assert main([*_score_argv(paths), "--out", str(paths["scored"])]) == 0
    return paths


def _score_argv(env, prep: str = "prep") -> list[str]:
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
    config = {
        "model": {"source": str(env["model"])},
        "data": {"path": str(env["prep"])},
        "scheme": "dense:0.75",
        "scorer": {"kind": "self", "window": W},
        "train": {
            "output_dir": str(folder / "run"),
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "max_steps": 4,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "save_steps": 1,
            "seed": 0,
            "use_cpu": True,
            "training_arguments": {"disable_tqdm": True},
        },
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path = folder / "train.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------ --overwrite and outputs
def test_score_out_dot_overwrite_keeps_the_working_directory(env, tmp_path, capsys, monkeypatch):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path, env["root"])
    fails(capsys, [*_score_argv(env), "--out", ".", "--overwrite"], "current directory")
    assert tree(tmp_path, env["root"]) == before


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
    fails(capsys, [*_score_argv(env), "--out", mine, "--overwrite"], "(notes.txt)")
    fails(capsys, [*_score_argv(env), "--out", env["prep"], "--overwrite"], "overlaps")
    # a real score output with a user file added: not replaced either
    scored = tmp_path / "scored"
    shutil.copytree(env["scored"], scored)
    (scored / "notes.txt").write_text("mine")
    before = tree(tmp_path, env["root"])
    fails(capsys, [*_score_argv(env), "--out", scored, "--overwrite"], "also holds 1 entry")
    assert tree(tmp_path, env["root"]) == before
    # an earlier output of the same command, alone, is replaced
    (scored / "notes.txt").unlink()
    assert main([*_score_argv(env), "--out", str(scored), "--overwrite"]) == 0
    assert sorted(p.name for p in scored.iterdir()) == sorted(
        p.name for p in env["scored"].iterdir()
    )


def test_eval_and_inspect_refuse_a_foreign_out_folder(env, tmp_path, capsys):
    text = tmp_path / "passage.txt"
    text.write_text((CORPUS_DIR / "orchard.txt").read_text())
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "results.md").write_text("my own results")
    before = tree(tmp_path)
    fails(
        capsys,
        ["inspect", env["model"], text, "--window", W, "--max-tokens", 64, "--out", foreign],
        "not a tokenweight inspect output",
    )
    fails(
        capsys,
        ["eval", env["model"], "--tasks", "passkey", "--lengths", 64, "--out", foreign],
        "not a tokenweight eval output",
    )
    assert tree(tmp_path) == before
    # rerunning into its own earlier output is fine
    out = tmp_path / "inspect"
    argv = ["inspect", env["model"], text, "--window", W, "--max-tokens", 64, "--out", out]
    assert run_cli(capsys, argv)[0] == 0
    assert run_cli(capsys, argv)[0] == 0


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


def test_train_output_dir_may_not_be_an_input(env, tmp_path, capsys):
    before = tree(env["root"])
    config = train_yaml(env, tmp_path)
    for where in (env["model"], env["model"] / "sub", env["prep"], env["root"]):
        fails(capsys, ["train", config, f"train.output_dir={where}"], "overlaps the input")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "paper.pdf").write_bytes(b"%PDF")
    fails(capsys, ["train", config, f"train.output_dir={foreign}"], "(paper.pdf)")
    assert tree(env["root"]) == before
    assert (foreign / "paper.pdf").read_bytes() == b"%PDF"


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


# ------------------------------------------------------------------ resume
class CrashAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt(f"killed before step {self.step}")


def test_resume_after_a_kill_during_a_checkpoint_save(env, tmp_path, caplog):
    from tokenweight.training.config import load_config
    from tokenweight.training.run import find_last_checkpoint, train

    config = load_config(train_yaml(env, tmp_path))
    out = Path(config.train.output_dir)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[CrashAtStep(4)])
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    for ckpt in out.glob("checkpoint-*"):
        assert (ckpt / "tokenweight_checkpoint.json").is_file()
    # the kill came while checkpoint-3 was being written: weights there, the rest missing
    cut = out / "checkpoint-3"
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth"):
        (cut / name).unlink(missing_ok=True)
    (cut / "tokenweight_checkpoint.json").unlink()
    assert find_last_checkpoint(out).endswith("checkpoint-2")
    with caplog.at_level(logging.WARNING, logger="tokenweight.training.run"):
        result = train(config, resume=True)
    said = caplog.text
    assert "checkpoint-3 is incomplete" in said and "resuming from checkpoint-2" in said
    assert result.resumed_from.endswith("checkpoint-2")
    assert result.global_step == 4
    assert (out / "checkpoint-3" / "tokenweight_checkpoint.json").is_file()  # saved again

    # the summary loss says which steps it averages, and is their mean
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_loss_steps"] == [3, 4]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = {x["step"]: x["loss"] for x in log if "loss" in x}
    expected = (losses[3] + losses[4]) / 2
    assert summary["train_loss"] == pytest.approx(expected, rel=1e-4)
    assert result.loss_steps == (3, 4)


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
    rc, err = run_cli(capsys, [*_score_argv(env), "--out", out])
    assert rc == 0, err
    assert tree(out) == {k.replace(str(env["scored"]), str(out)): v for k, v in reference.items()}
    # and the advice printed by train now works: a training load succeeds
    from tokenweight.data import load_scored_dataset

    assert len(load_scored_dataset(out)) == len(load_scored_dataset(env["scored"]))


# ------------------------------------------------------------------ no silent nonsense
@pytest.mark.parametrize(
    "text",
    [
        "longce:-1",
        "longce:0",
        "custom:comparison=difference,transforms=minus+exp,truncation=-1",
        "custom:comparison=difference,transforms=absolute,truncation=0",
        "custom:comparison=difference",
        "custom:comparison=difference,normalization=l1",
        "custom:comparison=difference,transforms=absolute+shift(3)",
        "custom:comparison=difference,transforms=max+minus",
        "custom:comparison=difference,transforms=max+minus+max",
        "custom:comparison=quotient,transforms=minus,interpolation=0.5",
    ],
)
def test_schemes_with_negative_or_constant_weights_are_refused(text, capsys):
    with pytest.raises(TokenWeightError):
        Scheme.parse(text)
    fails(capsys, ["weights", "--scheme", text], "cannot read scheme")


@pytest.mark.parametrize(
    "text",
    [
        "longce:0.5",
        "dense:0",
        "dense:1",
        "rho1:0.5",
        "custom:comparison=difference,transforms=absolute",
        "custom:comparison=difference,normalization=softmax",
        "custom:comparison=quotient,transforms=minus,normalization=softmax",
    ],
)
def test_schemes_with_valid_weights_still_parse_and_give_non_negative_weights(text):
    from tokenweight.weighting import compute_weights

    scheme = Scheme.parse(text)
    g = torch.Generator().manual_seed(0)
    long, short = torch.rand(3, 50, generator=g) * 8, torch.rand(3, 50, generator=g) * 8
    w = compute_weights(long, short, scheme)
    assert bool((w >= 0).all()) and bool((w.sum(-1) > 0).all())


def test_window_covering_the_sequence_is_refused_everywhere(env, tmp_path, capsys):
    text = tmp_path / "passage.txt"
    text.write_text((CORPUS_DIR / "orchard.txt").read_text())
    config = train_yaml(env, tmp_path)
    fails(capsys, [*_score_argv(env)[:4], "--window", N, "--out", tmp_path / "s"], "covers")
    fails(capsys, ["train", config, f"scorer.window={N}"], "scorer.window", "covers")
    fails(
        capsys,
        [
            "inspect",
            env["model"],
            text,
            "--window",
            40,
            "--max-tokens",
            40,
            "--out",
            tmp_path / "i",
        ],
        "covers",
    )
    fails(
        capsys,
        [
            "eval",
            env["model"],
            "--data",
            env["corpus"],
            "--seq-len",
            N,
            "--tasks",
            "longppl",
            "--longppl-window",
            N,
            "--out",
            tmp_path / "e",
        ],
        "--longppl-window",
        "covers",
    )
    assert not (tmp_path / "s").exists() and not (tmp_path / "run").exists()


def test_eval_and_inspect_check_tokenizer_identity(env, tmp_path, capsys):
    text = tmp_path / "passage.txt"
    text.write_text((CORPUS_DIR / "orchard.txt").read_text())
    fails(
        capsys,
        [
            "eval",
            env["model"],
            "--data",
            env["prep_bpe"],
            "--tasks",
            "ppl",
            "--out",
            tmp_path / "e",
        ],
        "tokenizer differs",
    )
    fails(
        capsys,
        [
            "inspect",
            env["model"],
            text,
            "--window",
            W,
            "--max-tokens",
            64,
            "--short-model",
            env["other"],
            "--out",
            tmp_path / "i",
        ],
        "does not share the tokenizer",
    )
    assert not (tmp_path / "i").exists()


def test_eval_warns_before_lengths_beyond_the_model_and_escapes_markdown(
    env, tmp_path, capsys, caplog
):
    out = tmp_path / "e"
    label = "<b>mine|yours</b>"
    argv = ["eval", f"{label}={env['model']}", "--tasks", "passkey", "--lengths", "300"]
    argv += ["--depths", "0.5", "--out", out, "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="tokenweight.evaluation.runner"):
        rc, err = run_cli(capsys, argv)
    assert rc == 0, err
    assert "has 256 positions" in caplog.text and "300" in caplog.text
    md = (out / "results.md").read_text()
    assert "<b>" not in md and "&lt;b&gt;mine\\|yours&lt;/b&gt;" in md
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    row = lines[header + 2]  # the model's row: as many cells as the header
    assert "mine" in row
    assert row.count("|") - row.count("\\|") == lines[header].count("|")


def test_inspect_markdown_escapes_tokens(env, tmp_path, capsys):
    from tokenweight.inspection import Inspection, top_gains_markdown

    result = Inspection(
        tokens=["<s>", "<script>", "a|b", "x"],
        token_ids=[1, 2, 3, 4],
        long_nll=[1.0, 2.0, 3.0],  # one per target: tokens 1..3
        short_nll=[5.0, 6.0, 3.5],
        weight=[1.0, 1.0, 1.0],
        scheme="dense:0.75",
        window=2,
        stride=1,
    )
    md = top_gains_markdown(result)
    assert "<script>" not in md and "&lt;script&gt;" in md and "a\\|b" in md
    header = md.splitlines()[0].count("|")
    for line in md.splitlines()[2:]:
        assert line.count("|") - line.count("\\|") == header


def test_eval_options_out_of_range_are_errors(env, tmp_path, capsys):
    text = tmp_path / "passage.txt"
    text.write_text("some words " * 50)
    fails(
        capsys,
        ["eval", env["model"], "--data", env["corpus"], "--seq-len", 0, "--out", tmp_path / "e"],
        "--seq-len must be >= 2",
    )
    fails(
        capsys,
        ["inspect", env["model"], text, "--window", W, "--offset", -1, "--out", tmp_path / "i"],
        "--offset must be >= 0",
    )


def test_config_duplicate_keys_binary_files_and_ranges(env, tmp_path, capsys):
    good = train_yaml(env, tmp_path)
    dup = tmp_path / "dup.yaml"
    dup.write_text(good.read_text() + "scheme: sparse:0.25\n")
    fails(capsys, ["train", dup, "--print-config"], "'scheme' is given twice")
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  seed: 1\n  max_steps: 2\n  seed: 3\n")
    fails(capsys, ["train", nested, "--print-config"], "'seed' is given twice")
    binary = tmp_path / "model.safetensors.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    fails(capsys, ["train", binary, "--print-config"], str(binary))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("train:\n  run_name: caf\xe9\n".encode("latin-1"))
    fails(capsys, ["train", latin, "--print-config"], "not a UTF-8")
    fails(capsys, ["train", good, "train.seed=-5", "--print-config"], "train.seed")
    fails(capsys, ["train", good, "train.seed=5000000000", "--print-config"], "train.seed")
    fails(capsys, ["train", good, "model.lora.dropout=1.5", "--print-config"], "dropout")
    fails(capsys, ["demo", f"work_dir={tmp_path / 'w'}", "seed=-1", "--print-config"], "seed")
    fails(capsys, ["demo", "probe_depths=[2]", "--print-config"], "probe_depths")
    fails(capsys, ["demo", "rope_theta=-1", "--print-config"], "rope_theta")


def test_device_cuda_without_a_gpu_leaves_nothing_that_blocks_the_next_run(
    env, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "s"
    argv = [*_score_argv(env)[:-2], "--out", out]
    fails(capsys, [*argv, "--device", "cuda"], "not available")
    assert not out.exists()
    assert run_cli(capsys, [*argv, "--device", "cpu"])[0] == 0


# ------------------------------------------------------------------ the catalogue
def _copy(env, name: str, work: Path) -> Path:
    target = work / name
    shutil.copytree(env[name], target)
    return target


def _truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _score_copy(env, work: Path) -> list:
    """``tokenweight score`` on a copy of the prepared data (to be broken by the case)."""
    return [*_score_argv(env)[:1], work / "prep", *_score_argv(env)[2:], "--out", work / "s"]


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
    return [*_score_argv(env), "--out", scored], "run.json"


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
        [*_score_argv(env), "--out", ".", "--overwrite"],
        "current directory",
    ),
    "score --out PREPARED --overwrite": lambda env, work: (
        [*_score_argv(env), "--out", env["prep"], "--overwrite"],
        "overlaps the input",
    ),
    "score --window >= seq_len": lambda env, work: (
        [*_score_argv(env)[:4], "--window", N, "--out", work / "s"],
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
