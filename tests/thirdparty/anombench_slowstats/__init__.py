"""A third-party test plugin whose fit takes a while and says where it runs, so a test can kill the worker
process in the middle of a cell (tests/test_distributed.py installs it with its own dist-info).

SlowGaussian is anombench_pixelstats' PixelGaussian that first writes a file named ``<process id>-<time>`` into
``marker_dir`` and then sleeps ``seconds``: the file tells the test which process to kill, the sleep makes sure
the kill lands mid-cell.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from anombench_pixelstats import PixelGaussian

from anombench import hookimpl
from anombench.api import Batch


class SlowGaussian(PixelGaussian):
    def __init__(self, marker_dir: str, seconds: float = 3.0, min_std: float = 0.02, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(min_std=min_std, device=device, seed=seed)
        self.marker_dir, self.seconds = Path(marker_dir), seconds

    def fit(self, train: Iterable[Batch]) -> None:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        (self.marker_dir / f"{os.getpid()}-{time.time_ns()}").touch()
        time.sleep(self.seconds)
        super().fit(train)


@hookimpl
def anombench_register_methods(register) -> None:
    register("slow_gaussian", SlowGaussian)
