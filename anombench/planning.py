"""Planning a run: which cells run, with which settings, grouped into the jobs that run them.

A ``Job`` is the unit an executor runs (in a child process, a pool slot or on a Dask worker): the cells of one
(dataset, category, seed) whose methods share a feature extraction, or a single cell. Planning builds each cell's
method exactly once (constructors store configuration only), asks it for its ``feature_key`` and runs each variant's
``preflight`` check, so a missing weights file is one line before any cell starts; the unfitted instances travel
inside the job to wherever it runs.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from anombench.api import ChecksFiles, Dataset, Method, Preflight, known_categories, shares_features
from anombench.errors import UserError
from anombench.plugins import Registry
from anombench.suite import Cell, DatasetSpec, MethodSpec, Suite, check_reference_categories, expand, load_yaml

SUBSTITUTABLE = ("backbone", "layers", "weights")  # method params whose change by --set makes another model


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what (the suite). ``threads`` 0: picked from the machine. ``cell_timeout``
    (seconds) and ``max_memory_gb`` (peak RSS of a job's processes) stop a job over them; None: no limit."""

    device: str = "cpu"
    threads: int = 0
    show_progress: bool = True
    cell_timeout: float | None = None
    max_memory_gb: float | None = None
    ci_level: float | None = None  # bootstrap intervals at this confidence level (anombench.bootstrap); None: off
    ci_resamples: int = 1000


@dataclass(frozen=True)
class Settings:
    """The loader and torch settings a run uses, given by the suite or command line or picked from the machine
    (``picked`` names the picked ones, for provenance)."""

    batch_size: int
    workers: int
    threads: int
    picked: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedCell:
    """One cell of a job: its method variant, built once on the host and not fitted yet. ``method`` is None when
    building it failed; ``error``/``trace`` say why, and the cell is recorded failed without running."""

    cell: Cell
    spec: MethodSpec
    label: str
    substituted: bool
    method: Method | None
    error: str | None = None
    trace: str | None = None


@dataclass(frozen=True)
class Job:
    """Cells that run together, in one process: same dataset, category and seed; several only if their methods
    share a feature extraction (then one extraction feeds them all)."""

    dataset: DatasetSpec
    category: str
    family: str
    seed: int
    cells: tuple[PlannedCell, ...]
    metrics: dict[str, dict[str, Any]]
    settings: Settings
    options: RunOptions

    def alone(self, cell: PlannedCell) -> Job:
        """The same job holding only ``cell`` (a shared job whose process died is retried cell by cell)."""
        return replace(self, cells=(cell,))

    def describe(self) -> str:
        names = "+".join(c.spec.name for c in self.cells)
        return f"{names}|{self.dataset.name}|{self.category}|{self.seed}"


