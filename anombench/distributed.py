"""Executors that run a suite's tasks in parallel: a local process pool (``--jobs N``) and Dask (``--executor dask``).

Both honour the runner's ``Executor`` contract: run every ``GroupTask`` and hand its records to ``on_records`` in
this process, the client, as each task finishes. Only the client writes the result store, so workers need no shared
filesystem for results and a killed client loses only the tasks still in flight (``--resume`` re-plans them).

Feature sharing survives distribution: the cells of one dataset, category and seed whose methods share a feature
extraction are a single ``GroupTask``, and a task always runs whole, on one worker; only independent tasks spread.

What a worker needs: the same anombench and plugin distributions as the client, at the same versions (checked
before each task: a plugin missing on a worker, or at another version, fails that task's cells and names the
distribution to install), and every dataset at the same path as on the client. A worker that cannot read a
dataset records the dataset's own error, which names the path, and every record says which worker ran it.

Failures: a method or dataset error is a failed record made on the worker (``execute_group`` never raises for
those). A worker that dies mid-task (killed, out of memory) makes the scheduler re-run the task elsewhere, a bounded
number of times; then its cells are recorded as failed with the reason (``KilledWorker: ...``) and the suite goes on.

GPUs: with ``--device cuda`` each task asks for the worker resource ``GPU: 1``, so a GPU runs one cell at a time.
Start one worker per GPU, each seeing only its GPU and advertising it::

    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1

The LocalCluster started when no scheduler is given does exactly this for every GPU torch sees.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from anombench.errors import UserError
from anombench.plugins import Kind, Registry
from anombench.plugins import registry as default_registry
from anombench.runner import Executor, GroupTask, failed_records, execute_group

if TYPE_CHECKING:
    from distributed import Client, SpecCluster

Records = list[dict[str, Any]]
OnRecords = Callable[[Records], None]
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


def needed_plugins(task: GroupTask, registry: Registry) -> tuple[Needed, ...]:
    """Every method, dataset and metric the task uses, with the client's distribution and version of each."""
    uses: list[tuple[Kind, str]] = [("dataset", task.dataset.plugin)]
    uses += [("method", spec.plugin) for spec in task.methods]
    uses += [("metric", name) for name in task.metrics]
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


def run_task(task: GroupTask, needed: tuple[Needed, ...] = ()) -> Records:
    """The worker side: check the plugins, run the group with the worker's own entry-point registry, and tag
    each record with the worker that computed it and its torch threads (timings depend on the one, float32
    results in the last bits on the other)."""
    check_plugins(needed, default_registry())
    records = execute_group(task)
    where = {"worker": worker_name(), "torch_threads": torch.get_num_threads()}
    return [record | where for record in records]


class _Future(Protocol):
    def result(self) -> Records: ...


def records_of(future: _Future, task: GroupTask) -> Records:
    """The task's records, or one failed record per cell carrying the reason the task itself failed."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - whatever ended the task (KilledWorker, a worker's check) is the reason
        return failed_records(task, exc)


def stream(futures: dict[Any, GroupTask], completed: Iterator[Any], on_records: OnRecords) -> None:
    """Hand each task's records back in the order the tasks finish, then drop the future so the cluster can
    forget the result (records carry example images)."""
    for future in completed:
        on_records(records_of(future, futures.pop(future)))


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and batch systems restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_per_worker(workers: int) -> int:
    return max(1, available_cores() // workers)


def completed_polling(futures: list[concurrent.futures.Future], interval: float = 0.5) -> Iterator[Any]:
    """Futures as they finish, like ``as_completed``, but waking every ``interval`` seconds: a Ctrl-C whose signal
    the kernel hands to another thread is only seen when the main thread runs Python code again, and an
    unbounded wait would put that off until a cell finishes."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=interval,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        yield from done


def process_pool_executor(jobs: int) -> Executor:
    """``--jobs N``: N fresh processes on this machine, each with an equal share of the cores for torch.

    Processes are spawned, not forked (a forked torch with live threads can deadlock), and load plugins from their
    entry points, like Dask workers. A process that dies breaks the pool: the remaining cells are recorded as
    failed and ``--resume`` runs them again.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")

    def run(tasks: list[GroupTask], on_records: OnRecords) -> None:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads,
                                                    initargs=(cores_per_worker(jobs),)) as pool:
            futures = {pool.submit(run_task, task): task for task in tasks}
            try:
                stream(futures, completed_polling(list(futures)), on_records)
            except BaseException:  # Ctrl-C or a store error: the queued cells must not run on with nobody storing
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return run


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
    dying worker takes no queued cell down with it)."""
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
        with local_cluster(device, retries) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:  # unreachable, or not an address (no port, bad scheme)
        raise UserError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc}); start one with "
                        "`dask scheduler` and workers with `dask worker ADDRESS`") from None
    with client:
        yield client


def check_workers(client: Client, tasks: list[GroupTask]) -> None:
    """Catch the set-ups that would wait forever: GPU cells and workers, none of which advertises a GPU."""
    workers = client.scheduler_info()["workers"]
    if not workers:
        print(f"anombench: no workers yet at {client.scheduler.address}; waiting for some to join", file=sys.stderr)
    elif any(wants_gpu(t) for t in tasks) and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise UserError(f"--device cuda: no worker of {client.scheduler.address} advertises a GPU; start one worker "
                        "per GPU with `dask worker ADDRESS --nthreads 1 --resources GPU=1`")


def wants_gpu(task: GroupTask) -> bool:
    return task.options.device.startswith("cuda")


def check_device(tasks: list[GroupTask]) -> None:
    """``cuda:N`` names a GPU of the client; a worker sees only the GPU it was started with."""
    numbered = {task.options.device for task in tasks if task.options.device.startswith("cuda:")}
    if numbered:
        raise UserError(f"--device {numbered.pop()}: on Dask every worker uses the GPU it was started with; "
                        "pass --device cuda and start one worker per GPU (CUDA_VISIBLE_DEVICES=N dask worker ...)")


def submit_options(task: GroupTask) -> dict[str, Any]:
    """A readable, unique task key (the dashboard and KilledWorker name it) and the GPU a cuda task needs."""
    cells = "+".join(spec.name for spec in task.methods)
    key = f"anombench-{cells}|{task.dataset.alias}|{task.category}|{task.seed}-{uuid.uuid4().hex[:8]}"
    return {"key": key, "pure": False, "resources": {"GPU": 1} if wants_gpu(task) else None}


def dask_executor(scheduler: str | None, registry: Registry, retries: int = 2) -> Executor:
    """``--executor dask``: every task on the cluster at ``scheduler`` (or on a LocalCluster started for the run),
    records streamed back with ``as_completed``.

    ``retries`` bounds the re-runs of a task whose worker died on a LocalCluster (its scheduler's
    ``allowed-failures``) and of a task that raised on a worker (Dask ``retries=``, e.g. a plugin missing on one
    worker: another may have it). A scheduler you started yourself counts worker deaths with its own
    ``distributed.scheduler.allowed-failures`` (default 3). ``registry`` is the client's: workers must provide
    the same plugins, checked before each task.
    """
    def run(tasks: list[GroupTask], on_records: OnRecords) -> None:
        check_device(tasks)
        device = "cuda" if any(wants_gpu(task) for task in tasks) else "cpu"
        from distributed import as_completed

        with connect(scheduler, device, retries) as client:
            check_workers(client, tasks)
            futures = {client.submit(run_task, task, needed_plugins(task, registry), retries=retries,
                                     **submit_options(task)): task
                       for task in tasks}
            stream(futures, as_completed(futures), on_records)
    return run
