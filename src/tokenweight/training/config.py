"""Training configuration: YAML files validated into typed dataclasses.

A config has five sections::

    inherit: base.yaml          # optional: file(s) this one extends, relative to this file
    model:   {source, dtype, attn_implementation, gradient_checkpointing, rope_theta, ...}
    data:    {path, seq_len}
    scheme:  dense:0.75         # text or mapping, see tokenweight.core.weighting.Scheme
    scorer:  {kind, model, window, stride, windows_per_batch, dtype}
    train:   {output_dir, learning_rate, betas, ..., deepspeed, fsdp, bf16}

``inherit`` files are merged first (later ones win), then this file on top; mappings
merge key by key, everything else (including ``scheme``) is replaced whole. Command-line
overrides ``key.sub=value`` are applied last, their values read as YAML scalars
(``train.learning_rate=3e-5``, ``model.lora=null``, ``train.report_to=[tensorboard]``).

Every unknown key and every bad value is a :class:`TokenWeightError` naming the dotted
key, e.g. ``train.learning_rate: expected a number, got 'abc'``. Relative paths inside a
config (data, models, output folder) are taken from the current directory. Config
references — the file itself, ``inherit`` entries (relative to the file that names them),
``train.deepspeed`` and ``train.fsdp_config`` — are files first and packaged configs
second (``paper/base.yaml``, ``configs/deepspeed/zero2.json``): see
:mod:`tokenweight.infra.config_files`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenweight.core.scorer_kinds import (
    DEFAULT_SCORER,
    SCORERS,
    ScorerKind,
    scorer_kind,
    uniform_kind,
)
from tokenweight.core.weighting import Scheme
from tokenweight.infra.config_files import (
    INHERIT_KEY,
    LIST_HINT,
    load_raw_config,
    merge_configs,
    resolve_config_paths,
)
from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.schema import (
    apply_overrides,
    at_least_two,
    build_dataclass,
    checked,
    non_negative,
    one_of,
    one_of_table,
    positive,
    probability,
    seed_range,
)

__all__ = [
    "Config",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "ScorerConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_sections",
    "load_config",
    "load_raw_config",
    "to_training_arguments",
]

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)


# ------------------------------------------------------------------ field checks
def _betas(value: tuple[float, float]) -> str | None:
    return None if all(0 <= b < 1 for b in value) else "each beta must be in [0, 1)"


# ------------------------------------------------------------------ sections
@dataclass
class LoraConfig:
    """Low-rank adapters through ``peft`` (``pip install 'tokenweight[peft]'``)."""

    r: int = field(default=16, metadata=checked(positive))
    alpha: float = field(default=32.0, metadata=checked(positive))
    dropout: float = field(default=0.0, metadata=checked(probability))
    target_modules: str | list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class ModelConfig:
    """The model to train and how to load it.

    ``source``: a local folder, a hub name, a GGUF model folder, or ``smollm2`` for the
    embedded default (SmolLM2-135M, converted once and cached under ``cache_dir``).
    ``rope_theta`` / ``max_position_embeddings`` extend the context at load time; the
    frozen ``model`` scorer keeps the original values.
    """

    source: str | None = None
    dtype: str = field(default="auto", metadata=one_of(*DTYPES))
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    rope_theta: float | None = field(default=None, metadata=checked(positive))
    max_position_embeddings: int | None = field(default=None, metadata=checked(positive))
    cache_dir: str | None = None
    lora: LoraConfig | None = None


@dataclass
class DataConfig:
    """Prepared (``tokenweight prepare``) or scored (``tokenweight score``) data.

    ``seq_len``, when given, must equal the manifest's sequence length (a guard against
    pointing a 32K config at 8K data).
    """

    path: str | None = None
    seq_len: int | None = field(default=None, metadata=checked(at_least_two))


@dataclass
class ScorerConfig:
    """Where the short-context NLL comes from (``docs/method.md#scorers``).

    ``self``: the model being trained, windows without gradient every step. ``model``: a
    frozen model (``model``; default: ``model.source`` at its original RoPE settings),
    e.g. a smaller one sharing the tokenizer. ``reference``: a separate frozen reference
    model (``model``, required) over the *full* sequence, Rho-1 style (excess loss
    ``l - s_ref``; ``window`` unused). ``precomputed``: ``short_nll`` stored by
    ``tokenweight score`` (the paper's frozen scorer). ``none``: only for ``uniform``.
    """

    kind: str = field(default=DEFAULT_SCORER, metadata=one_of_table(SCORERS))
    model: str | None = None
    window: int | None = field(default=None, metadata=checked(at_least_two))
    stride: int | None = field(default=None, metadata=checked(positive))
    windows_per_batch: int | None = field(default=None, metadata=checked(positive))
    dtype: str = field(default="auto", metadata=one_of(*DTYPES))
    device: str | None = None


@dataclass
class TrainConfig:
    """Optimizer, schedule, batch, checkpoints, logging and the distributed backend.

    The effective batch of one optimizer step is ``micro_batch_size *
    gradient_accumulation_steps * number of processes`` sequences. ``deepspeed`` is a
    DeepSpeed JSON file (``configs/deepspeed/``); ``fsdp: true`` turns on FSDP with the
    settings of ``fsdp_config`` (a JSON file such as ``configs/fsdp/llama.json``, or a
    mapping); older transformers also take option text such as ``"full_shard auto_wrap"``.
    ``training_arguments`` passes any further ``transformers.TrainingArguments`` field.
    ``sequence_parallel: N`` splits every sequence over ``N`` processes (DeepSpeed
    Ulysses, see :mod:`tokenweight.training.sequence_parallel`); needs ``deepspeed``.
    ``push_to_hub`` / ``hub_model_id`` go to the Trainer: it creates the Hub repository
    (``hub_model_id``, default: the output folder's name) when training starts and uploads
    the output folder, model card included, at each save and at the end (further
    ``hub_*`` settings through ``training_arguments``).
    """

    output_dir: str = "runs/tokenweight"
    learning_rate: float = field(default=2e-5, metadata=checked(positive))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=checked(_betas))
    eps: float = field(default=1e-8, metadata=checked(positive))
    weight_decay: float = field(default=0.01, metadata=checked(non_negative))
    scheduler: str = field(default="constant_with_warmup", metadata=one_of(*SCHEDULERS))
    warmup_steps: int = field(default=20, metadata=checked(non_negative))
    max_steps: int = field(default=240, metadata=checked(positive))
    micro_batch_size: int = field(default=1, metadata=checked(positive))
    gradient_accumulation_steps: int = field(default=16, metadata=checked(positive))
    max_grad_norm: float = field(default=1.0, metadata=checked(non_negative))
    seed: int = field(default=42, metadata=checked(seed_range))
    shuffle: bool = True
    save_steps: int = field(default=20, metadata=checked(positive))
    save_total_limit: int | None = field(default=None, metadata=checked(positive))
    logging_steps: int = field(default=1, metadata=checked(positive))
    report_to: list[str] = field(default_factory=lambda: ["none"])
    run_name: str | None = None
    bf16: bool = False
    use_cpu: bool = False
    deepspeed: str | None = None
    fsdp: bool | str | None = None
    fsdp_config: str | dict[str, Any] | None = None
    dataloader_num_workers: int = field(default=0, metadata=checked(non_negative))
    sequence_parallel: int = field(default=1, metadata=checked(positive))
    push_to_hub: bool = False
    hub_model_id: str | None = None
    training_arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    """A validated training configuration (see the module docstring for the layout)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scheme: Scheme = field(default_factory=Scheme.uniform)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Validate a plain mapping (as read from YAML) into a :class:`Config`."""
        config = build_dataclass(cls, data, "")
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` reads back (``scheme`` as its text form)."""
        out = dataclasses.asdict(self)
        out["scheme"] = str(self.scheme)
        out["train"]["betas"] = list(self.train.betas)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def used_scorer(self) -> ScorerKind:
        """The scorer kind actually used: the uniform-only one for the uniform scheme,
        else ``scorer.kind``."""
        if self.scheme.is_uniform:
            return uniform_kind()
        return scorer_kind(self.scorer.kind)

    @property
    def scorer_kind(self) -> str:
        """The name of :attr:`used_scorer`."""
        return self.used_scorer.name

    def validate(self) -> None:
        """Checks that involve more than one field; raises :class:`TokenWeightError`."""
        if not self.model.source:
            raise TokenWeightError(
                "model.source: required; give a local model folder, a hub name, a GGUF "
                "folder or 'smollm2' (the embedded default)"
            )
        if not self.data.path:
            raise TokenWeightError(
                "data.path: required; give the folder written by `tokenweight prepare` "
                "(or by `tokenweight score` for the precomputed scorer)"
            )
        kind = self.scorer.kind
        spec = scorer_kind(kind)
        if spec.uniform_only and not self.scheme.is_uniform:
            others = ", ".join(k.name for k in SCORERS.values() if not k.uniform_only)
            raise TokenWeightError(
                f"scorer.kind: {kind!r} only works with the uniform scheme, but scheme is "
                f"{self.scheme}; choose one of {others}"
            )
        if self.used_scorer.window and self.scorer.window is None:
            raise TokenWeightError(
                f"scorer.window: required for the {kind!r} scorer (the short context in "
                "tokens, usually the model's native context, e.g. 8192 for Llama-3)"
            )
        if (
            self.scorer.window is not None
            and self.scorer.stride is not None
            and self.scorer.stride >= self.scorer.window
        ):
            raise TokenWeightError(
                f"scorer.stride: must be smaller than scorer.window ({self.scorer.window}), "
                f"got {self.scorer.stride}"
            )
        if self.scorer.model is not None and not spec.uses_model:
            users = " or ".join(repr(k.name) for k in SCORERS.values() if k.uses_model)
            raise TokenWeightError(
                f"scorer.model: only used with scorer.kind {users}, but kind is {kind!r}"
            )
        if self.used_scorer.model == "required" and not self.scorer.model:
            raise TokenWeightError(
                f"scorer.model: required for the {kind!r} scorer (e.g. a reference model "
                "trained on curated data, sharing the tokenizer)"
            )
        if (
            self.model.max_position_embeddings is not None
            and self.data.seq_len is not None
            and self.data.seq_len > self.model.max_position_embeddings
        ):
            raise TokenWeightError(
                f"model.max_position_embeddings: {self.model.max_position_embeddings} is "
                f"shorter than data.seq_len {self.data.seq_len}"
            )
        if self.train.deepspeed and self.train.fsdp:
            raise TokenWeightError("train.deepspeed and train.fsdp: choose one, not both")
        if self.train.sequence_parallel > 1 and not self.train.deepspeed:
            raise TokenWeightError(
                "train.sequence_parallel: needs DeepSpeed (Ulysses); set train.deepspeed to a "
                "ZeRO config such as configs/deepspeed/zero3.json"
            )
        if self.train.hub_model_id is not None and not self.train.push_to_hub:
            raise TokenWeightError(
                "train.hub_model_id: only used with train.push_to_hub: true; set "
                "train.push_to_hub=true to upload, or remove train.hub_model_id"
            )
        if self.train.bf16 and _is_fp16(self.model.dtype):
            raise TokenWeightError("model.dtype: fp16 weights with train.bf16 do not mix")


def _is_fp16(dtype: str) -> bool:
    return dtype in ("float16", "fp16")


# ------------------------------------------------------------------ files and overrides
def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Read, merge, override and validate a config.

    Args:
        path: a YAML file (with optional ``inherit``), or ``None`` for ``base`` alone.
        overrides: ``key.sub=value`` strings applied last.
        base: a mapping merged below the file (used by callers that build configs in code).
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge_configs(data, load_raw_config(path))
    data.pop(INHERIT_KEY, None)
    return Config.from_dict(resolve_config_paths(apply_overrides(data, overrides)))


# ------------------------------------------------------------------ embedded sections
def config_from_sections(
    parent: Any | None, scheme: str | Scheme, values: Mapping[str, Any] | None = None
) -> Config:
    """The training :class:`Config` of one run of a workflow whose config embeds the
    training sections (:mod:`tokenweight.infra.config_sections`).

    Args:
        parent: the workflow's config; each of its fields named like a section of
            :class:`Config` and holding that section's type (e.g. ``parent.train``, a
            :class:`TrainConfig`) is taken as it is; a section it lacks keeps the training
            defaults. ``None``: every section from the training defaults and ``values``.
        scheme: the run's weighting scheme.
        values: dotted keys the workflow sets for this run (``{"train.output_dir": ...,
            "model.source": <local folder>}``), on top of the sections; it must set every
            field the parent declares ``fixed``.

    Validated like any training config (:meth:`Config.from_dict`): every check of the
    sections and of :meth:`Config.validate` applies, with errors naming the dotted key.
    """
    from tokenweight.infra.config_sections import sections_of

    values = dict(values or {})
    declared = sections_of(type(parent)) if parent is not None else {}
    missing = [
        f"{name}.{key}"
        for name, spec in declared.items()
        for key in spec.fixed
        if f"{name}.{key}" not in values
    ]
    if missing:  # the workflow's own mistake: it declared a field it does not set
        raise TypeError(f"config_from_sections: fixed fields not set: {missing}")
    data: dict[str, Any] = {"scheme": str(scheme)}
    for name, kind in typing.get_type_hints(Config).items():
        section = getattr(parent, name, None)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(section, kind):
            data[name] = dataclasses.asdict(section)
    for dotted, value in values.items():
        name, _, key = dotted.partition(".")
        data.setdefault(name, {})[key] = value
    return Config.from_dict(data)


# ------------------------------------------------------------------ TrainingArguments
def _training_argument_names() -> set[str]:
    import transformers

    return {f.name for f in dataclasses.fields(transformers.TrainingArguments)}


def to_training_arguments(config: Config, **extra: Any) -> Any:
    """The ``transformers.TrainingArguments`` for ``config`` (``extra`` wins over it).

    Fixed choices: checkpoints every ``save_steps`` in safetensors, a log line every
    ``logging_steps`` steps, ``remove_unused_columns=False`` (the collator needs the
    score columns), no DDP buffer broadcast (the self scorer runs extra forwards whose
    number must not have to match across processes), no unused-parameter search.
    """
    import transformers

    names = _training_argument_names()
    _check_training_files(config.train, names)
    kwargs = {k: v for k, v in _trainer_settings(config, names).items() if k in names}
    kwargs.update(config.train.training_arguments)
    kwargs.update(extra)
    try:
        return transformers.TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as exc:
        raise TokenWeightError(f"train: the Trainer refused these settings: {exc}") from None


def _check_training_files(t: TrainConfig, names: set[str]) -> None:
    """Refuse unknown ``train.training_arguments`` keys and missing DeepSpeed/FSDP files."""
    for key in t.training_arguments:
        if key not in names:
            raise TokenWeightError(
                f"train.training_arguments.{key}: not a field of transformers.TrainingArguments"
            )
    if t.deepspeed is not None and not Path(t.deepspeed).is_file():
        raise TokenWeightError(f"train.deepspeed: file not found: {t.deepspeed}; {LIST_HINT}")
    if isinstance(t.fsdp_config, str) and not Path(t.fsdp_config).is_file():
        raise TokenWeightError(f"train.fsdp_config: file not found: {t.fsdp_config}; {LIST_HINT}")


# A long but flat table: one ``TrainingArguments`` field per line, so that each setting the
# config controls (and each fixed choice) is found in one place.
def _trainer_settings(config: Config, names: set[str]) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments from the config (``names``: the fields this
    transformers release has; older releases call activation checkpointing
    ``gradient_checkpointing``)."""
    t = config.train
    checkpointing = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    kwargs: dict[str, Any] = {
        "output_dir": t.output_dir,
        "learning_rate": t.learning_rate,
        "adam_beta1": t.betas[0],
        "adam_beta2": t.betas[1],
        "adam_epsilon": t.eps,
        "weight_decay": t.weight_decay,
        "optim": "adamw_torch",
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_steps,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "train_sampling_strategy": "random" if t.shuffle else "sequential",
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "logging_strategy": "steps",
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "report_to": t.report_to,
        "bf16": t.bf16,
        "use_cpu": t.use_cpu,
        "deepspeed": t.deepspeed,
        "dataloader_num_workers": t.dataloader_num_workers,
        "remove_unused_columns": False,
        "ddp_broadcast_buffers": False,
        "ddp_find_unused_parameters": False,
        "average_tokens_across_devices": True,
        "push_to_hub": t.push_to_hub,
        "hub_model_id": t.hub_model_id,
        checkpointing: config.model.gradient_checkpointing,
        f"{checkpointing}_kwargs": {"use_reentrant": False}
        if config.model.gradient_checkpointing
        else None,
    }
    if t.run_name is not None:
        kwargs["run_name"] = t.run_name
    if t.fsdp:
        kwargs["fsdp"] = t.fsdp
        if t.fsdp_config is not None:
            kwargs["fsdp_config"] = t.fsdp_config
    return kwargs
