"""Nothing silently wrong in ``tokenweight eval`` and ``tokenweight inspect``: foreign
output folders, short-context windows as long as the sequence (refused by every command),
tokenizer identity, lengths beyond the model, option ranges, markdown escaping."""

from __future__ import annotations

import logging

from helpers.corpus import CORPUS_DIR
from helpers.safety import N, W, fails, run_cli, score_argv, train_yaml, tree


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


def test_window_covering_the_sequence_is_refused_everywhere(env, tmp_path, capsys):
    text = tmp_path / "passage.txt"
    text.write_text((CORPUS_DIR / "orchard.txt").read_text())
    config = train_yaml(env, tmp_path)
    fails(capsys, [*score_argv(env)[:4], "--window", N, "--out", tmp_path / "s"], "covers")
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


def _no_model_loads(monkeypatch):
    """Make any model load (or model call) fail the test: the checks must come first."""
    import tokenweight.infra.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(tokenweight.infra.models, "load_model", refuse)


def test_eval_refuses_lengths_beyond_the_model_before_loading_it(
    env, tmp_path, capsys, monkeypatch
):
    """Lengths past max_position_embeddings are refused from the config alone (this was a
    warning before; --allow-beyond-positions now asks for it explicitly)."""
    _no_model_loads(monkeypatch)
    out = tmp_path / "e"
    argv = ["eval", f"a={env['model']}", "--tasks", "passkey", "--lengths", "100,300,400"]
    line = fails(capsys, [*argv, "--out", out], "'a' has 256 positions", "--allow-beyond-positions")
    assert "300 (--lengths), 400 (--lengths)" in line and "100 " not in line
    data = ["--data", env["corpus"], "--tasks", "ppl", "--seq-len", "500"]
    fails(capsys, ["eval", env["model"], *data, "--out", out], "500 (--seq-len)")
    assert not out.exists()


def test_eval_checks_every_probe_task_before_any_model_call(env, tmp_path, capsys, monkeypatch):
    _no_model_loads(monkeypatch)
    out = tmp_path / "e"
    argv = ["eval", env["model"], "--tasks", "passkey,needle,vartrack", "--lengths", "40,200"]
    line = fails(capsys, [*argv, "--out", out], "too short for 'passkey'", "too short for 'needle'")
    assert "vartrack" in line and line.count("use a length of at least") == 3
    assert not out.exists()


def test_eval_beyond_positions_when_allowed_warns_and_escapes_markdown(
    env, tmp_path, capsys, caplog
):
    out = tmp_path / "e"
    label = "<b>mine|yours</b>"
    argv = ["eval", f"{label}={env['model']}", "--tasks", "passkey", "--lengths", "300"]
    argv += ["--depths", "0.5", "--out", out, "--no-progress", "--allow-beyond-positions"]
    with caplog.at_level(logging.WARNING, logger="tokenweight.evaluation.preflight"):
        rc, err = run_cli(capsys, argv)
    assert rc == 0, err
    assert "has 256 positions" in caplog.text and "300 (--lengths)" in caplog.text
    md = (out / "results.md").read_text()
    assert "<b>" not in md and "&lt;b&gt;mine\\|yours&lt;/b&gt;" in md
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    row = lines[header + 2]  # the model's row: as many cells as the header
    assert "mine" in row
    assert row.count("|") - row.count("\\|") == lines[header].count("|")


def test_inspect_markdown_escapes_tokens(env, tmp_path, capsys):
    from tokenweight.workflows.inspection import Inspection, top_gains_markdown

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
