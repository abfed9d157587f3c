"""What running each job in a child process costs: the quickstart's wall time in-process and isolated, from one run.

Each measurement is a fresh ``anombench run quickstart`` as a user types it, once with ``--executor inprocess``
(every job in the command's own process) and once with the default ``--executor local`` (every job forked from the
fork server, anombench/forkserver.py): imports, planning, the fork server's start, every job and storing are all
inside the figure. The two alternate ``--repeat`` times so that a load change on a shared machine hits both. The
issue's budget: isolated at most 1.10x in-process. Timing on a machine shared with other work is noisy: rerun on a
quiet one for the figure.

    python benchmarks/bench_isolation.py [--threads 2] [--repeat 3] [--set categories=[disc]]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = {"in-process": "inprocess", "isolated": "local"}


def timed_run(executor: str, overrides: list[str], threads: int, out: Path) -> float:
    """Wall seconds of one ``anombench run quickstart`` (a fresh process) with ``executor``."""
    command = [sys.executable, "-m", "anombench", "run", "quickstart", "--quiet", "--out", str(out),
               "--executor", executor, "--threads", str(threads),
               *(arg for value in overrides for arg in ("--set", value))]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: picked from the machine)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind, alternating")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="suite override")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeat):
            for name, executor in EXECUTORS.items():
                out = Path(scratch) / f"{name}-{index}"
                seconds[name].append(timed_run(executor, args.set, args.threads, out))
                print(f"{name:>10}: {seconds[name][-1]:7.2f} s", flush=True)
    inside, isolated = (statistics.median(seconds[name]) for name in EXECUTORS)
    print(f"quickstart wall time (median of {args.repeat}): in-process {inside:.2f} s, isolated {isolated:.2f} s, "
          f"ratio {isolated / inside:.3f} (budget 1.10)")


if __name__ == "__main__":
    main()
