"""What running each job in a child process costs: the quickstart's wall time in-process and isolated, from one run.

Isolation (anombench/isolation.py) forks each job from a fork server that imported torch and the plugins once;
this measures the whole ``run_suite`` both ways (planning, the fork server's start, every job, storing), alternating
the two ``--repeat`` times so that a load change on a shared machine hits both. The issue's budget: isolated at most
1.10x in-process. Timing on a machine shared with other work is noisy: rerun on a quiet one for the figure.

    python benchmarks/bench_isolation.py [--threads 2] [--repeat 2] [--set categories=[disc]]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from anombench.isolation import isolated_executor
from anombench.planning import RunOptions
from anombench.plugins import registry as load_registry
from anombench.runner import in_process_executor, run_suite
from anombench.suite import load_suite

QUICKSTART = Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml"


def timed_run(isolated: bool, overrides: list[str], threads: int, out: Path) -> float:
    registry = load_registry()
    suite = load_suite(QUICKSTART, registry, overrides)
    start = time.perf_counter()
    executor = isolated_executor(registry) if isolated else in_process_executor(registry)
    store = run_suite(suite, out, RunOptions(device="cpu", threads=threads, show_progress=False), registry=registry,
                      executor=executor)
    seconds = time.perf_counter() - start
    failed = [f"{cell}: {r['error']}" for cell, r in store.records.items() if r["status"] != "ok"]
    if failed:
        raise SystemExit("a cell failed: " + "; ".join(failed))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: picked from the machine)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind, alternating")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="suite override")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"in-process": [], "isolated": []}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeat):
            for name in seconds:
                out = Path(scratch) / f"{name}-{index}"
                seconds[name].append(timed_run(name == "isolated", args.set, args.threads, out))
                print(f"{name:>10}: {seconds[name][-1]:7.2f} s", flush=True)
    inside, isolated = (statistics.median(seconds[name]) for name in seconds)
    print(f"quickstart wall time (median of {args.repeat}): in-process {inside:.2f} s, isolated {isolated:.2f} s, "
          f"ratio {isolated / inside:.3f} (budget 1.10)")


if __name__ == "__main__":
    main()
