"""Running a suite: jobs of cells fed through their methods, measured, and stored as they finish.

``execute_job`` runs one ``Job`` (see planning.py) where it is called: in a child process of the local executor
(isolation.py), on a Dask worker, or in-process; it never raises for a method's or a dataset's error, it records
it. ``run_suite`` plans, hands the jobs to an executor and stores each job's results the moment they arrive; after
each it tells its observers (the table writer), whose failures are logged and never stop the run.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from anombench import api
from anombench.api import Batch, Method, Metric, Resources, Scores, UndefinedMetric, collate
from anombench.bootstrap import ARTIFACT as BOOTSTRAP_ARTIFACT, ImageSummaries, cell_intervals, summaries_for
from anombench.examples import ExampleKeeper
from anombench.fingerprint import MapFingerprint
from anombench.planning import (
    Job,
    Plan,
    PlannedCell,
    RunOptions,
    available_cores,
    check_data_files,
    error_text,
    instantiate_dataset,
    open_datasets,
    plan,
)
from anombench.plugins import Registry, registry as default_registry
from anombench.provenance import now, provenance
from anombench.resources import GB, PeakMemory, Stopwatch, release_memory
from anombench.results import CellResult, RunStore, load_provenance, write_atomic, write_json
from anombench.rundir import check_fresh, check_resumable, exclusive_writer
from anombench.suite import Suite

__all__ = ["Executor", "RunObserver", "RunOptions", "execute_job", "failed_results", "plan", "run_suite"]

log = logging.getLogger(__name__)


def make_loader(split: Any, job: Job) -> DataLoader:
    """Batches of a split, decoded in ``job.settings.workers`` processes. Inside a daemonic process (a Dask worker
    that runs jobs in-process) children are not allowed, so loading happens in-process there."""
    workers = 0 if multiprocessing.current_process().daemon else job.settings.workers
    return DataLoader(split, batch_size=job.settings.batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=job.options.device.startswith("cuda"))


def _progress(items: Iterable[Batch], total: int, label: str, options: RunOptions) -> Iterator[Batch]:
    return iter(tqdm(items, total=total, desc=label, unit="batch", leave=False, disable=not options.show_progress))


@dataclass
class Member:
    """One cell of a job while it runs: its method, metric accumulators and own timings."""

    planned: PlannedCell
    method: Method | None
    metrics: dict[str, Metric]
    examples: ExampleKeeper = field(default_factory=ExampleKeeper)
    fingerprint: MapFingerprint = field(default_factory=MapFingerprint)  # what `anombench compare --exact` checks
    fit_watch: Stopwatch = field(default_factory=Stopwatch)
    infer_watch: Stopwatch = field(default_factory=Stopwatch)
    error: str | None = None
    trace: str | None = None
    summaries: ImageSummaries | None = None  # per-image summaries for bootstrap intervals (runs with --ci)

    def fail(self, exc: BaseException) -> None:
        self.error, self.trace = error_text(exc), traceback.format_exc()


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
    if member.summaries is not None:
        member.summaries.update(scores, batch)


def _curves(member: Member) -> dict[str, dict[str, list[float]]]:
    """Curves of the metrics that offer one (``curve() -> (x, y)``), for the report's ROC / PRO plots."""
    curves = {}
    for name, metric in member.metrics.items():
        curve = api.curve(metric)
        if curve is not None:
            x, y = curve
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
    """Several methods on one feature extraction (the first member's): each batch is loaded and extracted once,
    then fed to all.

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


def new_result(job: Job, planned: PlannedCell, peers: Sequence[str] = ()) -> CellResult:
    """A cell's result before its figures: who, where, with whom it shared an extraction."""
    spec = planned.spec
    return CellResult(cell=planned.cell.id, method=spec.name, plugin=spec.plugin, params=spec.params,
                      label=planned.label, substituted=planned.substituted, dataset=job.dataset.name,
                      category=job.category, family=job.family, seed=job.seed,
                      shared_features_with=[p for p in peers if p != spec.name], finished_at=now())


