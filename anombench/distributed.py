"""The Dask executor (``--executor dask``); the local one, with ``--jobs N``, is in isolation.py.

It honours the runner's ``Executor`` contract: run every ``Job`` and hand its results to ``on_results`` in this
process, the client, as each job finishes. Only the client writes the result store, so workers need no shared
filesystem for results and a killed client loses only the jobs still in flight (``--resume`` re-plans them).

Feature sharing survives distribution: the cells of one dataset, category and seed whose methods share a feature
extraction are a single ``Job``, and a job always runs whole, on one worker; only independent jobs spread.

What a worker needs: the same anombench and plugin distributions as the client, at the same versions (checked
before each task: a plugin missing on a worker, or at another version, fails that task's cells and names the
distribution to install), and every dataset at the same path as on the client. A worker that cannot read a
dataset records the dataset's own error, which names the path, and every record says which worker ran it.

Failures: a method or dataset error is a failed record made on the worker (``execute_job`` never raises for
those). A worker that may start processes (not daemonic: the LocalCluster's workers are started so, and a worker of
yours is when started with ``DASK_DISTRIBUTED__WORKER__DAEMON=False``) runs each job in a child process, as the local
executor does: a crash, a timeout (``--cell-timeout``) or a memory limit (``--max-memory-gb``) fails that job's cells
with the reason (``killed by SIGSEGV``) and the worker goes on. A daemonic worker runs jobs in-process: a crash kills
the worker, the scheduler re-runs the job elsewhere a bounded number of times, then its cells are recorded as failed
with ``KilledWorker: ...`` and the suite goes on; limits are not enforced there.

GPUs: with ``--device cuda`` each task asks for the worker resource ``GPU: 1``, so a GPU runs one cell at a time.
Start one worker per GPU, each seeing only its GPU and advertising it::

    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1

The LocalCluster started when no scheduler is given does exactly this for every GPU torch sees.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from anombench.errors import UserError
from anombench.isolation import run_isolated
from anombench.planning import Job, available_cores, error_text
from anombench.plugins import Kind, Registry
from anombench.plugins import registry as default_registry
from anombench.results import CellResult
from anombench.runner import Executor, OnResults, execute_job, failed_results

if TYPE_CHECKING:
    from distributed import Client, SpecCluster

Results = list[CellResult]
IN_PROCESS = "(in-process)"


@dataclass(frozen=True)
class Needed:
    """A plugin thing a task uses and the distribution that provides it on the client (None: not installed)."""

    kind: Kind
    name: str
    distribution: str | None
    version: str | None

    def label(self) -> str:
        return f"{self.kind} '{self.name}'"


def needed_plugins(job: Job, registry: Registry) -> tuple[Needed, ...]:
    """Every method, dataset and metric the job uses, with the client's distribution and version of each."""
    uses: list[tuple[Kind, str]] = [("dataset", job.dataset.plugin)]
    uses += [("method", planned.spec.plugin) for planned in job.cells]
    uses += [("metric", name) for name in job.metrics]
    needed = []
    for kind, name in dict.fromkeys(uses):
        entry = registry.get(kind, name)
        installed = entry.distribution != IN_PROCESS
        needed.append(Needed(kind, name, entry.distribution if installed else None,
                             entry.version if installed else None))
    return tuple(needed)


def worker_name() -> str:
    """Where this code runs: the Dask worker's address inside a worker, else the host and process id."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()} pid {os.getpid()}"


def check_plugins(needed: Iterable[Needed], registry: Registry) -> None:
    """Refuse to run where a plugin is missing or at another version than on the client: the numbers would
    differ silently, or every cell would fail with a bare 'unknown method'."""
    problems = []
    for need in needed:
        have = registry.entries[need.kind].get(need.name)
        wanted = f"{need.distribution} {need.version}" if need.distribution else "the package that provides it"
        if have is None:
            problems.append(f"{need.label()} is not registered (install {wanted})")
        elif need.distribution and (have.distribution, have.version) != (need.distribution, need.version):
            theirs = f"{have.distribution} {have.version}".strip()
            problems.append(f"{need.label()} comes from {theirs}, the client has {wanted}")
    if problems:
        raise UserError(f"worker {worker_name()}: {'; '.join(problems)}; every worker needs the client's plugins "
                        "installed, at the same versions")


def run_task(job: Job, needed: tuple[Needed, ...] = ()) -> Results:
    """The worker side: check the plugins, run the job with the worker's own entry-point registry (in a child
    process where the worker may start one), and tag each result with the worker that computed it and its torch
    threads (timings depend on the one, float32 results in the last bits on the other). Threads the client
    picked from its own machine are left to the worker, which knows its cores."""
    registry = default_registry()
    check_plugins(needed, registry)
    if "threads" in job.settings.picked:
        job = dataclasses.replace(job, settings=dataclasses.replace(job.settings, threads=0))
    daemonic = multiprocessing.current_process().daemon
    results = execute_job(job, registry) if daemonic else run_isolated(job, registry)
    where = {"worker": worker_name(), "torch_threads": torch.get_num_threads()}
    for result in results:
        result.extra |= where
    return results


class _Future(Protocol):
    def result(self) -> Results: ...


def results_of(future: _Future, job: Job) -> Results:
    """The job's results, or one failed result per cell carrying the reason the job itself failed."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - whatever ended the job (KilledWorker, a worker's check) is the reason
        return failed_results(job, error_text(exc))


