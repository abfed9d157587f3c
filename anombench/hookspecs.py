"""The hooks a plugin implements to register what it provides; what those things must do is ``anombench.api``.

A plugin is a module registered under the entry-point group ``anombench`` (in its distribution's
``pyproject.toml``: ``[project.entry-points.anombench] mine = "anombench_mine"``). It implements any of the hooks
below with ``@anombench.hookimpl`` and calls ``register(name, factory)`` once per thing it provides, under the
registered name suites will use. Factories are called with keyword arguments from the suite file; their
signatures (names, annotations, defaults, ``Annotated`` ranges) are what suite validation checks against, so
annotate them (``anombench.params``). A hook implementation whose name is not one of these is an error at load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: importing anombench stays free of torch (``anombench --help`` is quick)
    from anombench.api import Dataset, Method, Metric, Register

hookspec = pluggy.HookspecMarker("anombench")
hookimpl = pluggy.HookimplMarker("anombench")

@hookspec
def anombench_register_methods(register: Register[Method]) -> None:
    """Register anomaly-detection methods: ``register("padim", PaDiM)``.

    The factory returns an object satisfying ``anombench.api.Method``; the runner always passes
    ``device`` (e.g. "cpu", "cuda") and ``seed`` (int) on top of the suite's parameters.
    """


@hookspec
def anombench_register_datasets(register: Register[Dataset]) -> None:
    """Register datasets: ``register("mvtec", MVTecAD)``.

    The factory returns an object satisfying ``anombench.api.Dataset``. The class may also offer
    ``download`` and ``check`` as static methods (``anombench.api.Downloadable``, ``Checkable``), which
    ``anombench data`` calls.
    """


@hookspec
def anombench_register_metrics(register: Register[Metric]) -> None:
    """Register metrics: ``register("pixel_auroc", PixelAUROC)``.

    The factory returns a fresh ``anombench.api.Metric`` accumulator for each cell.
    """


HOOK_NAMES = ("anombench_register_methods", "anombench_register_datasets", "anombench_register_metrics")


def __getattr__(name: str) -> object:
    """``from anombench.hookspecs import Register`` (plugins written before it moved to ``anombench.api``) still
    works, without importing torch for everyone who imports anombench."""
    if name == "Register":
        from anombench.api import Register
        return Register
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
