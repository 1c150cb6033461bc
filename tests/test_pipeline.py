"""The main job end to end at a reduced size: a tiny random model on the test corpus."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from helpers.corpus import CORPUS_DIR
from helpers.eval_support import EVAL_BPE, EVAL_INIT_STD
from helpers.fixtures import build_tiny_causal_lm, make_tokenizer
from tokenweight.cli import main
from tokenweight.infra.config_sections import shorthand_of
from tokenweight.infra.errors import TokenWeightError
from tokenweight.training.config import Config, load_config
from tokenweight.workflows.pipeline import PipelineConfig, load_pipeline_config, run_pipeline


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


# ------------------------------------------------------------------ the settings
# Every top-level key the pipeline config had before it embedded the training sections:
# files and overrides written with them keep working.
FLAT_KEYS = [
    "work_dir",
    "cache_dir",
    "model",
    "corpus",
    "held_out",
    "seq_len",
    "train_sequences",
    "window",
    "stride",
    "score_batch_size",
    "schemes",
    "scorer",
    "max_steps",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "save_steps",
    "rope_theta",
    "max_position_embeddings",
    "dtype",
    "bf16",
    "attn_implementation",
    "gradient_checkpointing",
    "device",
    "seed",
    "eval_sequences",
    "eval_seq_len",
    "bucket_size",
    "probes",
    "probe_lengths",
    "probe_depths",
    "probe_trials",
    "inspect_tokens",
    "inspect_scheme",
]


def test_flat_settings_are_short_for_the_training_sections(tmp_path):
    flat = {
        "model": "m",
        "seq_len": 4096,
        "window": 1024,
        "stride": 512,
        "scorer": "self",
        "max_steps": 50,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "learning_rate": 1e-4,
        "warmup_steps": 5,
        "save_steps": 10,
        "rope_theta": 1e6,
        "max_position_embeddings": 8192,
        "dtype": "bf16",
        "bf16": True,
        "attn_implementation": "eager",
        "gradient_checkpointing": True,
        "seed": 7,
        "device": "cpu",
    }
    assert set(flat) | {"work_dir", "train_sequences"} <= set(FLAT_KEYS)
    old_file = tmp_path / "old.yaml"
    old_file.write_text(yaml.safe_dump(flat))
    nested = {
        "model": {
            "source": "m",
            "rope_theta": 1e6,
            "max_position_embeddings": 8192,
            "dtype": "bf16",
            "attn_implementation": "eager",
            "gradient_checkpointing": True,
        },
        "data": {"seq_len": 4096},
        "scorer": {"kind": "self", "window": 1024, "stride": 512},
        "train": {
            "max_steps": 50,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 4,
            "learning_rate": 1e-4,
            "warmup_steps": 5,
            "save_steps": 10,
            "bf16": True,
            "seed": 7,
        },
        "device": "cpu",
    }
    new_file = tmp_path / "new.yaml"
    new_file.write_text(yaml.safe_dump(nested))
    config = load_pipeline_config(new_file)
    assert load_pipeline_config(old_file) == config
    assert load_pipeline_config(None, [f"{k}={json.dumps(v)}" for k, v in flat.items()]) == config
    assert (config.train.max_steps, config.data.seq_len, config.scorer.window) == (50, 4096, 1024)
    # every key of the old flat config is still a setting
    for key in FLAT_KEYS:
        assert key in {f.name for f in dataclasses.fields(PipelineConfig)} | set(
            shorthand_of(PipelineConfig)
        ), key


def test_the_pipelines_defaults_and_the_training_defaults():
    config = PipelineConfig()
    t = config.train
    # the demo's own
    assert (t.max_steps, t.learning_rate, t.warmup_steps, t.save_steps) == (8, 5e-5, 0, 4)
    assert (t.gradient_accumulation_steps, t.save_total_limit) == (1, 1)
    assert (config.model.source, config.model.dtype, config.model.attn_implementation) == (
        "smollm2",
        "fp32",
        "sdpa",
    )
    assert (config.data.seq_len, config.scorer.kind, config.scorer.window) == (
        2048,
        "precomputed",
        512,
    )
    # everything else is the training config's default
    assert (t.betas, t.weight_decay, t.scheduler, t.max_grad_norm) == (
        (0.9, 0.95),
        0.01,
        "constant_with_warmup",
        1.0,
    )
    # a section given in part keeps the demo's defaults for the rest
    config = load_pipeline_config(None, ["train={weight_decay: 0.1}"])
    assert (config.train.weight_decay, config.train.max_steps, config.train.learning_rate) == (
        0.1,
        8,
        5e-5,
    )


def test_each_runs_training_config_is_the_one_written_by_hand(tmp_path):
    """The training config of a run, against the dict the pipeline used to write out: the
    same settings, so the same training (and the same cached step fingerprints)."""
    work = tmp_path / "w"
    config = load_pipeline_config(
        None, [f"work_dir={work}", "max_steps=3", "rope_theta=20000", "train.weight_decay=0"]
    )
    built = config.train_config("dense:0.75", "/models/start", "cpu")
    expected = Config.from_dict(
        {
            "model": {
                "source": "/models/start",
                "dtype": "fp32",
                "attn_implementation": "sdpa",
                "gradient_checkpointing": False,
                "rope_theta": 20000,
                "max_position_embeddings": None,
            },
            "data": {"path": str(work / "scored"), "seq_len": 2048},
            "scheme": "dense:0.75",
            "scorer": {"kind": "precomputed", "window": 512, "stride": None},
            "train": {
                "output_dir": str(work / "runs" / "dense-0.75"),
                "learning_rate": 5e-5,
                "scheduler": "constant_with_warmup",
                "warmup_steps": 0,
                "max_steps": 3,
                "micro_batch_size": 1,
                "gradient_accumulation_steps": 1,
                "seed": 42,
                "save_steps": 4,
                "save_total_limit": 1,
                "logging_steps": 1,
                "bf16": False,
                "use_cpu": True,
                "weight_decay": 0,
            },
        }
    )
    assert built.to_dict() == expected.to_dict()
    assert config.train_config("uniform", "/m", "cuda").train.use_cpu is False


def test_settings_are_checked_by_the_training_configs_rules_before_any_step():
    """One rule per setting: the pipeline's message for a bad training value is the
    training config's own, and its cross-field checks run when the settings load."""
    for override in ("warmup_steps=-1", "learning_rate=0", "dtype=fp8", "seed=-1", "stride=0"):
        key, value = override.split("=")
        dotted = f"{shorthand_of(PipelineConfig)[key]}.{key}={value}"
        with pytest.raises(TokenWeightError) as ours:
            load_pipeline_config(None, [override])
        with pytest.raises(TokenWeightError) as training:
            load_config(None, [dotted], base={"model": {"source": "m"}, "data": {"path": "d"}})
        assert str(ours.value) == str(training.value), override
    with pytest.raises(TokenWeightError, match=r"scorer\.stride: must be smaller than scorer"):
        load_pipeline_config(None, ["stride=512"])
    with pytest.raises(TokenWeightError, match=r"model\.dtype: fp16 weights with train\.bf16"):
        load_pipeline_config(None, ["dtype=fp16", "bf16=true"])
    with pytest.raises(TokenWeightError, match=r"scorer\.kind: expected one of self, precomputed"):
        load_pipeline_config(None, ["scorer=model"])
    with pytest.raises(TokenWeightError, match=r"data\.path: set by the pipeline"):
        load_pipeline_config(None, ["data.path=x"])
    with pytest.raises(TokenWeightError, match=r"model\.cache_dir: set by the pipeline"):
        load_pipeline_config(None, ["model={source: x, cache_dir: y}"])
    with pytest.raises(TokenWeightError, match=r"scorer\.window \(window\): required"):
        load_pipeline_config(None, ["window=null"])