@dataclass(frozen=True)
class Plan:
    jobs: list[Job]
    grid: list[str]  # every cell id of the suite in suite order, finished or not (tables are ordered by it)
    family_sizes: dict[str, dict[str, int]]  # dataset alias -> family -> how many categories the dataset has in it
    settings: Settings


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and batch systems restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_settings(suite: Suite, options: RunOptions, cores: int) -> Settings:
    """Batch size, loader workers and torch threads: the suite's or command line's where given, else picked for
    ``cores`` cores and the device.

    Why these picks: on a CPU, a loader process competes with the torch threads for the same cores instead of
    overlapping with them (on 2 cores one loader worker made R18 40.2 ms/image against 31.4 in-process), so small
    machines decode in-process and large ones give one core to a loader; a GPU is fed by several loaders while
    every core stays free for decoding.
    """
    gpu = options.device.startswith("cuda")
    picks = {"batch_size": 32 if gpu else 16,
             "workers": min(8, max(1, cores // 2)) if gpu else (0 if cores <= 4 else 1)}
    picks["threads"] = max(1, cores - (0 if gpu else picks["workers"]))
    given = {"batch_size": suite.run.batch_size, "workers": suite.run.workers, "threads": options.threads or suite.run.threads}
    chosen = {key: picks[key] if given[key] is None else given[key] for key in picks}
    return Settings(**chosen, picked=tuple(key for key in picks if given[key] is None))


def instantiate_method(spec: MethodSpec, seed: int, device: str, registry: Registry) -> Method:
    factory = registry.get("method", spec.plugin).factory
    return factory(**spec.params, device=device, seed=seed)


def instantiate_dataset(spec: DatasetSpec, registry: Registry) -> Dataset:
    return registry.get("dataset", spec.plugin).factory(**spec.params)


def error_text(exc: BaseException) -> str:
    """One line for the record. An error raised in a DataLoader worker arrives wrapped ("Caught UserError in
    DataLoader worker process 0. Original Traceback ..."): keep its last line, which names the file."""
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return f"{type(exc).__name__}: {lines[-1].split(': ', 1)[-1]}"
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def resolve_categories(suite: Suite, datasets: dict[str, Dataset]) -> dict[str, list[str]]:
    """Each dataset's categories to run: the suite's list, checked against what is on disk, or all of them."""
    categories_of = {}
    for spec in suite.datasets:
        available = datasets[spec.name].categories()
        chosen = spec.categories if spec.categories is not None else available
        missing = [c for c in chosen if c not in available]
        if missing:
            raise UserError(f"{suite.where}: datasets.{spec.name}.categories: {', '.join(missing)} not available; "
                            f"available: {', '.join(available) or 'none'}")
        categories_of[spec.name] = chosen
    return categories_of


Opened = tuple[dict[str, Dataset], dict[str, list[str]]]


def open_datasets(suite: Suite, registry: Registry) -> Opened:
    """The suite's datasets and the categories to run of each: a missing dataset or category is a UserError here,
    before anything is written."""
    datasets = {spec.name: instantiate_dataset(spec, registry) for spec in suite.datasets}
    check_reference_categories(suite, {name: known_categories(dataset) for name, dataset in datasets.items()})
    return datasets, resolve_categories(suite, datasets)


def check_data_files(opened: Opened, progress: bool) -> None:
    """Decode every image and mask of the run's categories before any cell (datasets offering ``ChecksFiles``),
    so a missing mask or a truncated file is one line now, not a failed cell an hour from now."""
    datasets, categories_of = opened
    problems = [f"{name}: {line}" for name, dataset in datasets.items() if isinstance(dataset, ChecksFiles)
                for category in categories_of[name]
                for line in dataset.check_files(category, verify=True, progress=progress)]
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the data files, first: {problems[0]}; "
                        "`anombench data check DATASET --root DIR --verify` lists them all")


def family_sizes(dataset: Dataset) -> dict[str, int]:
    """How many of the dataset's categories each family holds, so tables can tell a mean over all 15 MVTec classes
    from one over the few a narrowed run (``--set categories=[bottle]``) finished."""
    return dict(Counter(dataset.family(category) for category in known_categories(dataset)))


def substitutions(suite: Suite) -> dict[str, dict[str, Any]]:
    """Per method variant, the ``SUBSTITUTABLE`` params a --set override changed from the suite file
    ({name: {param: new value}}): such a variant is another model than the paper's row of that name."""
    if not suite.overrides or not Path(suite.path).is_file():
        return {}
    before = load_yaml(suite.path).get("methods") or {}
    changed = {}
    for spec in suite.methods:
        original = ((before.get(spec.name) or {}).get("params") or {}) if isinstance(before, dict) else {}
        diff = {key: spec.params[key] for key in SUBSTITUTABLE
                if key in spec.params and spec.params[key] != original.get(key)}
        if diff:
            changed[spec.name] = diff
    return changed


def label_of(name: str, changed: dict[str, Any]) -> str:
    """A variant's column label: its name, plus what an override substituted (``padim-r18 [backbone=lite0]``)."""
    if not changed:
        return name
    return f"{name} [{', '.join(f'{key}={value}' for key, value in changed.items())}]"


def _build(cell: Cell, spec: MethodSpec, changed: dict[str, Any], device: str, registry: Registry) -> PlannedCell:
    """The cell's method, built once. A UserError (a bad value) stops the run before any compute; any other
    error fails this cell only, recorded with its traceback."""
    label = label_of(spec.name, changed)
    try:
        method = instantiate_method(spec, cell.seed, device, registry)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug fails its cell, not the run
        return PlannedCell(cell, spec, label, bool(changed), None, error_text(exc), traceback.format_exc())
    return PlannedCell(cell, spec, label, bool(changed), method)


def _preflight(cells: list[PlannedCell]) -> None:
    """Each variant's ``preflight`` once, before any cell runs (missing weights, n_features too large)."""
    checked: set[str] = set()
    for planned in cells:
        if planned.spec.name not in checked and isinstance(planned.method, Preflight):
            checked.add(planned.spec.name)
            try:
                planned.method.preflight()
            except UserError as exc:
                raise UserError(f"methods.{planned.spec.name}: {exc}") from None


def _sharing_key(planned: PlannedCell) -> Any:
    method = planned.method
    if method is not None and shares_features(method):
        return method.feature_key()
    return ("alone", planned.spec.name)


def plan(suite: Suite, registry: Registry, skip: set[str], options: RunOptions, opened: Opened | None = None,
         cores: int | None = None) -> Plan:
    """Group the suite's cells into jobs: per (dataset, category, seed), methods that report the same
    ``feature_key`` go together; the others run alone. Cells in ``skip`` (finished) are left out.
    ``opened``: ``open_datasets``' result, when already made; ``cores``: what each job may use (default: all)."""
    datasets, categories_of = opened or open_datasets(suite, registry)
    cells = expand(suite, categories_of)
    settings = pick_settings(suite, options, cores or available_cores())
    changed = substitutions(suite)
    specs = {m.name: m for m in suite.methods}
    planned = [_build(cell, specs[cell.method], changed.get(cell.method, {}), options.device, registry)
               for cell in cells if cell.id not in skip]
    _preflight(planned)
    groups: dict[Any, list[PlannedCell]] = {}
    for item in planned:
        cell = item.cell
        groups.setdefault((cell.dataset, cell.category, cell.seed, _sharing_key(item)), []).append(item)
    by_name = {spec.name: spec for spec in suite.datasets}
    jobs = [Job(dataset=by_name[members[0].cell.dataset], category=members[0].cell.category,
                family=datasets[members[0].cell.dataset].family(members[0].cell.category), seed=members[0].cell.seed,
                cells=tuple(members), metrics=suite.metrics, settings=settings, options=options)
            for members in groups.values()]
    return Plan(jobs, [cell.id for cell in cells], {alias: family_sizes(d) for alias, d in datasets.items()},
                settings)


def resolve_device(choice: str) -> str:
    """``auto`` takes a GPU when torch sees one; ``cuda`` without one is a one-line error."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {choice}: no CUDA device is visible to torch; use --device cpu or auto")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise UserError(f"--device {choice}: expected auto, cpu, cuda or cuda:N")
    return choice
