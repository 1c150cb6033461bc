"""Pytest fixtures over ``helpers/fixtures.py`` (the one module of tiny tokenizers and models).

``tiny_llama(**overrides)`` and ``tiny_causal_lm(family, **overrides)`` are factories:
each call is :func:`fixtures.build_tiny_causal_lm` (a fresh, seeded float32 model in eval
mode, built offline from a config).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from helpers.fixtures import build_tiny_causal_lm

# Tiny models are dominated by per-op overhead; with several threads per process (and
# `make test` running two xdist workers on shared cores) OpenMP contention makes them up to
# 100x slower. One thread per test process.
torch.set_num_threads(1)


@pytest.fixture
def tiny_causal_lm() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_causal_lm("gemma2", seed=1, final_logit_softcapping=2.0)``."""
    return build_tiny_causal_lm


@pytest.fixture
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_llama(seed=1, vocab_size=64, tie_word_embeddings=True)``."""
    return functools.partial(build_tiny_causal_lm, "llama")
