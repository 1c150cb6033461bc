"""Sections embedded in a larger config: a parent's defaults, shorthand, scalar values and
fixed fields, checked with a small parent config of its own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from tokenweight.infra.config_sections import (
    coerce_sections,
    expand_config,
    flat_settings,
    plain_config,
    section,
    shorthand_of,
)
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import build_dataclass
from tokenweight.training.config import (
    Config,
    ModelConfig,
    TrainConfig,
    config_from_sections,
    load_config,
)


@dataclass
class Parent:
    name: str = "job"
    model: ModelConfig = section(
        ModelConfig, defaults={"source": "start"}, scalar="source", shorthand=("dtype",)
    )
    train: TrainConfig = section(
        TrainConfig,
        defaults={"max_steps": 3, "learning_rate": 1e-3},
        shorthand=("max_steps", "warmup_steps"),
        fixed={"output_dir": "set by the job from name"},
    )

    def __post_init__(self) -> None:
        coerce_sections(self)


def load(data, overrides=()):
    return build_dataclass(Parent, expand_config(Parent, data, overrides))


def test_defaults_of_the_parent_under_what_the_user_gives():
    assert Parent().train.max_steps == 3 and Parent().train.learning_rate == 1e-3
    # a partial section keeps the parent's defaults, the rest the section's own
    config = load({"train": {"weight_decay": 0}})
    assert (config.train.max_steps, config.train.learning_rate) == (3, 1e-3)
    assert config.train.weight_decay == 0 and config.train.warmup_steps == 20
    assert config.model.source == "start" and config.model.dtype == "auto"


def test_shorthand_scalar_and_section_spellings_are_one_setting():
    nested = load({"model": {"source": "m", "dtype": "bf16"}, "train": {"max_steps": 9}})
    assert load({"model": "m", "dtype": "bf16", "max_steps": 9}) == nested
    assert load({}, ["model=m", "dtype=bf16", "max_steps=9"]) == nested
    assert load({}, ["model.source=m", "model.dtype=bf16", "train.max_steps=9"]) == nested
    # a file's scalar section, then an override of one of its keys
    assert load({"model": "m"}, ["model.dtype=bf16", "train.max_steps=9"]) == nested
    # overrides win over the file, whichever spelling each uses
    assert load({"train": {"max_steps": 2}}, ["max_steps=9", "model={source: m}"]).train == (
        nested.train
    )
    assert shorthand_of(Parent) == {"dtype": "model", "max_steps": "train", "warmup_steps": "train"}


def test_both_spellings_in_one_file_unknown_and_fixed_keys_are_errors():
    with pytest.raises(TokenWeightError, match=r"max_steps and train\.max_steps: the same"):
        load({"max_steps": 4, "train": {"max_steps": 5}})
    with pytest.raises(TokenWeightError, match=r"^colour: unknown key; .*max_steps \(train\."):
        load({"colour": 1})
    with pytest.raises(TokenWeightError, match=r"^train\.colour: unknown key; allowed in train"):
        load({}, ["train.colour=1"])
    with pytest.raises(TokenWeightError, match=r"^train\.output_dir: set by the job from name"):
        load({}, ["train.output_dir=x"])
    with pytest.raises(TokenWeightError, match=r"^train\.output_dir: set by the job"):
        Parent(train={"output_dir": "x"})  # a mapping given in Python is checked too


def test_values_are_checked_by_the_sections_own_rules():
    """The same message as the training config gives for the same dotted key."""
    for override in ("warmup_steps=-1", "max_steps=0", "dtype=fp8", "max_steps=[1]"):
        key, value = override.split("=")
        dotted = f"{shorthand_of(Parent)[key]}.{key}={value}"
        with pytest.raises(TokenWeightError) as ours:
            load({}, [override])
        with pytest.raises(TokenWeightError) as training:
            load_config(None, [dotted], base={"model": {"source": "m"}, "data": {"path": "d"}})
        assert str(ours.value) == str(training.value), override


def test_plain_config_reads_back_and_leaves_out_fixed_fields():
    config = load({"model": "m", "max_steps": 9})
    data = plain_config(config)
    assert "output_dir" not in data["train"] and data["train"]["betas"] == [0.9, 0.95]
    assert load(data) == config
    rows = dict(flat_settings(config))
    assert rows["name"] == "job" and rows["train.max_steps"] == 9 and rows["model.source"] == "m"
    assert "train.output_dir" not in rows


def test_config_from_sections_is_the_training_config_with_the_parents_values():
    config = load({"model": "m", "max_steps": 9, "train": {"seed": 5}})
    values = {"train.output_dir": "out", "data.path": "d", "scorer.kind": "precomputed"}
    built = config_from_sections(config, "dense:0.75", values)
    # independently: the training config written out by hand
    expected = Config.from_dict(
        {
            "model": {"source": "m"},
            "data": {"path": "d"},
            "scheme": "dense:0.75",
            "scorer": {"kind": "precomputed"},
            "train": {"output_dir": "out", "max_steps": 9, "learning_rate": 1e-3, "seed": 5},
        }
    )
    assert built == expected
    # the training config's own cross-field checks apply
    with pytest.raises(TokenWeightError, match=r"model\.dtype: fp16 weights with train\.bf16"):
        config_from_sections(
            load({"dtype": "fp16", "train": {"bf16": True}}),
            "uniform",
            {"train.output_dir": "out", "data.path": "d"},
        )
    # a field the parent declares fixed must be given
    with pytest.raises(TypeError, match=r"train\.output_dir"):
        config_from_sections(config, "uniform", {"data.path": "d"})


def test_a_declaration_naming_no_field_is_a_bug_caught_at_import():
    with pytest.raises(TypeError, match="no field"):
        section(TrainConfig, shorthand=("max_stepz",))
    with pytest.raises(TypeError, match="fixed fields"):
        section(TrainConfig, defaults={"output_dir": "x"}, fixed={"output_dir": "ours"})
    assert [f.name for f in dataclasses.fields(Parent)] == ["name", "model", "train"]
