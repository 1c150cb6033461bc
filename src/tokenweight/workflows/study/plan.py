"""Before any work: every setting checked (the config, the start model, the data folders,
the device) and the plan printed; how many steps a study logs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenweight.infra.errors import TokenWeightError
from tokenweight.workflows.study.config import StudyConfig, sequence_length

__all__ = ["CheckedStudy", "check_data", "check_study", "plan_text", "step_count"]


def plan_text(config: StudyConfig) -> str:
    """The plan: runs, data, steps and what each step does (the cost estimate of
    ``--dry-run`` follows it, :mod:`tokenweight.workflows.study.cost`)."""
    n = sequence_length(config)
    specs = config.run_specs
    tokens = config.max_steps * config.micro_batch_size * config.gradient_accumulation_steps * n
    lines = [
        f"study in {config.work_dir}: {len(specs)} runs x {len(config.seeds)} seeds "
        f"({', '.join(map(str, config.seeds))}) = {len(specs) * len(config.seeds)} trainings",
        f"  model {config.model}; original context {config.window} tokens; sequences of {n} "
        f"tokens ({n / config.window:g}x)"
        + (f"; RoPE theta {config.rope_theta:g}" if config.rope_theta else ""),
        "  data: "
        + (
            f"{config.data} (held out: {config.eval_data})"
            if config.data
            else f"synthetic {config.synth}"
        ),
        f"  each training: {config.max_steps} steps x {config.micro_batch_size * config.gradient_accumulation_steps} "
        f"sequences = {tokens:,} tokens",
    ]
    if config.model == "tiny":
        p = config.pretrain
        lines.append(
            f"  start model: a tiny Llama {config.tiny}, pretrained {p['steps']} steps x "
            f"{p['batch']} synthetic sequences of {config.window} tokens (copies at "
            f"{p['distances']})"
        )
    for i, r in enumerate(specs):
        tag = " (baseline)" if i == config.baseline else ""
        lines.append(f"  run {i}: {r.label()}{tag}")
    needs_scores = any(r.kind.stored_scores or r.data == "selected" for r in specs)
    if needs_scores:
        lines.append(f"  scoring: the start model, window {config.window}, with long NLL")
    if any(r.data == "selected" for r in specs):
        lines.append(f"  selection: top {config.select_top:.0%} of documents by {config.select_by}")
    models = len(specs) * len(config.seeds) + 1
    lines.append(
        f"  evaluation: {models} models x {config.eval_sequences} held-out sequences; "
        f"start model also at windows of {config.window} (LongPPL key tokens)"
    )
    if config.probes:
        lengths = config.probe_lengths or [n]
        count = len(config.probes) * len(lengths) * len(config.probe_depths)
        lines.append(
            f"  probes: {', '.join(config.probes)} at {lengths} tokens, depths "
            f"{config.probe_depths}, {config.probe_trials} trials = "
            f"{count * config.probe_trials} prompts per model"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class CheckedStudy:
    """A study whose settings passed every check: the start model's folder, and the
    device (``None`` when this machine lacks it, ``device_error`` saying why)."""

    model_dir: Path
    device: str | None
    device_error: str | None = None


def check_study(config: StudyConfig, log: Callable[[str], None] = print) -> CheckedStudy:
    """Check every setting (the config, the start model, the data folders, the device)
    and print the plan; nothing is written."""
    from tokenweight.infra.models import default_cache_dir, ensure_local_model, resolve_device

    config.validate()
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    work = Path(config.work_dir)
    model_dir = (
        work / "start" / "model"
        if config.model == "tiny"
        else Path(str(ensure_local_model(config.model, cache)))
    )
    check_data(config)
    log(plan_text(config))
    try:
        return CheckedStudy(model_dir, str(resolve_device(config.device)))
    except TokenWeightError as exc:
        return CheckedStudy(model_dir, None, str(exc))


def check_data(config: StudyConfig) -> None:
    """``data`` and ``eval_data``, when given, are prepared (or scored) folders."""
    from tokenweight.data import read_manifest

    for key in ("data", "eval_data"):
        folder = getattr(config, key)
        if folder is None:
            continue
        try:
            read_manifest(folder)
        except TokenWeightError as exc:
            try:
                read_manifest(folder, "scored")
            except TokenWeightError:
                raise TokenWeightError(f"{key}: {exc}") from None


def step_count(config: StudyConfig) -> int:
    """How many steps :func:`run_study` logs (for the ``[k/total]`` prefix)."""
    specs = config.run_specs
    needs_scores = any(r.kind.stored_scores or r.data == "selected" for r in specs)
    needs_select = any(r.data == "selected" for r in specs)
    tiny = config.model == "tiny"
    # (pretrain) data (score) (select) trainings evaluate report
    return tiny + 1 + needs_scores + needs_select + len(specs) * len(config.seeds) + 2
