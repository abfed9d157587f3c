"""Running a suite: cells grouped by shared data, fed through the methods, measured, and stored as they finish.

The unit of work is a ``GroupTask``: the cells of one (dataset, category, seed) whose methods share a feature
extraction (or a single cell). ``execute_group`` is a plain function of picklable arguments, so the same code
runs in-process, in a process pool or on a Dask worker; the caller alone writes the result store.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import anombench
from anombench.api import Batch, Dataset, Method, Metric, Resources, Scores, collate, known_categories, shares_features
from anombench.errors import UserError
from anombench.examples import ExampleKeeper
from anombench.fingerprint import MapFingerprint
from anombench.plugins import Registry, registry as default_registry
from anombench.resources import GB, PeakMemory, Stopwatch, release_memory
from anombench.results import ARTIFACTS, RunStore, load_provenance, write_atomic, write_json
from anombench.suite import ENTRY_SECTIONS, Cell, DatasetSpec, MethodSpec, Suite, expand

LOCK = ".lock"  # in a run directory: held by the one process writing it


@dataclass(frozen=True)
class RunOptions:
    device: str = "cpu"
    threads: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class GroupTask:
    """Cells that run together: same dataset, category and seed; several methods only if they share features."""

    dataset: DatasetSpec
    category: str
    family: str
    seed: int
    methods: tuple[MethodSpec, ...]
    metrics: dict[str, dict[str, Any]]
    batch_size: int
    workers: int
    options: RunOptions


def resolve_device(choice: str) -> str:
    """``auto`` takes a GPU when torch sees one; ``cuda`` without one is a one-line error."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {choice}: no CUDA device is visible to torch; use --device cpu or auto")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise UserError(f"--device {choice}: expected auto, cpu, cuda or cuda:N")
    return choice


def make_loader(split: Any, task: GroupTask) -> DataLoader:
    """Batches of a split, decoded in ``task.workers`` processes. Inside a daemonic process (a Dask worker, a
    process-pool worker) children are not allowed, so loading happens in-process there."""
    workers = 0 if multiprocessing.current_process().daemon else task.workers
    return DataLoader(split, batch_size=task.batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=task.options.device.startswith("cuda"))


def _progress(items: Iterable[Batch], total: int, label: str, options: RunOptions) -> Iterator[Batch]:
    return iter(tqdm(items, total=total, desc=label, unit="batch", leave=False, disable=not options.show_progress))


def instantiate_method(spec: MethodSpec, seed: int, device: str, registry: Registry) -> Method:
    factory = registry.get("method", spec.plugin).factory
    return factory(**spec.params, device=device, seed=seed)


def instantiate_dataset(spec: DatasetSpec, registry: Registry) -> Dataset:
    return registry.get("dataset", spec.plugin).factory(**spec.params)


def _error_text(exc: BaseException) -> str:
    """One line for the record. An error raised in a DataLoader worker arrives wrapped ("Caught UserError in
    DataLoader worker process 0. Original Traceback ..."): keep its last line, which names the file."""
    lines = str(exc).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return f"{type(exc).__name__}: {lines[-1].split(': ', 1)[-1]}"
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


@dataclass
class Member:
    """One method of a group while it runs: its cell, instance, metric accumulators and own timings."""

    spec: MethodSpec
    method: Method
    metrics: dict[str, Metric]
    examples: ExampleKeeper = field(default_factory=ExampleKeeper)
    fingerprint: MapFingerprint = field(default_factory=MapFingerprint)
    fit_watch: Stopwatch = field(default_factory=Stopwatch)
    infer_watch: Stopwatch = field(default_factory=Stopwatch)
    error: str | None = None
    trace: str | None = None

    def fail(self, exc: BaseException) -> None:
        self.error, self.trace = _error_text(exc), traceback.format_exc()


def _guard(member: Member, action: Callable[[], Any]) -> Any:
    """Run one member's step; a failure marks that member failed and leaves the others running."""
    if member.error is not None:
        return None
    try:
        return action()
    except Exception as exc:
        member.fail(exc)
        return None


def _update_metrics(member: Member, scores: Scores, batch: Batch) -> None:
    for metric in member.metrics.values():
        metric.update(scores, batch)
    member.examples.update(scores, batch)
    member.fingerprint.update(scores, batch)


