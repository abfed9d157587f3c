"""Test helpers for plugin authors: register a plugin object for one test, and take it away after.

As simonw/llm's tests do, a test registers the plugin in-process instead of installing a distribution; everything
that asks ``anombench.plugins.registry()`` (suite loading, the runner, ``anombench.cli.main([...])``) then sees it
next to the installed plugins, and after the test the registry is as before::

    from anombench import hookimpl
    from anombench.testing import registered

    class MyPlugin:
        @hookimpl
        def anombench_register_methods(self, register):
            register("mine", MyMethod)

    def test_mine_runs_in_a_suite(tmp_path):
        with registered(MyPlugin(), name="mine") as registry:
            assert registry.get("method", "mine").factory is MyMethod

or, with the fixture (``from anombench.testing import register_plugin`` in your conftest.py)::

    def test_mine(register_plugin):
        registry = register_plugin(my_plugin_module)

The plugin object is a module, a class or an instance with ``@anombench.hookimpl`` methods. A mistake in it (a
misspelt hook name, a hook that raises) fails the test with a one-line error, where an installed plugin would be
skipped with a warning.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest

from anombench.plugins import Registry, add_in_process, registry, remove_in_process


def plugin_name(plugin: object) -> str:
    """A module's or class's ``__name__``, else the instance's class name."""
    return plugin.__name__ if isinstance(plugin, (types.ModuleType, type)) else type(plugin).__name__


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[Registry]:
    """Register ``plugin`` (under ``name``, default ``plugin_name(plugin)``) for the ``with`` block; yields the
    process-wide registry with it. The plugin is validated on entry."""
    name = name or plugin_name(plugin)
    add_in_process(plugin, name)
    try:
        yield registry()
    finally:
        remove_in_process(name)


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., Registry]]:
    """A function ``register_plugin(plugin, name=None) -> Registry`` whose registrations end with the test."""
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> Registry:
        name = name or plugin_name(plugin)
        add_in_process(plugin, name)
        names.append(name)
        try:
            return registry()
        except Exception:
            names.remove(name)
            remove_in_process(name)
            raise

    yield register
    for name in names:
        remove_in_process(name)
