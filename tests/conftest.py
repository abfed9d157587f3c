"""Shared fixtures: the real plugin registry (built-ins through their entry points) plus the third-party test
plugin in tests/thirdparty, registered in-process with ``anombench.testing`` (as simonw/llm's tests register a
plugin); ``register_plugin`` registers a plugin object for one test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from anombench.plugins import Registry
from anombench.testing import register_plugin, registered  # noqa: F401  (register_plugin: a fixture for every test)

THIRDPARTY = Path(__file__).parent / "thirdparty"


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    sys.path.insert(0, str(THIRDPARTY))  # the test plugin ships as a folder here, not as an installed distribution
    import anombench_pixelstats

    with registered(anombench_pixelstats, name="pixelstats") as reg:
        yield reg
