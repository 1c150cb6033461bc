"""Shared fixtures: tiny random causal LMs built offline from a config (no downloads).

``tiny_llama(**overrides)`` and ``tiny_causal_lm(family, **overrides)`` are factories:
each call builds a fresh float32 model in eval mode, seeded (``seed=0`` by default) without
touching the global RNG. The default shape is vocabulary 96, hidden 32, 2 layers, 4 heads
(2 key/value heads), MLP 64, up to 4096 positions.

``build_tiny_causal_lm`` is the one builder of tiny models: the helpers of other test modules
(``helpers_data.build_tiny_llama``, ``test_train_support.tiny_llama``,
``test_eval_support.make_model``, ...) wrap it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

# Tiny models are dominated by per-op overhead; with several threads per process (and
# `make test` running two xdist workers on shared cores) OpenMP contention makes them up to
# 100x slower. One thread per test process.
torch.set_num_threads(1)

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

# family -> (config class, model class, family-specific config values)
TINY_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {}),
}


def build_tiny_causal_lm(
    family: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> torch.nn.Module:
    """A random ``<family>ForCausalLM`` with the tiny default shape; ``overrides`` go to the config."""
    import transformers

    config_name, model_name, extra = TINY_FAMILIES[family]
    config = getattr(transformers, config_name)(**{**TINY_CONFIG, **extra, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config)
    return model.to(dtype).eval()


@pytest.fixture
def tiny_causal_lm() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_causal_lm("gemma2", seed=1, final_logit_softcapping=2.0)``."""
    return build_tiny_causal_lm


@pytest.fixture
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_llama(seed=1, vocab_size=64, tie_word_embeddings=True)``."""
    return functools.partial(build_tiny_causal_lm, "llama")
