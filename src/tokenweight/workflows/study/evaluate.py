"""Every model of a study on the same held-out sequences: per-target long-context NLL
(:mod:`tokenweight.evaluation.perplexity`), the start model's short-window NLL for
LongPPL's key tokens and the inside-the-window check, and the probes' answers; each an
array file (``.npy``, no pickle) in the evaluation folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tokenweight.infra.files import atomic_write_bytes, atomic_write_json
from tokenweight.workflows.study.config import StudyConfig

__all__ = [
    "EVAL_MARKER",
    "answer_probes",
    "evaluate_held_out",
    "load_array",
    "local_window",
    "save_array",
    "start_windows",
    "study_probes",
]


EVAL_MARKER = "target_mask.npy"  # the first file the evaluation step writes


def save_array(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def local_window(config: StudyConfig) -> int:
    """The short context of the inside-the-window check: an eighth of ``window``."""
    return max(2, config.window // 8)


def start_windows(config: StudyConfig) -> dict[str, tuple[int, int]]:
    """``(window, stride)`` of the start model's short-context passes, by the name of the
    array each writes: ``start-short``, windows of the original context for LongPPL's key
    tokens (``stride``, else LongPPL's default
    :func:`~tokenweight.evaluation.perplexity.default_stride`), and ``start-local``, the
    windows of the inside-the-window check (:func:`local_window`)."""
    from tokenweight.evaluation.perplexity import default_stride

    local = local_window(config)
    return {
        "start-short": (config.window, config.stride or default_stride(config.window)),
        "start-local": (local, default_stride(local)),  # does it use its context inside?
    }


def evaluate_held_out(
    config: StudyConfig,
    models: dict[str, Path],
    eval_data: Path,
    out: Path,
    device: str,
    log: Callable[[str], None],
) -> None:
    """``out/<key>.npy``: ``(S, N - 1)`` long-context NLL of every model; the start model's
    short-context NLL too (:func:`start_windows`: ``start-short.npy`` for LongPPL's key
    tokens, ``start-local.npy``) and, with RoPE settings, its NLL extended but untrained
    (``start-extended.npy``); ``<key>-probes.npy``, the probes' answers
    (:func:`answer_probes`)."""
    import torch

    from tokenweight.evaluation.perplexity import long_context_nll, short_context_nll_of
    from tokenweight.evaluation.sequences import load_eval_sequences
    from tokenweight.infra.models import load_model, load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(models["start"])
    seqs = load_eval_sequences(str(eval_data), tok, seq_len=0, max_sequences=config.eval_sequences)
    save_array(out / EVAL_MARKER, seqs.target_mask.numpy())
    rope: dict[str, Any] = {
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
    }
    probes = study_probes(config, tok, int(seqs.input_ids.shape[1]))
    if probes:
        atomic_write_json(out / "probes.json", [p.summary() for p in probes])
    for k, (key, path) in enumerate(models.items()):
        t0 = time.perf_counter()
        # the start model at its own settings; trained checkpoints carry the extended RoPE
        model = load_model(
            path, dtype=config.dtype, device=device, attn_implementation=config.attn_implementation
        )
        long = long_context_nll(model, seqs)
        save_array(out / f"{key}.npy", long.numpy())
        if probes:
            save_array(out / f"{key}-probes.npy", answer_probes(model, tok, probes))
        if key == "start":
            for name, (window, stride) in start_windows(config).items():
                short = short_context_nll_of(model, seqs, long, window=window, stride=stride)
                save_array(out / f"{name}.npy", short.numpy())
            if any(rope.values()):  # the start model with the extended RoPE, untrained
                ext = load_model(
                    path,
                    dtype=config.dtype,
                    device=device,
                    attn_implementation=config.attn_implementation,
                    **rope,
                )
                save_array(out / "start-extended.npy", long_context_nll(ext, seqs).numpy())
                del ext
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        log(f"    evaluated {key} ({k + 1}/{len(models)}) in {time.perf_counter() - t0:.0f} s")


def study_probes(config: StudyConfig, tok: Any, seq_len: int) -> list[Any]:
    """The probe prompts every model answers (none unless ``probes`` lists tasks)."""
    if not config.probes:
        return []
    from tokenweight.evaluation.probes import make_probes

    return make_probes(
        tok,
        config.probes,
        config.probe_lengths or [seq_len],
        config.probe_depths,
        trials=config.probe_trials,
        seed=0,
    )


def answer_probes(model: Any, tok: Any, probes: list[Any]) -> np.ndarray:
    """``(P,)`` int8: 1 where the model's greedy answer to probe ``p`` is right."""
    from tokenweight.evaluation.generate import greedy_generate

    outputs = greedy_generate(
        model,
        tok,
        [p.input_ids for p in probes],
        max_new_tokens=[p.max_new_tokens for p in probes],
    )
    return np.array([p.score(o) for p, o in zip(probes, outputs)], dtype=np.int8)
