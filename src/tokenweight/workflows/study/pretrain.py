"""The tiny start model (``model: tiny``): a small Llama over the synthetic word
vocabulary, built here and pretrained on short-range synthetic data of ``window`` tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenweight.workflows.steps import Steps
from tokenweight.workflows.study.config import RunSpec, StudyConfig, train_config

__all__ = ["build_tiny_llama", "pretrain_synth", "pretrain_tiny"]


def build_tiny_llama(config: StudyConfig, init: Path) -> Any:
    """Step: a randomly initialised small Llama (sizes from ``tiny``) and its word
    tokenizer, saved in ``init``; returns the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenweight.workflows.synth import build_word_tokenizer

    t = config.tiny
    build_word_tokenizer(init, int(t["words"]))
    torch.manual_seed(int(config.pretrain.get("seed", 0)))
    h = int(t["hidden"])
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=int(t["words"]) + 4,
            hidden_size=h,
            intermediate_size=4 * h,
            num_hidden_layers=int(t["layers"]),
            num_attention_heads=int(t["heads"]),
            num_key_value_heads=int(t["heads"]),
            max_position_embeddings=config.window,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(init)
    return model


def pretrain_synth(config: StudyConfig) -> Any:
    """The pretraining corpus: ``synth`` (its words, content and filler, so the word
    roles match the study's data) in sequences of ``window`` tokens, with the
    ``pretrain`` distances, copies and seed."""
    from tokenweight.workflows.synth import SynthConfig

    p = config.pretrain
    return SynthConfig(
        **{
            **config.synth,
            "seq_len": config.window,
            "sequences": int(p["steps"]) * int(p["batch"]),
            "distances": list(p["distances"]),
            "copies": int(p["copies"]),
            "span": int(p.get("span", config.synth.get("span", 8))),
            "seed": int(p.get("seed", 0)) + 2000,
        }
    )


def pretrain_tiny(
    config: StudyConfig, folder: Path, model_dir: Path, device: str, steps: Steps
) -> None:
    """Build a small Llama over a synthetic word vocabulary and train it on short-range
    synthetic data (sequences of ``window`` tokens, copies at ``pretrain.distances``)."""
    t, p = config.tiny, config.pretrain
    init, data = folder / "init", folder / "data"

    def do_build() -> str:
        from tokenweight.workflows.synth import write_synth

        model = build_tiny_llama(config, init)
        write_synth(pretrain_synth(config), init, data, overwrite=True)
        tc = train_config(
            config, RunSpec(), int(p.get("seed", 0)), init, data, model_dir, device, pretrain=True
        )
        from tokenweight.training.run import train

        result = train(tc)
        return (
            f"{sum(x.numel() for x in model.parameters()) / 1e6:.2f}M parameters, "
            f"{result.global_step} steps on {config.window}-token synthetic sequences, "
            f"final mean loss {result.train_loss:.3f}"
        )

    steps.run(
        "build and pretrain the tiny start model (short-range synthetic data)",
        folder,
        {"tiny": t, "pretrain": p, "window": config.window, "synth": config.synth},
        do_build,
    )