def test_print_config_reads_back_to_the_same_settings(capsys, tmp_path):
    argv = ["seq_len=4096", "window=1024", "max_steps=50", "train.weight_decay=0", "model=m"]
    assert main(["demo", "--print-config", *argv]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    data = yaml.safe_load(printed.read_text())
    assert data["train"]["max_steps"] == 50 and data["data"] == {"seq_len": 4096}
    assert "output_dir" not in data["train"] and "use_cpu" not in data["train"]
    assert load_pipeline_config(printed) == load_pipeline_config(None, argv)


def test_the_demo_page_states_the_pipelines_own_defaults_and_fixed_keys():
    import re
    from pathlib import Path

    from tokenweight.infra.config_sections import sections_of

    page = (Path(__file__).resolve().parents[1] / "docs" / "demo.md").read_text()
    defaults = page[page.index("Only the defaults differ") : page.index("a section given in part")]
    stated = {
        name: yaml.safe_load(text.replace("\n", " "))
        for name, text in re.findall(r"`(model|data|scorer|train): (\{[^}]*\})`", defaults)
    }
    specs = sections_of(PipelineConfig)
    assert set(stated) == set(specs)
    for name, spec in specs.items():
        assert stated[name].keys() == spec.defaults.keys(), name
        for key, value in spec.defaults.items():
            assert type(value)(stated[name][key]) == value, (name, key)
        for key in spec.fixed:
            assert f"`{name}.{key}`" in page
    for key in shorthand_of(PipelineConfig):
        assert f"`{key}`" in page, key
