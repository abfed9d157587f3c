"""The plugin manager: loads every plugin (entry point) of the group ``anombench`` and collects what they register.

Built-in plugins come through the same entry points (declared in pyproject.toml) as third-party ones,
so the path a third party takes is the one the test-suite exercises every day.

A plugin that cannot be used is isolated, not fatal: when its import fails, its hook implementations do not
match the hooks (a misspelt hook name, a wrong argument name) or its registration hook raises, it is reported
once, in one line (plugin, target, distribution, error, how to skip it), and skipped. Every command that does not
need it works; ``anombench list`` shows it as broken; a suite that names something it would have registered gets
"unknown method ..." followed by the broken plugins. A plugin that registers nothing gets a warning naming it.

Which plugins load (environment variables, comma-separated plugin names):
- ``ANOMBENCH_PLUGINS`` unset: every installed plugin. Set: the third-party plugins named in it, plus the built-in
  ones, all of them unless the list names some built-ins, then only those (``ANOMBENCH_PLUGINS=pixelstats`` adds one
  third-party plugin to the built-ins; ``ANOMBENCH_PLUGINS=synthetic,metrics`` loads just those two built-ins;
  empty: the built-ins alone).
- ``ANOMBENCH_DISABLE_PLUGINS``: plugins never to load, built-in or not (the way to skip a broken one).
A name in either variable that matches no installed plugin is warned about.
"""

from __future__ import annotations

import importlib.metadata
import logging
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
ENV_DISABLE = "ANOMBENCH_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "anombench"
IN_PROCESS = "(in-process)"

log = logging.getLogger(__name__)
_in_process: dict[str, object] = {}  # plugins registered for a while by anombench.testing, by plugin name


@dataclass(frozen=True)
class Registered:
    """One registered factory and where it came from (shown by ``anombench list``): ``name`` is its registered
    name, ``plugin`` the entry point (plugin) that registered it, ``distribution`` the package that ships that."""

    kind: Kind
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that was skipped because it could not be loaded or registered."""

    plugin: str
    target: str  # the entry point's value, e.g. "anombench_mine.plugin"
    distribution: str
    version: str
    error: str

    def line(self) -> str:
        """The one line that reports it, with how to skip it."""
        dist = f"{self.distribution} {self.version}".strip()
        return (f"plugin '{self.plugin}' ({self.target}, from {dist}) failed to load and is skipped: {self.error}; "
                f"to skip it quietly set {ENV_DISABLE}={self.plugin}")


class Registry:
    """What the loaded plugins registered, by kind and registered name, and which plugins were skipped as broken."""

    def __init__(self) -> None:
        self.entries: dict[Kind, dict[str, Registered]] = {kind: {} for kind in KINDS}
        self.broken: list[BrokenPlugin] = []

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
            broken = "".join(f"; plugin '{b.plugin}' ({b.distribution}) failed to load: {b.error}" for b in self.broken)
            raise UserError(f"unknown {kind} '{name}'; registered {kind}s: {known}{broken}") from None

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.entries[kind])


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    return None if value is None else {name.strip() for name in value.split(",") if name.strip()}


def _distribution_of(ep: importlib.metadata.EntryPoint | None) -> tuple[str, str]:
    if ep is None or ep.dist is None:
        return (IN_PROCESS, "")
    return (ep.dist.metadata["Name"], ep.dist.version)


def _is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    return _distribution_of(ep)[0] == BUILTIN_DISTRIBUTION


def _selected(entry_points: list[importlib.metadata.EntryPoint]) -> list[importlib.metadata.EntryPoint]:
    """Apply ANOMBENCH_PLUGINS and ANOMBENCH_DISABLE_PLUGINS (see the module docstring); warn about names that
    match no installed plugin."""
    wanted, disabled = _names(ENV_FILTER), _names(ENV_DISABLE) or set()
    installed = {ep.name for ep in entry_points}
    for variable, names in ((ENV_FILTER, wanted or set()), (ENV_DISABLE, disabled)):
        for name in sorted(names - installed):
            log.warning(f"anombench: warning: {variable} names '{name}', which matches no installed plugin; "
                        f"installed: {', '.join(sorted(installed)) or 'none'}")
    if wanted is not None:
        named_builtins = {ep.name for ep in entry_points if _is_builtin(ep)} & wanted
        entry_points = [ep for ep in entry_points
                        if ep.name in wanted or (_is_builtin(ep) and not named_builtins)]
    return [ep for ep in entry_points if ep.name not in disabled]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")


def _hook_problem(pm: pluggy.PluginManager, plugin: object) -> str | None:
    """A hook implementation of ``plugin`` that matches no hook (a misspelt name), in words; None if all match."""
    unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec())
    if not unknown:
        return None
    return f"unknown hook '{unknown[0]}' (misspelt?); the hooks are: {', '.join(hookspecs.HOOK_NAMES)}"


def register_checked(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` under ``name``, raising a one-line UserError (and leaving ``pm`` as it was) when its
    hook implementations do not match the hooks: a misspelt hook name, or an argument the hook does not offer."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # pluggy's message spans lines: hook, definition, reason
        raise UserError(f"plugin '{name}': " + "; ".join(line.strip() for line in str(exc).splitlines()
                                                         if line.strip())) from None
    problem = _hook_problem(pm, plugin)
    if problem:
        pm.unregister(plugin)
        raise UserError(f"plugin '{name}': {problem}")


def make_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, importlib.metadata.EntryPoint | None],
                                   list[BrokenPlugin]]:
    """Load the selected plugins (entry points, then those registered in-process by ``anombench.testing``) into a
    fresh PluginManager. A plugin that fails to import or whose hooks do not match is skipped and returned as
    broken (``collect`` reports it)."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    loaded: dict[str, importlib.metadata.EntryPoint | None] = {}
    broken: list[BrokenPlugin] = []
    for ep in _selected(list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))):
        if ep.name in loaded:
            continue
        try:
            module = ep.load()
            register_checked(pm, module, ep.name)
        except Exception as exc:  # any failure of a plugin's own code: isolate it, say which one
            message = str(exc) if isinstance(exc, UserError) else _one_line(exc)
            broken.append(BrokenPlugin(ep.name, ep.value, *_distribution_of(ep),
                                       message.removeprefix(f"plugin '{ep.name}': ")))
            continue
        loaded[ep.name] = ep
    for name, plugin in _in_process.items():
        register_checked(pm, plugin, name)  # a test's own plugin: a mistake in it fails the test
        loaded[name] = None
    return pm, loaded, broken


