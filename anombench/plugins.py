"""The plugin manager: loads every module of the entry-point group ``anombench`` and collects what they register.

Built-in plugins come through the same entry points (declared in pyproject.toml) as third-party ones,
so the path a third party takes is the one the test-suite exercises every day.

``ANOMBENCH_PLUGINS`` limits loading to a comma-separated list of entry-point names
(``ANOMBENCH_PLUGINS=padim,synthetic,metrics``); set it empty to load none.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal

import pluggy

from anombench import hookspecs
from anombench.errors import UserError

Kind = Literal["method", "dataset", "metric"]
KINDS: tuple[Kind, ...] = ("method", "dataset", "metric")
ENTRY_POINT_GROUP = "anombench"
ENV_FILTER = "ANOMBENCH_PLUGINS"


@dataclass(frozen=True)
class Registered:
    """One registered factory and where it came from (shown by ``anombench list``)."""

    kind: Kind
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str


class Registry:
    """What the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.entries: dict[Kind, dict[str, Registered]] = {kind: {} for kind in KINDS}

    def add(self, entry: Registered) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None and existing.factory is not entry.factory:
            raise UserError(
                f"{entry.kind} '{entry.name}' is registered twice: by plugin '{existing.plugin}' "
                f"({existing.distribution}) and by plugin '{entry.plugin}' ({entry.distribution})"
            )
        self.entries[entry.kind][entry.name] = entry

    def get(self, kind: Kind, name: str) -> Registered:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.entries[kind])) or "none"
            raise UserError(f"unknown {kind} '{name}'; registered {kind}s: {known}") from None

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.entries[kind])


def _selected(entry_points: list[importlib.metadata.EntryPoint]) -> list[importlib.metadata.EntryPoint]:
    """Apply the ANOMBENCH_PLUGINS filter, if set."""
    wanted = os.environ.get(ENV_FILTER)
    if wanted is None:
        return entry_points
    names = {name.strip() for name in wanted.split(",") if name.strip()}
    return [ep for ep in entry_points if ep.name in names]


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, importlib.metadata.EntryPoint]]:
    """Load the selected entry points into a fresh PluginManager and verify every hookimpl matches a spec."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    loaded: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in _selected(list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))):
        if ep.name in loaded:
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide which one it is
            raise UserError(f"plugin '{ep.name}' ({ep.value}) failed to import: {type(exc).__name__}: {exc}") from exc
        pm.register(module, name=ep.name)
        loaded[ep.name] = ep
    pm.check_pending()
    return pm, loaded


def _distribution_of(ep: importlib.metadata.EntryPoint | None) -> tuple[str, str]:
    if ep is None or ep.dist is None:
        return ("(in-process)", "")
    return (ep.dist.metadata["Name"], ep.dist.version)


def collect(pm: pluggy.PluginManager, entry_points: dict[str, importlib.metadata.EntryPoint]) -> Registry:
    """Call every registration hook, remembering which plugin registered what."""
    registry = Registry()
    for kind in KINDS:
        hook = getattr(pm.hook, f"anombench_register_{kind}s")
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            dist, version = _distribution_of(entry_points.get(plugin_name))

            def register(name: str, factory: Callable[..., Any], _kind: Kind = kind, _plugin: str = plugin_name,
                         _dist: str = dist, _version: str = version) -> None:
                registry.add(Registered(_kind, name, factory, _plugin, _dist, _version))

            impl.function(register=register)
    return registry


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry, built on first use."""
    pm, entry_points = make_plugin_manager()
    return collect(pm, entry_points)
