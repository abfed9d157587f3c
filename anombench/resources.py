"""Measuring what a cell costs: wall time and peak memory (process RSS sampled in a thread, CUDA peak).

Why sampling: ru_maxrss is a lifetime maximum and cannot be reset between cells of one process, so a thread
samples the RSS of the process every few milliseconds while a cell runs.

DataLoader workers are forked: right after the fork a worker's RSS already counts every page it shares with the
parent (a 2 GB parent gives a 2 GB child that has allocated nothing), so adding the workers' RSS counts the
parent twice. A worker's own cost is its USS (pages no other process maps), read from smaps: milliseconds per
read for a large address space, so the workers are sampled less often than the process itself.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from dataclasses import dataclass

import psutil
import torch

GB = 1e9
CHILDREN_INTERVAL = 0.25  # seconds between two reads of the workers' USS


def children_uss(process: psutil.Process) -> int:
    """Memory that the children (DataLoader workers) hold on their own, not shared with this process."""
    total = 0
    for child in process.children(recursive=True):
        try:
            total += child.memory_full_info().uss
        except psutil.Error:  # a worker that ended, or one we may not read
            continue
    return total


def tree_bytes(process: psutil.Process, children: int | None = None) -> int:
    """A process's memory as a cell's figure counts it: its RSS plus what its children hold on their own (bytes).
    ``children``: their USS when just read (it is slow to read, see the module docstring)."""
    return process.memory_info().rss + (children_uss(process) if children is None else children)


class PeakMemory:
    """Context manager: the peak RSS (bytes) seen while the block ran, and the CUDA peak when on a GPU."""

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self.device, self.interval = device, interval
        self.peak_rss = 0
        self.start_rss = 0
        self.peak_cuda = float("nan")
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        children, next_children_read = 0, 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_children_read:
                children, next_children_read = children_uss(self._process), time.monotonic() + CHILDREN_INTERVAL
            self.peak_rss = max(self.peak_rss, tree_bytes(self._process, children))
            self._stop.wait(self.interval)

    def current(self) -> int:
        """This process's RSS plus what its workers hold on their own (bytes)."""
        return tree_bytes(self._process)

    def __enter__(self) -> "PeakMemory":
        self.start_rss = self.peak_rss = self.current()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.current())
        if self.device.startswith("cuda"):
            self.peak_cuda = float(torch.cuda.max_memory_allocated())


@dataclass
class Stopwatch:
    """Accumulates wall time over several timed blocks (``with watch: ...``)."""

    seconds: float = 0.0
    _start: float = 0.0

    def __enter__(self) -> "Stopwatch":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


def release_memory() -> None:
    """Return freed memory to the OS between cells so the next cell's RSS is not inflated by the last one."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
