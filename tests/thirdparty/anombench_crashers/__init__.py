"""A third-party test plugin that crashes the way native code does, in ``fit``, so tests can check that a crashing
cell fails alone under every executor (tests/test_isolation.py installs it with its own dist-info).

Crasher(how=...): ``segfault`` (SIGSEGV sent to itself), ``exit`` (``os._exit(3)``), ``hog`` (allocates and touches
memory in steps up to ``gb`` GB, then waits), ``sleep`` (sleeps ``seconds``). Before crashing it writes a file
named by its process id into ``marker_dir``, so a test can check the process is gone afterwards.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from anombench import hookimpl
from anombench.api import Batch, Scores

STEP = 50_000_000  # bytes allocated per step of the memory hog


class Crasher:
    def __init__(self, how: str = "segfault", marker_dir: str = "", gb: float = 3.0, seconds: float = 600.0,
                 device: str = "cpu", seed: int = 0) -> None:
        self.how, self.marker_dir, self.gb, self.seconds = how, marker_dir, gb, seconds

    def fit(self, train: Iterable[Batch]) -> None:
        for _ in train:  # the loader (and its workers, if any) is running when the crash comes
            break
        if self.marker_dir:
            Path(self.marker_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.marker_dir) / str(os.getpid())).touch()
        if self.how == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif self.how == "exit":
            os._exit(3)
        elif self.how == "hog":
            held = []
            while len(held) * STEP < self.gb * 1e9:
                held.append(np.ones(STEP // 8))
                time.sleep(0.01)
        time.sleep(self.seconds)

    def score_maps(self, batch: Batch) -> Scores:
        raise AssertionError("never reached: fit does not return")


@hookimpl
def anombench_register_methods(register) -> None:
    register("crasher", Crasher)
