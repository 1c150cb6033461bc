"""Training configs: validation names the key, inheritance and overrides, the shipped
configs load, and the Trainer arguments they produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenweight import TokenWeightError
from tokenweight.core.weighting import Scheme
from tokenweight.training.config import (
    Config,
    apply_overrides,
    load_config,
    load_raw_config,
    to_training_arguments,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = {
    "model": {"source": "some/model"},
    "data": {"path": "data/x"},
    "scheme": "dense:0.75",
    "scorer": {"kind": "self", "window": 512},
}


def load(*overrides: str, base=MINIMAL) -> Config:
    return load_config(base=base, overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learning_rate=abc", "train.learning_rate: expected a number, got 'abc'"),
        ("train.learning_rate=-1", "train.learning_rate: must be > 0"),
        ("train.lr=1e-4", "train.lr: unknown key; allowed in train: output_dir, learning_rate"),
        ("trian.max_steps=3", "trian: unknown key; allowed: model, data, scheme"),
        ("model.lora.rank=8", "model.lora.rank: unknown key"),
        ("model.lora.r=abc", "model.lora.r: expected a whole number, got 'abc'"),
        ("train.max_steps=2.5", "train.max_steps: expected a whole number, got 2.5"),
        ("train.betas=[0.9]", "train.betas: expected a list of 2 values"),
        ("train.betas=[0.9, 1.5]", "train.betas: each beta must be in [0, 1)"),
        ("train.betas=[0.9, x]", "train.betas[1]: expected a number, got 'x'"),
        ("model.dtype=fp8", "model.dtype: expected one of auto, float32"),
        (
            "scorer.kind=oracle",
            "scorer.kind: expected one of self, model, reference, precomputed, none",
        ),
        ("scheme=dense:2", "scheme: cannot read scheme 'dense:2'"),
        ("scheme=sparse", "scheme: cannot read scheme 'sparse'"),
        ("model.gradient_checkpointing=sometimes", "model.gradient_checkpointing: expected true"),
        ("train.report_to=3", "train.report_to: expected a list, got 3"),
        ("scorer.window=null", "scorer.window: required for the 'self' scorer"),
        ("scorer.stride=512", "scorer.stride: must be smaller than scorer.window (512)"),
        ("scorer.kind=none", "scorer.kind: 'none' only works with the uniform scheme"),
        ("scorer.model=x", "scorer.model: only used with scorer.kind 'model'"),
        ("model.source=null", "model.source: required"),
        ("data.path=null", "data.path: required"),
        ("data.seq_len=1", "data.seq_len: must be >= 2"),
        ("train.deepspeed=a.json", None),
        ("train=5", "train: expected a mapping of keys, got 5"),
        ("scheme.kappa=0.1", "override 'scheme.kappa=0.1': scheme is 'dense:0.75', not a mapping"),
        ("no_equals_sign", "expected key.sub=value"),
    ],
)
def test_errors_name_the_key(override, message):
    if message is None:
        load(override)  # accepted
        return
    with pytest.raises(TokenWeightError) as info:
        load(override)
    assert message in str(info.value)


def test_values_and_yaml_number_quirks():
    # PyYAML reads 2e-5 and 15.3e6 as text; they must still be numbers
    config = load(
        "train.learning_rate=2e-5",
        "model.rope_theta=15.3e6",
        "train.betas=[0.9, 0.95]",
        "train.report_to=tensorboard",
        "model.lora={r: 8, target_modules: all-linear}",
        "scorer.kind=model",
        "scorer.model=small/model",
    )
    assert config.train.learning_rate == 2e-5
    assert config.model.rope_theta == 15.3e6
    assert config.train.betas == (0.9, 0.95)
    assert config.train.report_to == ["tensorboard"]
    assert config.model.lora.r == 8 and config.model.lora.target_modules == "all-linear"
    assert config.scheme == Scheme.dense(0.75)
    assert config.scorer_kind == "model"
    assert load("scheme=uniform").scorer_kind == "none"  # uniform never runs a scorer


def test_scheme_as_mapping_and_round_trip_through_yaml(tmp_path):
    base = {**MINIMAL, "scheme": {"name": "ppmi", "c": 2, "kappa": 0.25}}
    config = load(base=base)
    assert config.scheme == Scheme.ppmi(2, 0.25)
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_inherit_merges_sections_and_replaces_the_scheme(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: {source: m, dtype: bf16}\n"
        "data: {path: d}\n"
        "scheme: {name: dense, lambda: 0.5}\n"
        "scorer: {kind: self, window: 64}\n"
        "train: {max_steps: 10, learning_rate: 1.0e-4}\n"
    )
    (tmp_path / "frag.yaml").write_text("scorer: {stride: 32}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "inherit: [../base.yaml, ../frag.yaml]\nscheme: sparse:0.1\ntrain: {max_steps: 3}\n"
    )
    config = load_config(tmp_path / "sub" / "child.yaml", ["train.seed=7"])
    assert config.model.dtype == "bf16"
    assert config.scheme == Scheme.sparse(0.1)  # replaced whole, not merged with lambda
    assert (config.scorer.window, config.scorer.stride) == (64, 32)
    assert (config.train.max_steps, config.train.learning_rate, config.train.seed) == (3, 1e-4, 7)


def test_inherit_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(TokenWeightError, match="circular"):
        load_raw_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("inherit: missing.yaml\n")
    with pytest.raises(TokenWeightError, match="config file not found"):
        load_raw_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("model: [unclosed\n")
    with pytest.raises(TokenWeightError, match="not valid YAML"):
        load_raw_config(tmp_path / "d.yaml")


def test_overrides_create_nested_keys():
    data = apply_overrides({"train": {"seed": 1}}, ["train.seed=2", "model.lora.r=4", "x=null"])
    assert data == {"train": {"seed": 2}, "model": {"lora": {"r": 4}}, "x": None}


COMPLETE = sorted(
    p
    for p in CONFIGS.rglob("*.yaml")
    if not {"accelerate", "study"} & set(p.relative_to(CONFIGS).parts)
    and not p.name.startswith(("scorer_", "base"))
)


def test_the_paper_grid_is_complete():
    names = {p.stem for p in COMPLETE if p.parent.name == "paper"}
    expected = {"uniform"} | {
        f"{s}_{k}"
        for s in ("dense", "sparse", "longce", "ppmi", "npmi")
        for k in ("self", "precomputed", "small")
    }
    assert names == expected


@pytest.mark.parametrize("path", COMPLETE, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_validate(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # relative paths are from the repository root
    config = load_config(path)
    if path.parent.name == "paper":
        assert config.model.source == "meta-llama/Meta-Llama-3-8B"
        assert config.model.rope_theta == 15.3e6
        assert config.model.max_position_embeddings == 32768
        assert (config.scorer.window, config.scorer.stride) == (8192, 6144)
        t = config.train
        assert (t.learning_rate, t.betas, t.eps, t.weight_decay) == (2e-5, (0.9, 0.95), 1e-8, 0.01)
        assert (t.scheduler, t.warmup_steps, t.max_steps) == ("constant_with_warmup", 20, 240)
        assert (t.micro_batch_size, t.gradient_accumulation_steps, t.max_grad_norm) == (1, 16, 1.0)
        assert t.deepspeed == "configs/deepspeed/zero3_offload.json" and t.bf16
        assert Path(t.deepspeed).is_file()
        kind = path.stem.rsplit("_", 1)[-1]
        assert (
            config.scorer_kind
            == {
                "self": "self",
                "precomputed": "precomputed",
                "small": "model",
                "uniform": "none",
            }[kind]
        )
    if config.train.fsdp_config is not None:
        assert Path(config.train.fsdp_config).is_file()


def test_cpu_config_makes_training_arguments(monkeypatch, tmp_path):
    monkeypatch.chdir(CONFIGS.parent)
    config = load_config(CONFIGS / "cpu" / "smollm2.yaml", [f"train.output_dir={tmp_path}"])
    args = to_training_arguments(config)
    assert args.learning_rate == config.train.learning_rate
    assert (args.adam_beta1, args.adam_beta2) == config.train.betas
    assert args.gradient_accumulation_steps == config.train.gradient_accumulation_steps
    assert args.per_device_train_batch_size == config.train.micro_batch_size
    assert args.max_steps == config.train.max_steps and args.warmup_steps == 2
    assert args.lr_scheduler_type == "constant_with_warmup"
    assert args.save_steps == 6 and args.logging_steps == 1
    assert args.remove_unused_columns is False and args.average_tokens_across_devices
    assert args.gradient_checkpointing and args.use_cpu
    assert args.train_sampling_strategy == "random"
    with pytest.raises(TokenWeightError, match=r"train\.deepspeed: file not found"):
        to_training_arguments(load_config(CONFIGS / "cpu" / "smollm2.yaml", ["train.deepspeed=x"]))
    bad = load_config(
        CONFIGS / "cpu" / "smollm2.yaml", ["train.training_arguments={learning_rat: 1}"]
    )
    with pytest.raises(TokenWeightError, match=r"train\.training_arguments\.learning_rat"):
        to_training_arguments(bad)
