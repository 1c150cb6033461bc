"""The model card ``tokenweight train`` writes as ``README.md`` in its output folder.

The card follows the Hugging Face Hub's model-card format: YAML metadata between ``---``
lines (what the Hub reads: ``library_name``, ``license``, ``base_model``, ``datasets``,
``tags``, ``pipeline_tag``), then markdown: what was trained and how, the data's
fingerprint, the steps and final loss, the command that reproduces the run and the
citation of the method. ``push_to_hub`` (or a manual upload of the folder) carries it.

The card is the tool's own file only while it is unchanged: its last line records a hash
of the text above it, and :func:`write_model_card` replaces a ``README.md`` only when it
is absent or is such an unchanged card. A ``README.md`` that someone wrote or edited is
left alone (the card then goes to :data:`CARD_FALLBACK` instead).

:func:`model_card_text` is pure: facts in, text out.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenweight.infra.files import atomic_write_text, sha256_bytes

__all__ = [
    "CARD_FALLBACK",
    "CARD_NAME",
    "CardFacts",
    "card_is_ours",
    "model_card_text",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
CARD_FALLBACK = "tokenweight_model_card.md"  # where the card goes when README.md is a user's
_SEAL = re.compile(r"\n<!-- tokenweight model card sha256:([0-9a-f]{64}) -->\n\Z")

CITATION = """\
@inproceedings{helm2025tokenweighting,
  title     = {Token Weighting for Long-Range Language Modeling},
  author    = {Helm, Falko and Daheim, Nico and Gurevych, Iryna},
  booktitle = {Findings of the Association for Computational Linguistics: NAACL 2025},
  year      = {2025},
  publisher = {Association for Computational Linguistics},
  url       = {https://arxiv.org/abs/2503.09202}
}"""


@dataclass(frozen=True)
class CardFacts:
    """What the card says about one finished run (every field plain data).

    ``base_model`` / ``license``: a Hub repository id and a license identifier, when
    known (a local start model has neither); ``source``: the start model as configured.
    ``data``: facts of the training data (``path``, ``sequences``, ``seq_len``,
    ``fingerprint``, ``tokenizer``); ``datasets``: Hub dataset ids it was prepared from.
    ``settings``: ``(name, value)`` rows of the training table. ``command``: the command
    line that reproduces the run.
    """

    name: str
    source: str
    scheme: str
    scorer: str
    steps: int
    final_loss: float | None
    mean_loss: float | None
    loss_steps: tuple[int, int] | None
    command: str
    tokenweight_version: str
    base_model: str | None = None
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    settings: list[tuple[str, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


def _md(text: object) -> str:
    from tokenweight.infra.markdown import md_escape

    return md_escape(text)


def _front_matter(f: CardFacts) -> str:
    meta: dict[str, Any] = {"library_name": "transformers"}
    if f.license:
        meta["license"] = f.license
    if f.base_model:
        meta["base_model"] = f.base_model
    if f.datasets:
        meta["datasets"] = list(f.datasets)
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = list(
        dict.fromkeys(["tokenweight", "token-weighted-loss", "long-context", *f.tags])
    )
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _loss_text(f: CardFacts) -> str:
    parts = []
    if f.final_loss is not None:
        parts.append(f"{f.final_loss:.4f} (last logged step)")
    if f.mean_loss is not None:
        span = f" over steps {f.loss_steps[0]}-{f.loss_steps[1]}" if f.loss_steps else ""
        parts.append(f"mean {f.mean_loss:.4f}{span}")
    return "; ".join(parts) or "-"


def model_card_text(f: CardFacts) -> str:
    """The card (front matter, body, hash line) for the run described by ``f``."""
    from tokenweight.infra.markdown import markdown_table

    data = f.data
    rows = [
        ["base model", f.base_model or f.source],
        ["weighting scheme", f.scheme],
        ["scorer", f.scorer],
        *[[k, v] for k, v in f.settings],
        ["optimizer steps", f"{f.steps:,}"],
        ["final training loss", _loss_text(f)],
    ]
    if f.base_model and f.source != f.base_model:
        rows.insert(1, ["loaded from", f.source])
    data_rows = [[k, str(v)] for k, v in data.items() if v is not None]
    lines = [
        f"# {_md(f.name)}",
        "",
        f"A causal language model trained from {_md(f.base_model or f.source)} with a "
        f"token-weighted loss (scheme `{_md(f.scheme)}`): every target's loss is weighted by "
        "how much better the model predicts it with the long context than with a short "
        "window, so training concentrates on the targets that need long-range context. "
        f"Trained with tokenweight {_md(f.tokenweight_version)}.",
        "",
        "## Training",
        "",
        *markdown_table(["setting", "value"], rows),
        "",
        "## Data",
        "",
        *markdown_table(["data", "value"], data_rows),
        "",
        "## Reproduce",
        "",
        "The resolved configuration is saved beside this card as `tokenweight_train.yaml`; "
        "with the same start model and the same data (the same "
        + ("fingerprint" if data.get("fingerprint") else "input hashes")
        + "), from the folder it was run in:",
        "",
        "```bash",
        f.command,
        "```",
        "",
        "## Citation",
        "",
        "The training method is that of *Token Weighting for Long-Range Language Modeling* "
        "(Helm, Daheim and Gurevych, Findings of NAACL 2025):",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    body = _front_matter(f) + "\n" + "\n".join(lines)
    return _seal(body)


def _seal(text: str) -> str:
    return text + f"\n<!-- tokenweight model card sha256:{sha256_bytes(text.encode('utf-8'))} -->\n"


def card_is_ours(text: str) -> bool:
    """Whether ``text`` is a card :func:`model_card_text` wrote, unchanged since."""
    m = _SEAL.search(text)
    return m is not None and sha256_bytes(text[: m.start()].encode("utf-8")) == m.group(1)


def write_model_card(folder: str | Path, text: str) -> Path:
    """Write the card ``text`` as ``folder/README.md`` atomically, unless a ``README.md``
    is there that is not an unchanged card of this package (a user's own, or an edited
    card): then it is left as it is, the card goes to :data:`CARD_FALLBACK` and a warning
    says so. Returns the path written."""
    folder = Path(folder)
    path = folder / CARD_NAME
    if path.is_symlink() or path.exists():
        try:
            ours = (
                path.is_file()
                and not path.is_symlink()
                and card_is_ours(path.read_text(encoding="utf-8"))
            )
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            fallback = folder / CARD_FALLBACK
            logger.warning(
                "%s was not written by tokenweight (or was edited); leaving it as it is and "
                "writing the model card to %s",
                path,
                fallback,
            )
            return atomic_write_text(fallback, text)
    return atomic_write_text(path, text)


# ------------------------------------------------------------------ facts of a run
def _front_matter_of(path: Path) -> dict[str, Any]:
    """The YAML metadata of a model card file (``{}`` when absent or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    try:
        meta = yaml.safe_load(text[4:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def model_origin(source: str) -> tuple[str | None, str | None]:
    """``(base_model, license)`` of a start model for the card's metadata: the Hub id of
    a hub name or of a packaged alias, and a license when known (an alias's, or the one a
    local folder's own ``README.md`` states); ``None`` where unknown."""
    from tokenweight.infra.errors import TokenWeightError
    from tokenweight.infra.models import ALIAS_ORIGINS, resolve_model_source

    if source.lower() in ALIAS_ORIGINS and not Path(source).exists():
        return ALIAS_ORIGINS[source.lower()]
    try:
        src = resolve_model_source(source)
    except TokenWeightError:
        return None, None
    if src.kind == "hub":
        return src.path, None
    if src.kind == "local":
        license = _front_matter_of(Path(src.path) / CARD_NAME).get("license")
        return None, license if isinstance(license, str) else None
    return None, None


def _scorer_text(config: Any) -> str:
    s, kind = config.scorer, config.used_scorer
    stride = f", stride {s.stride}" if s.stride else ""
    windows = f", window {s.window}{stride}"
    text = kind.card or f"{kind.name}: {kind.summary}{{windows}}"
    return str(text.format(model=s.model or "the start model", windows=windows))


def _data_facts(manifest: dict[str, Any], path: str) -> dict[str, Any]:
    """The card's data table from the prepared data's manifest."""
    counts = manifest.get("counts") or {}
    tok = manifest.get("tokenizer") or {}
    inputs = manifest.get("inputs") or []
    files = [
        f"{Path(str(i['path'])).name} (sha256 {str(i['sha256'])[:12]})"
        for i in inputs
        if i.get("path") and i.get("sha256")
    ]
    hub = [f"{i['hf_dataset']} ({i.get('split')})" for i in inputs if i.get("hf_dataset")]
    return {
        "path": path,
        "fingerprint": manifest.get("fingerprint"),
        "sequences": f"{counts['sequences']:,}" if "sequences" in counts else None,
        "tokens per sequence": manifest.get("seq_len"),
        "tokenizer": tok.get("name_or_path") or None,
        "tokenizer vocabulary sha256": str(tok["vocab_sha256"])[:16]
        if tok.get("vocab_sha256")
        else None,
        "inputs": ", ".join(files + hub) or None,
    }


def _command(config: Any, world_size: int) -> str:
    import shlex

    saved = shlex.quote(str(Path(config.train.output_dir) / "tokenweight_train.yaml"))
    launch = (
        f"torchrun --nproc_per_node {world_size} -m tokenweight.cli train"
        if world_size > 1
        else "tokenweight train"
    )
    return f"{launch} {saved} train.output_dir=NEW_FOLDER"


def card_facts(
    config: Any,
    manifest: dict[str, Any],
    *,
    steps: int,
    final_loss: float | None,
    mean_loss: float | None,
    loss_steps: tuple[int, int] | None,
    world_size: int = 1,
) -> CardFacts:
    """The facts of a finished ``tokenweight train`` run (``config``: its
    :class:`~tokenweight.training.config.Config`; ``manifest``: the prepared data's)."""
    from tokenweight import __version__

    m, t = config.model, config.train
    base, license = model_origin(str(m.source))
    seq_len = manifest.get("seq_len")
    per_step = t.micro_batch_size * t.gradient_accumulation_steps * world_size
    settings = [
        (
            "context",
            ", ".join(
                x
                for x in (
                    f"max_position_embeddings {m.max_position_embeddings}"
                    if m.max_position_embeddings
                    else "",
                    f"RoPE theta {m.rope_theta:g}" if m.rope_theta else "",
                )
                if x
            )
            or "the start model's",
        ),
        ("learning rate", f"{t.learning_rate:g} ({t.scheduler}, {t.warmup_steps} warm-up steps)"),
        (
            "batch per step",
            f"{t.micro_batch_size} x {t.gradient_accumulation_steps} accumulation x "
            f"{world_size} process(es) = {per_step} sequences"
            + (f" of {seq_len} tokens" if seq_len else ""),
        ),
        ("seed", str(t.seed)),
        ("precision", "bf16 mixed precision" if t.bf16 else f"weights {m.dtype}"),
    ]
    if m.lora is not None:
        settings.append(("LoRA", f"r {m.lora.r}, alpha {m.lora.alpha:g}"))
    datasets = [str(i["hf_dataset"]) for i in manifest.get("inputs") or [] if i.get("hf_dataset")]
    head = str(config.scheme).split(":")[0]
    return CardFacts(
        name=t.hub_model_id or Path(t.output_dir).resolve().name,
        source=str(m.source),
        scheme=str(config.scheme),
        scorer=_scorer_text(config),
        steps=steps,
        final_loss=final_loss,
        mean_loss=mean_loss,
        loss_steps=loss_steps,
        command=_command(config, world_size),
        tokenweight_version=__version__,
        base_model=base,
        license=license,
        datasets=datasets,
        data=_data_facts(manifest, str(config.data.path)),
        settings=settings,
        tags=[f"scheme-{head}"] if re.fullmatch(r"[a-z][a-z0-9_-]*", head) else [],
    )