def stream(futures: dict[Any, Job], completed: Iterator[Any], on_results: OnResults) -> None:
    """Hand each job's results back in the order the jobs finish, then drop the future so the cluster can
    forget the result (results carry example images)."""
    for future in completed:
        on_results(results_of(future, futures.pop(future)))


def cores_per_worker(workers: int) -> int:
    return max(1, available_cores() // workers)


def gpu_names() -> list[str]:
    """The GPUs a local cluster may use, as CUDA_VISIBLE_DEVICES entries (respecting the client's own setting)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [name.strip() for name in visible.split(",") if name.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def worker_specs(device: str) -> dict[str, dict[str, Any]]:
    """Options of each local worker: one single-task worker per GPU (seeing only that GPU, advertising ``GPU: 1``)
    or, on CPU, Dask's split of the cores into processes; torch gets the cores of its worker."""
    from distributed.deploy.utils import nprocesses_nthreads

    if device.startswith("cuda"):
        names = gpu_names()
        if not names:
            raise UserError("--device cuda: torch sees no GPU here to start a LocalCluster on; pass --scheduler")
        envs = [{"CUDA_VISIBLE_DEVICES": name} for name in names]
        resources: dict[str, float] = {"GPU": 1}
    else:
        count, _ = nprocesses_nthreads(available_cores())
        envs, resources = [{} for _ in range(count)], {}
    threads = str(cores_per_worker(len(envs)))
    thread_env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return {f"worker-{index}": {"nthreads": 1, "resources": resources, "env": env | thread_env}
            for index, env in enumerate(envs)}


def local_cluster(device: str, retries: int) -> SpecCluster:
    """A LocalCluster on 127.0.0.1 (worker processes, no dashboard) whose scheduler re-runs a task at most
    ``retries`` times after its worker died, and gives a worker a task only when it has a free thread (so a
    dying worker takes no queued cell down with it). Its workers are not daemonic, so each runs its jobs in child
    processes (see the module docstring); ``connect`` keeps that setting while the cluster lives, for restarts."""
    import dask
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False,
                                               "allowed_failures": retries}}
    workers = {name: {"cls": Nanny, "options": {"host": "127.0.0.1", "dashboard": False,
                                                "silence_logs": logging.WARNING, **options}}
               for name, options in worker_specs(device).items()}
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.WARNING)


@contextmanager
def connect(scheduler: str | None, device: str, retries: int) -> Iterator[Client]:
    """A client of the given scheduler, or of a LocalCluster started here and shut down afterwards."""
    from distributed import Client

    if scheduler is None:
        import dask

        with dask.config.set({"distributed.worker.daemon": False}), local_cluster(device, retries) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:  # unreachable, or not an address (no port, bad scheme)
        raise UserError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc}); start one with "
                        "`dask scheduler` and workers with `dask worker ADDRESS`") from None
    with client:
        yield client


def check_workers(client: Client, tasks: list[Job]) -> None:
    """Catch the set-ups that would wait forever: GPU cells and workers, none of which advertises a GPU."""
    workers = client.scheduler_info()["workers"]
    if not workers:
        print(f"anombench: no workers yet at {client.scheduler.address}; waiting for some to join", file=sys.stderr)
    elif any(wants_gpu(t) for t in tasks) and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise UserError(f"--device cuda: no worker of {client.scheduler.address} advertises a GPU; start one worker "
                        "per GPU with `dask worker ADDRESS --nthreads 1 --resources GPU=1`")


def wants_gpu(task: Job) -> bool:
    return task.options.device.startswith("cuda")


def check_device(tasks: list[Job]) -> None:
    """``cuda:N`` names a GPU of the client; a worker sees only the GPU it was started with."""
    numbered = {task.options.device for task in tasks if task.options.device.startswith("cuda:")}
    if numbered:
        raise UserError(f"--device {numbered.pop()}: on Dask every worker uses the GPU it was started with; "
                        "pass --device cuda and start one worker per GPU (CUDA_VISIBLE_DEVICES=N dask worker ...)")


def submit_options(job: Job) -> dict[str, Any]:
    """A readable, unique task key (the dashboard and KilledWorker name it) and the GPU a cuda job needs."""
    key = f"anombench-{job.describe()}-{uuid.uuid4().hex[:8]}"
    return {"key": key, "pure": False, "resources": {"GPU": 1} if wants_gpu(job) else None}


def dask_executor(scheduler: str | None, registry: Registry, retries: int = 2) -> Executor:
    """``--executor dask``: every task on the cluster at ``scheduler`` (or on a LocalCluster started for the run),
    records streamed back with ``as_completed``.

    ``retries`` bounds the re-runs of a task whose worker died on a LocalCluster (its scheduler's
    ``allowed-failures``) and of a task that raised on a worker (Dask ``retries=``, e.g. a plugin missing on one
    worker: another may have it). A scheduler you started yourself counts worker deaths with its own
    ``distributed.scheduler.allowed-failures`` (default 3). ``registry`` is the client's: workers must provide
    the same plugins, checked before each task.
    """
    def dask(tasks: list[Job], on_results: OnResults) -> None:
        check_device(tasks)
        device = "cuda" if any(wants_gpu(task) for task in tasks) else "cpu"
        from distributed import as_completed

        with connect(scheduler, device, retries) as client:
            check_workers(client, tasks)
            futures = {client.submit(run_task, task, needed_plugins(task, registry), retries=retries,
                                     **submit_options(task)): task
                       for task in tasks}
            stream(futures, as_completed(futures), on_results)
    return dask