def compute_metrics(result: CellResult, metrics: dict[str, Metric], resources: Resources) -> None:
    """Each metric's figure; one that does not exist for this cell (``UndefinedMetric``, or a NaN or infinite value
    that a table would silently average) is None with its reason, and the cell keeps its other figures."""
    for name, metric in metrics.items():
        try:
            value = float(metric.compute(resources))
        except UndefinedMetric as exc:
            result.metrics[name], result.undefined[name] = None, " ".join(str(exc).split())
            continue
        if math.isfinite(value):
            result.metrics[name] = value
        else:
            result.metrics[name], result.undefined[name] = None, f"the metric computed {value}"
    result.metric_error_bounds = {name: bound for name, m in metrics.items() if (bound := api.error_bound(m))}


def _result(job: Job, member: Member, resources: Resources, peers: list[str]) -> CellResult:
    result = new_result(job, member.planned, peers)
    result.resources = resources
    if member.error is not None:
        result.fail(member.error, member.trace)
        return result
    try:
        compute_metrics(result, member.metrics, resources)
        result.artifacts = {"examples.npz": member.examples.to_bytes(),
                            "curves.json": json.dumps(_curves(member)).encode(),
                            "fingerprint.json": json.dumps(member.fingerprint.to_json()).encode()}
        if member.summaries is not None:
            options = job.options
            result.intervals = cell_intervals(member.summaries, result.metrics, options.ci_level,
                                              options.ci_resamples, job.seed)
            result.artifacts[BOOTSTRAP_ARTIFACT] = member.summaries.to_bytes()
    except Exception as exc:  # noqa: BLE001 - a metric's bug fails its cell
        result.fail(error_text(exc), traceback.format_exc())
    return result


def _model_gb(member: Member) -> float:
    """The fitted model's size when the method can say it (the ModelSize protocol), else NaN."""
    if member.error is not None:
        return float("nan")
    size = _guard(member, lambda: api.model_bytes(member.method))
    return float("nan") if size is None else size / GB


def _resources(member: Member, memory: PeakMemory, n_train: int, n_test: int, shared_infer: float) -> Resources:
    return Resources(
        fit_seconds=member.fit_watch.seconds, infer_seconds=member.infer_watch.seconds + shared_infer,
        n_train=n_train, n_test=n_test, peak_rss_gb=memory.peak_rss / GB, peak_cuda_gb=memory.peak_cuda / GB,
        model_gb=_model_gb(member), extra={"start_rss_gb": memory.start_rss / GB},
    )


def failed_results(job: Job, error: str, trace: str | None = None) -> list[CellResult]:
    """Every cell of the job failed with the same error (the dataset, the job's process or its worker)."""
    results = [new_result(job, planned) for planned in job.cells]
    for result in results:
        result.fail(error, trace)
    return results


def _members(job: Job, registry: Registry) -> list[Member]:
    """The job's cells with their (unfitted) methods and fresh metric accumulators; a cell whose method could not
    be built starts failed."""
    members = []
    for planned in job.cells:
        metrics = {name: registry.get("metric", name).factory(**params) for name, params in job.metrics.items()}
        summaries = summaries_for(job.metrics) if job.options.ci_level else None
        members.append(Member(planned, planned.method, metrics, error=planned.error, trace=planned.trace,
                              summaries=summaries))
    return members


def execute_job(job: Job, registry: Registry | None = None) -> list[CellResult]:
    """Run one job and return one result per cell, failed cells included. A method's error fails its cell; a
    dataset's error fails the job; neither stops the suite."""
    registry = registry or default_registry()
    if job.settings.threads:
        torch.set_num_threads(job.settings.threads)
    try:
        with PeakMemory(job.options.device) as memory:
            dataset = instantiate_dataset(job.dataset, registry)
            train_split, test_split = dataset.train(job.category, job.seed), dataset.test(job.category, job.seed)
            train, test = make_loader(train_split, job), make_loader(test_split, job)
            members = _members(job, registry)
            alive = [m for m in members if m.error is None]
            shared_infer = 0.0
            if len(alive) > 1:
                shared_infer = _run_shared(alive, train, test, job.category, job.options)
            elif alive:
                _guard(alive[0], partial(_run_alone, alive[0], train, test, job.category, job.options))
    except Exception as exc:  # noqa: BLE001 - the dataset went wrong: every cell of the job says so
        return failed_results(job, error_text(exc), traceback.format_exc())
    peers = [m.planned.spec.name for m in members]
    resources = [_resources(m, memory, len(train_split), len(test_split), shared_infer) for m in members]
    results = [_result(job, m, r, peers) for m, r in zip(members, resources)]
    del members, alive
    release_memory()
    return results


