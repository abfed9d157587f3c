"""Each job in a child process of its own, so that a segfault, ``os._exit``, a memory blow-up or a hang in other
people's code ends only that job, recorded with a one-line reason, and no process outlives the run.

How:
- Children are forked from a fork server (``anombench.forkserver``) that imported torch and the plugins once and
  never ran torch.
- Each child starts its own session (``setsid``): it and its DataLoader workers form one process group, which the
  parent kills as a whole when the job ends, breaks a limit or the run stops. If the run's process dies without
  doing so (SIGKILL), a thread of the child sees its lifeline pipe from the run close and kills the group itself;
  the fork server then exits too (it lives while some process holds its "alive" pipe, which every child
  inherits and closes at once for that reason).
- The parent waits on a pipe that carries each cell's result; meanwhile it checks the job's deadline
  (``cell_timeout``) and samples the memory of the job's process tree as the cell's own figure counts it
  (``resources.tree_bytes``) against ``max_memory_gb``.
- A job of several cells (a shared extraction) whose process dies before reporting them is run again cell by cell,
  each in a process of its own: the cell that crashes is told apart, the healthy ones are stored (computed alone,
  so without sharing), and a crash in what they share fails each of them, with both reasons on its line.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import psutil

from anombench.errors import UserError
from anombench.forkserver import context, release_fork_server, warm_up
from anombench.plugins import Registry
from anombench.planning import Job
from anombench.resources import GB, tree_bytes
from anombench.results import CellResult
from anombench.runner import Executor, OnResults, execute_job, failed_results

MEMORY_INTERVAL = 0.2  # seconds between two samples of a job's memory when it has a limit
_live: set[int] = set()  # process groups of running children
_lock = threading.Lock()
_stopping = threading.Event()


class Stopped(Exception):
    """The run is stopping (Ctrl-C, an error in the parent): the job's process was killed, nothing to record."""


def _die_with_the_run(lifeline: Connection) -> None:
    """Block until the run's end of ``lifeline`` closes (the run ended or died), then kill this process group."""
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os.killpg(0, signal.SIGKILL)


def _child(payload: bytes, results: Connection, lifeline: Connection) -> None:
    """The child's side: own process group, run the job, send each cell's result, close the pipe.

    The job travels as plain pickle bytes: multiprocessing's pickler would hand each tensor of the methods over as
    a shared-memory file descriptor, and a fork server passes at most a few hundred."""
    os.setsid()
    release_fork_server()
    threading.Thread(target=_die_with_the_run, args=(lifeline,), daemon=True).start()
    # a fork server's child inherits "forkserver" as its default start method: DataLoader workers would each
    # start a fork server of their own (seconds); give the job's code the platform's default, as in-process
    multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
    job, registry = pickle.loads(payload)
    for result in execute_job(job, registry):
        results.send_bytes(pickle.dumps(result))
    results.close()


def exit_reason(code: int | None) -> str:
    """A dead child's exit code as the record says it: ``killed by SIGSEGV``, ``exited with status 3``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _kill_group(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL the child's process group (it and its loader workers), then the child itself in case it had not
    reached ``setsid`` yet; reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process.is_alive():
        process.kill()
    process.join()


def _memory(pid: int) -> float:
    try:
        return tree_bytes(psutil.Process(pid))
    except psutil.Error:  # it just ended
        return 0.0


def _limits_broken(job: Job, pid: int, deadline: float | None) -> str | None:
    options = job.options
    if deadline is not None and time.monotonic() > deadline:
        return f"timed out after {options.cell_timeout:g} s"
    if options.max_memory_gb is not None and _memory(pid) > options.max_memory_gb * GB:
        return f"exceeded the memory limit of {options.max_memory_gb:g} GB"
    return None


def _receive(job: Job, process: multiprocessing.process.BaseProcess, pipe: Connection) -> Iterator[CellResult | str]:
    """The child's results as they arrive; then, if it did not end well, the reason (a str)."""
    options = job.options
    deadline = time.monotonic() + options.cell_timeout if options.cell_timeout is not None else None
    wait = MEMORY_INTERVAL if options.max_memory_gb is not None else 1.0
    while True:
        if pipe.poll(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic()))):
            try:
                yield pickle.loads(pipe.recv_bytes())
                continue
            except EOFError:  # the child closed the pipe: it finished or died
                break
        if _stopping.is_set():
            raise Stopped
        if not process.is_alive():  # dead, though its loader workers may still hold the pipe open
            break
        broken = _limits_broken(job, process.pid, deadline)
        if broken is not None:
            yield broken
            return
    process.join(timeout=30)  # after its last result it only has to exit
    if process.exitcode != 0:
        yield exit_reason(process.exitcode)


