"""The study's training settings are the training config's ``train`` section: the flat
spelling of every existing study file and the nested one load equal, and each run's
training config (and the tiny model's pretraining config) equals the one the study built
by hand before it embedded the section, written out here field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenweight.infra.config_sections import plain_config
from tokenweight.training.config import Config
from tokenweight.workflows.study import StudyConfig, load_study_config
from tokenweight.workflows.study.config import RunSpec, train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "study_tiny.yaml"
FLAT = (
    "max_steps",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "bf16",
)


def _hand_built(
    config: StudyConfig,
    spec: RunSpec,
    seed: int,
    model_dir: Path,
    data: Path,
    out: Path,
    device: str,
    pretrain: bool = False,
) -> dict[str, Any]:
    """The training config as the study wrote it out by hand from its flat fields."""
    t, p, kind = config.train, config.pretrain, spec.kind
    return {
        "model": {
            "source": str(model_dir),
            "dtype": config.dtype,
            "attn_implementation": config.attn_implementation,
            "gradient_checkpointing": config.gradient_checkpointing,
            "rope_theta": None if pretrain else config.rope_theta,
            "max_position_embeddings": None if pretrain else config.max_position_embeddings,
        },
        "data": {"path": str(data)},
        "scheme": spec.scheme,
        "scorer": {
            "kind": kind.name,
            "window": config.window if kind.window else None,
            "stride": config.stride if kind.window else None,
            "model": spec.reference_model if kind.uses_model else None,
        },
        "train": {
            "output_dir": str(out),
            "learning_rate": p["learning_rate"] if pretrain else t.learning_rate,
            "scheduler": "cosine" if pretrain else "constant_with_warmup",
            "warmup_steps": max(1, p["steps"] // 20) if pretrain else t.warmup_steps,
            "max_steps": p["steps"] if pretrain else t.max_steps,
            "micro_batch_size": p["batch"] if pretrain else t.micro_batch_size,
            "gradient_accumulation_steps": 1 if pretrain else t.gradient_accumulation_steps,
            "seed": seed,
            "save_steps": p["steps"] if pretrain else t.max_steps,
            "save_total_limit": 1,
            "logging_steps": max(1, p["steps"] // 20) if pretrain else 1,
            "bf16": t.bf16,
            "use_cpu": device == "cpu",
            "training_arguments": {"disable_tqdm": True},
        },
    }


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with its training keys moved into a ``train`` section."""
    out = {k: v for k, v in flat.items() if k not in FLAT}
    out["train"] = {k: flat[k] for k in FLAT if k in flat}
    return out


def test_flat_and_nested_spellings_load_equal(tmp_path):
    flat = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    assert set(FLAT) - {"gradient_accumulation_steps", "bf16"} <= set(flat)
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump(_nested(flat)), encoding="utf-8")
    old, new = load_study_config(TINY), load_study_config(nested)
    assert old == new
    assert (old.train.max_steps, old.train.micro_batch_size) == (8, 4)
    assert (old.train.learning_rate, old.train.warmup_steps) == (1e-3, 1)
    # an override in either spelling, on either file
    for path in (TINY, nested):
        for key in ("max_steps", "train.max_steps"):
            assert load_study_config(path, [f"{key}=3"]).train.max_steps == 3
    # the study's defaults, not the training config's, when nothing is given
    default = StudyConfig()
    assert default.train.max_steps == 8 and default.train.gradient_accumulation_steps == 1
    assert default.train.learning_rate == 1e-4 and default.train.warmup_steps == 0
    assert StudyConfig(train={"max_steps": 3}).train.learning_rate == 1e-4


def test_study_json_config_reads_back_equal(tmp_path):
    config = load_study_config(TINY, ["warmup_steps=2", "train.weight_decay=0"])
    plain = plain_config(config)  # study.json's "config"
    assert "output_dir" not in plain["train"] and "seed" not in plain["train"]
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(plain), encoding="utf-8")
    assert load_study_config(path) == config


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "max_steps=5",
            "warmup_steps=2",
            "gradient_accumulation_steps=3",
            "micro_batch_size=2",
            "learning_rate=2e-4",
            "bf16=true",
            "stride=16",
            "dtype=bf16",
            "gradient_checkpointing=true",
        ],
    ],
)
def test_run_configs_equal_the_hand_built_ones(overrides, tmp_path):
    runs = (
        "runs=[{scheme: uniform}, {scheme: 'dense:0.75', scorer: self},"
        " {scheme: 'sparse:0.5', scorer: precomputed},"
        " {scheme: 'longce:5', scorer: reference, reference_model: ref}]"
    )
    config = load_study_config(TINY, [runs, *overrides])
    folders = (tmp_path / "start", tmp_path / "data", tmp_path / "out")
    for device in ("cpu", "cuda"):
        for spec in config.run_specs:
            built = train_config(config, spec, 7, *folders, device)
            expected = Config.from_dict(_hand_built(config, spec, 7, *folders, device))
            assert built.to_dict() == expected.to_dict()
        built = train_config(config, RunSpec(), 0, *folders, device, pretrain=True)
        expected = Config.from_dict(
            _hand_built(config, RunSpec(), 0, *folders, device, pretrain=True)
        )
        assert built.to_dict() == expected.to_dict()


def test_the_study_page_states_the_train_defaults_fixed_keys_and_shorthand():
    import re

    from tokenweight.infra.config_sections import sections_of, shorthand_of

    page = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    settings = page[page.index("### Settings") : page.index("### What the report concludes")]
    (text,) = re.findall(r"`train: (\{.*?\}\})`", settings, flags=re.DOTALL)
    stated = yaml.safe_load(text.replace("\n", " "))
    specs = sections_of(StudyConfig)
    assert set(specs) == {"train"}
    assert stated == dict(specs["train"].defaults)
    for key in specs["train"].fixed:
        assert f"`train.{key}`" in settings, key
    for key in shorthand_of(StudyConfig):
        assert f"`{key}`" in settings, key
