"""Shared fixtures: the real plugin registry (built-ins through their entry points) plus the third-party
test plugin in tests/thirdparty registered in-process, the way simonw/llm's tests register a plugin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anombench.plugins import Registry, collect, make_plugin_manager

THIRDPARTY = Path(__file__).parent / "thirdparty"


@pytest.fixture(scope="session")
def registry() -> Registry:
    sys.path.insert(0, str(THIRDPARTY))
    import anombench_pixelstats

    pm, entry_points = make_plugin_manager()
    pm.register(anombench_pixelstats, name="pixelstats")
    return collect(pm, entry_points)