def run_in_child(job: Job, registry: Registry) -> tuple[list[CellResult], str | None]:
    """Run ``job`` in a child process; its results, and the reason it ended badly (None when it ended well)."""
    pipe, child_end = context().Pipe(duplex=False)
    lifeline, run_end = context().Pipe(duplex=False)
    payload = pickle.dumps((job, registry))
    process = context().Process(target=_child, args=(payload, child_end, lifeline),
                                name=f"anombench {job.describe()}")
    process.start()
    child_end.close()
    lifeline.close()
    with _lock:
        _live.add(process.pid)
    results: list[CellResult] = []
    reason = None
    try:
        for item in _receive(job, process, pipe):
            if isinstance(item, str):
                reason = item
            else:
                results.append(item)
    finally:
        _kill_group(process)
        with _lock:
            _live.discard(process.pid)
        pipe.close()
        run_end.close()
    return results, reason


def run_isolated(job: Job, registry: Registry) -> list[CellResult]:
    """One result per cell of ``job``, whatever its process did (see the module docstring)."""
    results, reason = run_in_child(job, registry)
    done = {result.cell for result in results}
    missing = [planned for planned in job.cells if planned.cell.id not in done]
    if not missing:
        return results
    if len(job.cells) == 1 or len(missing) == 1:
        return results + failed_results(job.alone(missing[0]) if len(missing) == 1 else job,
                                         reason or "exited without reporting its result")
    others = ", ".join(p.spec.name for p in job.cells)
    for planned in missing:  # a shared process died: run each unreported cell alone to tell the culprit apart
        if _stopping.is_set():
            raise Stopped
        alone, again = run_in_child(job.alone(planned), registry)
        results += alone or failed_results(job.alone(planned), f"{again}, also when run alone after the process it "
                                                               f"shared with {others} was {reason}")
    return results


def stop_children() -> None:
    """Kill every running child's process group (the run is ending early)."""
    _stopping.set()
    with _lock:
        groups = list(_live)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def completed_polling(futures: list[concurrent.futures.Future], interval: float = 0.5) -> Iterator[Any]:
    """Futures as they finish, like ``as_completed``, but waking every ``interval`` seconds: a Ctrl-C whose signal
    the kernel hands to another thread is only seen when the main thread runs Python code again, and an
    unbounded wait would put that off until a cell finishes."""
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=interval,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        yield from done


def isolated_executor(registry: Registry, jobs: int = 1) -> Executor:
    """The local executor: every job in a child process of its own, ``jobs`` at a time (``--jobs N``); results
    are handed back in this thread as each job finishes. However the run ends, no child outlives it."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    warm_up()

    def local(job_list: list[Job], on_results: OnResults) -> None:
        _stopping.clear()
        pool = concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="anombench-job")
        try:
            futures = [pool.submit(run_isolated, job, registry) for job in job_list]
            for future in completed_polling(futures):
                on_results(future.result())
        finally:
            stop_children()
            pool.shutdown(wait=True, cancel_futures=True)
            _stopping.clear()
    return local

