"""The inputs every safety test reads (``helpers.safety.build_env``), made once per test
process: tests copy what they break, and the catalogue checks they stay unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.safety import build_env


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict[str, Path]:
    return build_env(tmp_path_factory.mktemp("safety"))
