"""The hooks a plugin implements: the whole contract between anombench and its plugins, in one file.

A plugin is a module registered under the entry-point group ``anombench``. It implements any of the
hooks below with ``@anombench.hookimpl`` and calls ``register(name, factory)`` once per thing it provides.
Factories are called with keyword arguments from the suite file; their signatures (names, annotations,
defaults) are what suite validation checks against, so annotate them.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("anombench")
hookimpl = pluggy.HookimplMarker("anombench")

Register = Callable[..., None]


@hookspec
def anombench_register_methods(register: Register) -> None:
    """Register anomaly-detection methods: ``register("padim", PaDiM)``.

    The factory returns an object satisfying ``anombench.api.Method``; the runner always passes
    ``device`` (e.g. "cpu", "cuda") and ``seed`` (int) on top of the suite's parameters.
    """


@hookspec
def anombench_register_datasets(register: Register) -> None:
    """Register datasets: ``register("mvtec", MVTecAD)``.

    The factory returns an object satisfying ``anombench.api.Dataset``. It may also offer
    ``download(root, **options)`` and ``check(root)`` as static methods, which ``anombench data`` calls.
    """


@hookspec
def anombench_register_metrics(register: Register) -> None:
    """Register metrics: ``register("pixel_auroc", PixelAUROC)``.

    The factory returns a fresh ``anombench.api.Metric`` accumulator for each cell.
    """
