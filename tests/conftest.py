"""Pytest fixtures over ``helpers/fixtures.py`` (the one module of tiny tokenizers and models),
and the test tiers of ``helpers/tiers.py``.

``tiny_llama(**overrides)`` and ``tiny_causal_lm(family, **overrides)`` are factories:
each call is :func:`fixtures.build_tiny_causal_lm` (a fresh, seeded float32 model in eval
mode, built offline from a config).

Tiers: every test under ``tests/distributed/`` is marked ``multiprocess``; ``--fast``
(``make test-fast``) leaves out the tests marked ``slow`` or ``multiprocess``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from helpers.fixtures import build_tiny_causal_lm
from helpers.tiers import ALL_TESTS, MULTIPROCESS_DIR, collected

# Tiny models are dominated by per-op overhead; with several threads per process (and
# `make test` running two xdist workers on shared cores) OpenMP contention makes them up to
# 100x slower. One thread per test process.
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="the fast tier: leave out tests marked slow or multiprocess (make test-fast)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if MULTIPROCESS_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.multiprocess)
    tests = [collected(item) for item in items]
    config.stash[ALL_TESTS] = tests
    if config.getoption("--fast"):
        config.hook.pytest_deselected(items=[i for i, t in zip(items, tests) if not t.fast])
        items[:] = [i for i, t in zip(items, tests) if t.fast]


@pytest.fixture
def tiny_causal_lm() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_causal_lm("gemma2", seed=1, final_logit_softcapping=2.0)``."""
    return build_tiny_causal_lm


@pytest.fixture
def tiny_llama() -> Callable[..., torch.nn.Module]:
    """Factory: ``tiny_llama(seed=1, vocab_size=64, tie_word_embeddings=True)``."""
    return functools.partial(build_tiny_causal_lm, "llama")