OnResults = Callable[[list[CellResult]], None]
Executor = Callable[[list[Job], OnResults], None]
"""Runs jobs and hands each one's results to ``OnResults``; its ``__name__`` goes to run.json as ``executor``: the
``--executor`` name (local, inprocess, dask)."""


def in_process_executor(registry: Registry) -> Executor:
    """Run jobs one after the other in this process (no isolation: a crash ends the run; for benchmarks)."""
    def inprocess(jobs: list[Job], on_results: OnResults) -> None:
        for job in jobs:
            on_results(execute_job(job, registry))
    return inprocess


class RunObserver(Protocol):
    """Told after each job's results are stored (e.g. to refresh table.md); its errors never stop the run."""

    def cells_finished(self, store: RunStore) -> None: ...


def run_suite(suite: Suite, out: Path, options: RunOptions, resume: bool = False,
              registry: Registry | None = None, executor: Executor | None = None,
              observers: Sequence[RunObserver] = (), jobs_at_once: int = 1) -> RunStore:
    """Run every cell not yet finished in ``out``; store each job's results the moment they arrive.

    ``executor``: default, each job in a child process of its own (isolation.py). ``jobs_at_once``: how many jobs
    the executor runs at once on this machine (they share its cores)."""
    registry = registry or default_registry()
    check_fresh(out, resume)
    opened = open_datasets(suite, registry)  # no data, no run directory
    check_data_files(opened, options.show_progress)
    out.mkdir(parents=True, exist_ok=True)
    if executor is None:
        from anombench.isolation import isolated_executor  # isolation runs execute_job: it imports this module

        executor = isolated_executor(registry)
    with exclusive_writer(out):
        if resume:
            check_resumable(out, suite)
        store = RunStore(out)
        store.discard_stale_temporaries()
        cores = max(1, available_cores() // jobs_at_once)
        planned = plan(suite, registry, store.finished() if resume else set(), options, opened, cores)
        _write_provenance(out, suite, options, planned, registry, resume,
                          {"executor": getattr(executor, "__name__", type(executor).__name__),
                           "jobs_at_once": jobs_at_once})
        write_atomic(out / "suite.yaml", yaml.safe_dump(suite.source, sort_keys=False))
        _execute(planned.jobs, store, executor, observers, suite.name, options)
    return store


def _write_provenance(out: Path, suite: Suite, options: RunOptions, planned: Plan, registry: Registry,
                      resume: bool, execution: dict[str, Any]) -> None:
    info = provenance(suite, options, planned.settings, registry)
    info |= {"grid": planned.grid, "family_sizes": planned.family_sizes} | execution
    previous = load_provenance(out) if resume else {}
    if previous.get("started_at"):
        info |= {"started_at": previous["started_at"], "resumed_at": info["started_at"]}
    write_json(out / "run.json", info)


def _execute(jobs: list[Job], store: RunStore, executor: Executor, observers: Sequence[RunObserver], name: str,
             options: RunOptions) -> None:
    bar = tqdm(total=sum(len(job.cells) for job in jobs), desc=name, unit="cell", disable=not options.show_progress)

    def on_results(results: list[CellResult]) -> None:
        for result in results:
            store.add(result)
            bar.update(1)
            if result.status != "ok":
                bar.write(f"FAILED {result.cell}: {result.error}")
        for observer in observers:
            try:
                observer.cells_finished(store)
            except Exception as exc:  # noqa: BLE001 - a table that cannot be drawn must not lose the cells
                log.warning("anombench: %s failed after storing cells (%s); the run goes on",
                            type(observer).__name__, error_text(exc))

    executor(jobs, on_results)
    bar.close()
