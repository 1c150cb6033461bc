"""The main job end to end at a reduced size: a tiny random model on the test corpus."""

from __future__ import annotations

import json

import pytest

from helpers.corpus import CORPUS_DIR
from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
from tokenweight.cli import main
from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.pipeline import load_pipeline_config, run_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tok = make_tokenizer("bpe", **EVAL_BPE)
    tok.save_pretrained(folder)
    build_tiny_causal_lm(
        tokenizer=tok, init_std=EVAL_INIT_STD, max_position_embeddings=512
    ).save_pretrained(folder)
    return folder


def settings(model_dir, work, **extra):
    base = {
        "work_dir": str(work),
        "model": str(model_dir),
        "corpus": str(CORPUS_DIR),
        "held_out": ["orchard.txt"],
        "seq_len": 128,
        "window": 32,
        "train_sequences": 4,
        "max_steps": 2,
        "save_steps": 1,
        "eval_sequences": 1,
        "probes": ["passkey"],
        "probe_lengths": [256],
        "probe_depths": [0.5],
        "inspect_tokens": 128,
        "device": "cpu",
        "attn_implementation": None,
    }
    base.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


@pytest.mark.slow
def test_pipeline_writes_every_report_file_and_reuses_cached_steps(model_dir, tmp_path):
    work = tmp_path / "work"
    lines: list[str] = []
    config = load_pipeline_config(None, settings(model_dir, work))
    report = run_pipeline(config, log=lines.append)
    expected = [
        "report.md",
        "training_curves.png",
        "prepared/manifest.json",
        "scored/manifest.json",
        "runs/uniform/model.safetensors",
        "runs/dense-0.75/model.safetensors",
        "runs/dense-0.75/train_log.jsonl",
        "eval/results.json",
        "eval/results.md",
        "eval/nll_by_position.png",
        "eval/probe_passkey.png",
        "inspect/inspect.html",
        "inspect/inspect.json",
        "inspect/weights.png",
        "inspect/top_tokens.md",
    ]
    for name in expected:
        assert (work / name).is_file(), name
    for png in work.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    for heading in (
        "## Steps",
        "## Which tokens get weight",
        "## Training",
        "## Evaluation on held-out text",
        "## Settings",
    ):
        assert heading in text
    results = json.loads((work / "eval" / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["start", "uniform", "dense:0.75"]
    for label in ("start", "uniform", "dense:0.75"):
        assert f"| {label} |" in text
    # the trained models differ from the start and from each other
    ppl = {m["label"]: m["perplexity"]["perplexity"] for m in results["models"]}
    assert len(set(ppl.values())) == 3
    assert all(f"[{i}/8]" in " ".join(lines) for i in range(1, 9))

    # a re-run reuses every step and says so
    lines.clear()
    run_pipeline(config, log=lines.append)
    cached = [line for line in lines if "cached" in line]
    assert len(cached) == 6, lines

    # changing the training length redoes training and what depends on it, nothing before
    lines.clear()
    run_pipeline(
        load_pipeline_config(None, settings(model_dir, work, max_steps=3)), log=lines.append
    )
    joined = "\n".join(lines)
    assert "prepare: cached" in joined and "short windows): cached" in joined
    assert "train uniform: settings changed" in joined
    assert "evaluate start and trained models: settings changed" in joined
    summary = json.loads((work / "runs" / "uniform" / "train_summary.json").read_text())
    assert summary["global_step"] == 3


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(TokenWeightError, match="seq_len: expected"):
        load_pipeline_config(None, ["seq_len=abc"])
    with pytest.raises(TokenWeightError, match="window: 4096 must be shorter than seq_len"):
        load_pipeline_config(None, ["window=4096"])
    with pytest.raises(TokenWeightError, match=r"schemes\[1\]"):
        load_pipeline_config(None, ["schemes=[uniform, dense:2]"])
    with pytest.raises(TokenWeightError, match="colour: unknown key"):
        load_pipeline_config(None, ["colour=red"])
    assert main(["demo", "max_steps=0"]) == 2


def test_demo_print_config(capsys):
    assert main(["demo", "--print-config", "seq_len=4096", "window=1024"]) == 0
    out = capsys.readouterr().out
    assert "seq_len: 4096" in out and "window: 1024" in out