def _curves(member: Member) -> dict[str, dict[str, list[float]]]:
    """Curves of the metrics that offer one (``curve() -> (x, y)``), for the report's ROC / PRO plots."""
    curves = {}
    for name, metric in member.metrics.items():
        curve = getattr(metric, "curve", None)
        if callable(curve):
            x, y = curve()
            curves[name] = {"x": [float(v) for v in x], "y": [float(v) for v in y]}
    return curves


def _timed(batches: Iterator[Batch], watch: Stopwatch) -> Iterator[Batch]:
    """Yield batches, adding the time spent loading each (decoding, resizing) to ``watch``."""
    while True:
        with watch:
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def _run_alone(member: Member, train: DataLoader, test: DataLoader, label: str, options: RunOptions) -> None:
    """A method on its own: ``fit`` on the train loader, ``score_maps`` per test batch."""
    with member.fit_watch:
        member.method.fit(_progress(train, len(train), f"fit {label}", options))
    for batch in _timed(_progress(test, len(test), f"test {label}", options), member.infer_watch):
        with member.infer_watch:
            scores = member.method.score_maps(batch)
        _update_metrics(member, scores, batch)


def _run_shared(members: list[Member], train: DataLoader, test: DataLoader, label: str,
                options: RunOptions) -> float:
    """Several methods on one feature extraction: each batch is loaded and extracted once, then fed to all.

    Each member's fit and inference time is the shared loading + extraction time plus its own steps (what it
    would have cost alone); returns the shared inference seconds.
    """
    extractor = members[0].method
    for member in members:
        with member.fit_watch:
            _guard(member, member.method.fit_begin)
    shared_fit = Stopwatch()
    for batch in _timed(_progress(train, len(train), f"fit {label}", options), shared_fit):
        with shared_fit:
            features = extractor.extract(batch.images)
        for member in members:
            with member.fit_watch:
                _guard(member, lambda m=member: m.method.fit_step(features))
    for member in members:
        with member.fit_watch:
            _guard(member, member.method.fit_end)
        member.fit_watch.seconds += shared_fit.seconds
    shared_infer = Stopwatch()
    for batch in _timed(_progress(test, len(test), f"test {label}", options), shared_infer):
        with shared_infer:
            features = extractor.extract(batch.images)
        for member in members:
            with member.infer_watch:
                scores = _guard(member, lambda m=member: m.method.score_features(features, batch))
            if scores is not None:
                _update_metrics(member, scores, batch)
    return shared_infer.seconds