def _register_into(collected: list[Registered], kind: Kind, plugin: str, dist: str, version: str
                   ) -> Callable[[str, Callable[..., Any]], None]:
    """The ``register`` callback (``anombench.api.Register``) handed to one plugin's hook for one kind."""

    def register(name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"register() needs a non-empty str name first, got {name!r}")
        if not callable(factory):
            raise TypeError(f"register('{name}', ...) needs a factory (a class or function), got {factory!r}")
        collected.append(Registered(kind, name, factory, plugin, dist, version))

    return register


def collect(pm: pluggy.PluginManager, entry_points: dict[str, importlib.metadata.EntryPoint | None],
            broken: list[BrokenPlugin] = ()) -> Registry:
    """Call every registration hook, remembering which plugin registered what. A plugin whose hook raises is
    skipped whole (none of its registrations kept) and reported as broken; one that registers nothing is warned
    about; every broken plugin is reported here, once, in one line."""
    registry = Registry()
    registry.broken.extend(broken)
    per_plugin: dict[str, list[Registered]] = {name: [] for name in entry_points}
    hooks = {"method": pm.hook.anombench_register_methods, "dataset": pm.hook.anombench_register_datasets,
             "metric": pm.hook.anombench_register_metrics}
    for kind in KINDS:
        for impl in hooks[kind].get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            if plugin_name not in per_plugin:
                continue  # its hook raised for an earlier kind
            ep = entry_points.get(plugin_name)
            dist, version = _distribution_of(ep)
            try:
                impl.function(register=_register_into(per_plugin[plugin_name], kind, plugin_name, dist, version))
            except Exception as exc:
                if ep is None:  # registered in-process by a test: its mistake fails the test
                    raise
                registry.broken.append(BrokenPlugin(plugin_name, ep.value, dist, version,
                                                    f"its hook {impl.function.__name__} raised {_one_line(exc)}"))
                del per_plugin[plugin_name]
    for plugin_name, entries in per_plugin.items():
        if not entries:
            log.warning(f"anombench: warning: plugin '{plugin_name}' ({_describe(entry_points.get(plugin_name))}) "
                        f"registered nothing: it implements none of {', '.join(hookspecs.HOOK_NAMES)}, or its hooks "
                        "never call register()")
        for entry in entries:
            registry.add(entry)
    for plugin in registry.broken:
        log.warning(f"anombench: warning: {plugin.line()}")
    return registry


def _describe(ep: importlib.metadata.EntryPoint | None) -> str:
    dist, version = _distribution_of(ep)
    return f"{ep.value}, from {dist} {version}".strip() if ep is not None else dist


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry, built on first use (so a broken plugin is reported once per process)."""
    return collect(*make_plugin_manager())


def add_in_process(plugin: object, name: str) -> None:
    """Register a plugin object (a module, class or instance with hook implementations) in this process, on top of
    the installed ones, until ``remove_in_process``; used by ``anombench.testing``."""
    if name in _in_process:
        raise UserError(f"plugin '{name}' is already registered in-process")
    _in_process[name] = plugin
    registry.cache_clear()


def remove_in_process(name: str) -> None:
    _in_process.pop(name, None)
    registry.cache_clear()
