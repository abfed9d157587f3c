"""Peak memory of a cell: a forked DataLoader-like worker counts with what it holds on its own, never with the
pages it shares with the parent (which its RSS includes)."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import psutil

from anombench.resources import CHILDREN_INTERVAL, PeakMemory, children_uss

MB = 1e6
SHARED = 400 * MB  # touched by the parent before the fork
OWN = 300 * MB  # allocated by the child after it


def hold(nbytes: float, seconds: float) -> None:
    """A worker: allocate and touch ``nbytes`` of its own (0: none), then stay alive."""
    mine = np.ones(int(nbytes // 8)) if nbytes else None
    time.sleep(seconds)
    del mine


def peak_with_worker(own: float) -> tuple[float, float]:
    """(peak measured while a forked worker holding ``own`` bytes lives, the parent's RSS plus what its other
    children already hold, e.g. the isolation fork server an earlier test started) in bytes."""
    others = children_uss(psutil.Process())
    shared = np.ones(int(SHARED // 8))  # noqa: F841  (kept alive: the parent's memory the child maps too)
    worker = multiprocessing.get_context("fork").Process(target=hold, args=(own, 4 * CHILDREN_INTERVAL + 1.5))
    worker.start()
    try:
        time.sleep(0.8)  # the worker has allocated
        with PeakMemory("cpu") as memory:
            time.sleep(3 * CHILDREN_INTERVAL)
        parent = psutil.Process().memory_info().rss
        assert psutil.Process(worker.pid).memory_info().rss > SHARED  # what a naive sum would have added
    finally:
        worker.join()
    return memory.peak_rss, parent + others


def test_a_forked_worker_does_not_count_the_parent_twice():
    peak, parent = peak_with_worker(own=0)
    assert parent - 50 * MB < peak < parent + 50 * MB


def test_a_forked_workers_own_memory_counts():
    peak, parent = peak_with_worker(own=OWN)
    assert parent + OWN - 50 * MB < peak < parent + OWN + 50 * MB