def _record(task: GroupTask, member: Member, resources: Resources, peers: list[str]) -> dict[str, Any]:
    cell = Cell(member.spec.name, task.dataset.alias, task.category, task.seed)
    record: dict[str, Any] = {
        "cell": cell.id, "method": member.spec.name, "plugin": member.spec.plugin, "params": member.spec.params,
        "dataset": task.dataset.alias, "category": task.category, "family": task.family, "seed": task.seed,
        "status": "ok" if member.error is None else "failed", "error": member.error, "traceback": member.trace,
        "shared_features_with": [p for p in peers if p != member.spec.name],
        "resources": {k: v for k, v in vars(resources).items() if k != "extra"} | resources.extra,
        "metrics": {}, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if member.error is None:
        try:
            record["metrics"] = {name: float(m.compute(resources)) for name, m in member.metrics.items()}
            record["metric_error_bounds"] = {name: float(m.error_bound) for name, m in member.metrics.items()
                                             if getattr(m, "error_bound", 0.0)}
            record[ARTIFACTS] = {"examples.npz": member.examples.to_bytes(),
                                 "curves.json": json.dumps(_curves(member)).encode(),
                                 "fingerprint.json": json.dumps(member.fingerprint.to_json()).encode()}
        except Exception as exc:
            member.fail(exc)
            record.update(status="failed", error=member.error, traceback=member.trace)
    return record


def _model_gb(member: Member) -> float:
    """The fitted model's size when the method can say it (the ModelSize protocol), else NaN."""
    model_bytes = getattr(member.method, "model_bytes", None)
    if member.error is not None or not callable(model_bytes):
        return float("nan")
    size = _guard(member, model_bytes)
    return float("nan") if size is None else size / GB


def _resources(member: Member, memory: PeakMemory, n_train: int, n_test: int, shared_infer: float) -> Resources:
    return Resources(
        fit_seconds=member.fit_watch.seconds, infer_seconds=member.infer_watch.seconds + shared_infer,
        n_train=n_train, n_test=n_test, peak_rss_gb=memory.peak_rss / GB, peak_cuda_gb=memory.peak_cuda / GB,
        model_gb=_model_gb(member), extra={"start_rss_gb": memory.start_rss / GB},
    )


def failed_records(task: GroupTask, exc: BaseException) -> list[dict[str, Any]]:
    """Every cell of the task failed with the same error (the dataset, not a method, went wrong)."""
    error, trace = _error_text(exc), traceback.format_exc()
    failed = [Member(spec, None, {}, error=error, trace=trace) for spec in task.methods]  # type: ignore[arg-type]
    return [_record(task, member, Resources(), []) for member in failed]


def _members(task: GroupTask, registry: Registry) -> list[Member]:
    """Instantiate each method (a failure fails that cell only) with fresh metric accumulators."""
    members = []
    for spec in task.methods:
        metrics = {name: registry.get("metric", name).factory(**params) for name, params in task.metrics.items()}
        member = Member(spec, None, metrics)  # type: ignore[arg-type]
        member.method = _guard(member, lambda s=spec: instantiate_method(s, task.seed, task.options.device, registry))
        members.append(member)
    return members


def execute_group(task: GroupTask, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Run one group of cells and return one record per cell, failed cells included. A method's error fails
    its cell; a dataset's error fails the group; neither stops the suite."""
    registry = registry or default_registry()
    if task.options.threads:
        torch.set_num_threads(task.options.threads)
    try:
        with PeakMemory(task.options.device) as memory:
            dataset = instantiate_dataset(task.dataset, registry)
            train_split, test_split = dataset.train(task.category, task.seed), dataset.test(task.category, task.seed)
            train, test = make_loader(train_split, task), make_loader(test_split, task)
            members = _members(task, registry)
            alive = [m for m in members if m.error is None]
            shared_infer = 0.0
            if len(alive) > 1:
                shared_infer = _run_shared(alive, train, test, task.category, task.options)
            elif alive:
                _guard(alive[0], partial(_run_alone, alive[0], train, test, task.category, task.options))
    except Exception as exc:
        return failed_records(task, exc)
    peers = [m.spec.name for m in members]
    resources = [_resources(m, memory, len(train_split), len(test_split), shared_infer) for m in members]
    records = [_record(task, m, r, peers) for m, r in zip(members, resources)]
    del members, alive
    release_memory()
    return records


def resolve_categories(suite: Suite, datasets: dict[str, Dataset]) -> dict[str, list[str]]:
    """Each dataset's categories to run: the suite's list, checked against what is on disk, or all of them."""
    categories_of = {}
    for spec in suite.datasets:
        available = datasets[spec.alias].categories()
        chosen = spec.categories if spec.categories is not None else available
        missing = [c for c in chosen if c not in available]
        if missing:
            raise UserError(f"{suite.path}: datasets.{spec.alias}.categories: {missing} not available; "
                            f"available: {', '.join(available) or 'none'}")
        categories_of[spec.alias] = chosen
    return categories_of


@dataclass(frozen=True)
class Plan:
    tasks: list[GroupTask]
    grid: list[str]  # every cell id of the suite in suite order, finished or not (tables are ordered by it)
    family_sizes: dict[str, dict[str, int]]  # dataset alias -> group -> how many categories the dataset has in it


def open_datasets(suite: Suite, registry: Registry) -> tuple[dict[str, Dataset], dict[str, list[str]]]:
    """The suite's datasets and the categories to run of each: a missing dataset or category is a UserError here,
    before anything is written."""
    datasets = {spec.alias: instantiate_dataset(spec, registry) for spec in suite.datasets}
    return datasets, resolve_categories(suite, datasets)


def plan(suite: Suite, registry: Registry, skip: set[str], options: RunOptions,
         opened: tuple[dict[str, Dataset], dict[str, list[str]]] | None = None) -> Plan:
    """Group the suite's cells into tasks: per (dataset, category, seed), methods that report the same
    ``feature_key`` go together; the others run alone. Cells in ``skip`` (finished) are left out.

    Feature keys are asked of methods built on the CPU, so a client without the run's GPU (a Dask client) still
    groups the cells that share an extraction. ``opened``: ``open_datasets``' result, when already made."""
    datasets, categories_of = opened or open_datasets(suite, registry)
    cells = expand(suite, categories_of)
    keys = _feature_keys(suite, registry, "cpu")
    tasks = []
    by_alias = {spec.alias: spec for spec in suite.datasets}
    methods_by_name = {m.name: m for m in suite.methods}
    for _, group in _grouped_cells(cells, skip, keys):
        first = group[0]
        tasks.append(GroupTask(
            dataset=by_alias[first.dataset], category=first.category,
            family=datasets[first.dataset].family(first.category), seed=first.seed,
            methods=tuple(methods_by_name[c.method] for c in group), metrics=suite.metrics,
            batch_size=suite.batch_size, workers=suite.workers, options=options))
    return Plan(tasks, [cell.id for cell in cells], {alias: family_sizes(d) for alias, d in datasets.items()})


def family_sizes(dataset: Dataset) -> dict[str, int]:
    """How many of the dataset's categories each group holds, so tables can tell a mean over all 15 MVTec classes
    from one over the few a narrowed run (``--set categories=[bottle]``) finished."""
    return dict(Counter(dataset.family(category) for category in known_categories(dataset)))


def _feature_keys(suite: Suite, registry: Registry, device: str) -> dict[str, str | None]:
    """Each method variant's feature key (None when it cannot share). Built once per variant, not per cell."""
    keys: dict[str, str | None] = {}
    for spec in suite.methods:
        try:
            method = instantiate_method(spec, suite.seeds[0], device, registry)
        except UserError:  # configuration (missing weights, bad value): say so now, before any compute
            raise
        except Exception:  # it will fail again in its own cell, where the error is recorded
            keys[spec.name] = None
            continue
        keys[spec.name] = method.feature_key() if shares_features(method) else None
        del method
    return keys


def _grouped_cells(cells: list[Cell], skip: set[str], keys: dict[str, str | None]) -> list[tuple[Any, list[Cell]]]:
    groups: dict[Any, list[Cell]] = {}
    for cell in cells:
        if cell.id in skip:
            continue
        key = keys[cell.method]
        group_key = (cell.dataset, cell.category, cell.seed, key if key is not None else ("alone", cell.method))
        groups.setdefault(group_key, []).append(cell)
    return list(groups.items())


def git_commit() -> str:
    """The commit of the anombench checkout, when it is one (an installed wheel has none)."""
    try:
        here = Path(anombench.__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions(registry: Registry) -> dict[str, str]:
    import importlib.metadata as md
    names = ["torch", "torchvision", "timm", "faiss-cpu", "numpy", "pandas", "scikit-learn", "pluggy"]
    names += sorted({e.distribution for kind in registry.entries.values() for e in kind.values()})
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(suite: Suite, options: RunOptions, registry: Registry) -> dict[str, Any]:
    return {
        "suite": suite.name, "suite_file": suite.path, "suite_sha256": suite.sha256(),
        "overrides": list(suite.overrides),
        "anombench_version": anombench.__version__, "git_commit": git_commit(),
        "versions": _versions(registry), "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if options.device.startswith("cuda") else None,
        "device": options.device, "threads": options.threads or torch.get_num_threads(),
        "seeds": suite.seeds, "batch_size": suite.batch_size, "loader_workers": suite.workers,
        "command": " ".join(sys.argv), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def default_run_dir(suite: Suite, root: str | Path = "results/runs") -> Path:
    return Path(root) / suite.name / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


Executor = Callable[[list[GroupTask], Callable[[list[dict[str, Any]]], None]], None]


def local_executor(registry: Registry) -> Executor:
    """Run tasks one after the other in this process, handing each group's records back as it finishes."""
    def run(tasks: list[GroupTask], on_records: Callable[[list[dict[str, Any]]], None]) -> None:
        for task in tasks:
            on_records(execute_group(task, registry))
    return run


def run_suite(suite: Suite, out: Path, options: RunOptions, resume: bool = False,
              registry: Registry | None = None, executor: Executor | None = None,
              on_change: Callable[[RunStore], None] | None = None) -> RunStore:
    """Run every cell not yet finished in ``out``; store each group's records the moment they arrive."""
    registry = registry or default_registry()
    if out.exists() and any(p.name != LOCK for p in out.iterdir()) and not resume:
        raise UserError(f"{out}: run directory exists and is not empty; pass --resume to continue it or choose --out")
    opened = open_datasets(suite, registry)  # no data, no run directory
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_writer(out):
        return _run_locked(suite, out, options, resume, registry, executor, on_change, opened)


@contextmanager
def exclusive_writer(out: Path) -> Iterator[None]:
    """Hold an advisory lock on the run directory: two writers would each rewrite cells.jsonl from their own
    records (losing the other's cells) and delete each other's temporaries."""
    with open(out / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out}: another anombench run is writing this run directory; wait for it or choose "
                            "another --out") from None
        yield


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted.key: value}."""
    if isinstance(node, dict) and node:
        return {key: value for k, v in node.items() for key, value in _leaves(v, f"{prefix}{k}.").items()}
    return {prefix[:-1]: node}


def changed_cell_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings of methods and datasets present in both suites that differ ("key: old -> new").

    Which cells a suite has (categories, seeds, adding or dropping a method) may change on --resume: the finished
    cells stay valid. A method's or dataset's parameters may not, or the table would mix two setups under one
    name; a dataset's root may (data moved, same data)."""
    changes = []
    for section in ENTRY_SECTIONS:
        old, new = before.get(section) or {}, now.get(section) or {}
        for name in old.keys() & new.keys():
            a, b = _leaves(old[name] or {}), _leaves(new[name] or {})
            for key in sorted(a.keys() | b.keys()):
                if key not in ("categories", "params.root") and a.get(key) != b.get(key):  # lists are leaves
                    changes.append(f"{section}.{name}.{key}: {a.get(key)} -> {b.get(key)}")
    return changes


def _check_resumable(out: Path, suite: Suite) -> None:
    stored = out / "suite.yaml"
    if not stored.is_file():
        return
    changes = changed_cell_settings(yaml.safe_load(stored.read_text()) or {},
                                    yaml.safe_load(yaml.safe_dump(suite.source)))
    if changes:
        raise UserError(f"{out}: cannot --resume with other settings than the run's ({'; '.join(changes)}); "
                        "resume with the same settings or choose another --out")


def _run_locked(suite: Suite, out: Path, options: RunOptions, resume: bool, registry: Registry,
                executor: Executor | None, on_change: Callable[[RunStore], None] | None,
                opened: tuple[dict[str, Dataset], dict[str, list[str]]]) -> RunStore:
    if resume:
        _check_resumable(out, suite)
    store = RunStore(out)
    store.discard_stale_temporaries()
    if options.threads:
        torch.set_num_threads(options.threads)
    planned = plan(suite, registry, store.finished() if resume else set(), options, opened)
    info = provenance(suite, options, registry) | {"grid": planned.grid, "family_sizes": planned.family_sizes}
    previous = load_provenance(out) if resume and (out / "run.json").is_file() else {}
    if previous.get("started_at"):
        info |= {"started_at": previous["started_at"], "resumed_at": info["started_at"]}
    write_json(out / "run.json", info)
    write_atomic(out / "suite.yaml", yaml.safe_dump(suite.source, sort_keys=False))
    total = sum(len(t.methods) for t in planned.tasks)
    bar = tqdm(total=total, desc=suite.name, unit="cell", disable=not options.show_progress)

    def on_records(records: list[dict[str, Any]]) -> None:
        for record in records:
            store.add(record)
            bar.update(1)
            if record["status"] != "ok":
                bar.write(f"FAILED {record['cell']}: {record['error']}")
        if on_change is not None:
            on_change(store)

    (executor or local_executor(registry))(planned.tasks, on_records)
    bar.close()
    return store
