"""Wall time of one suite of 4 independent cells on each executor: ``--jobs 1`` (in-process, torch on all cores),
a Dask LocalCluster (2 workers on 2 cores; one cell per worker process at a time, the cores split between them)
and ``--jobs 2``.

The suite is PaDiM (EfficientNet-Lite0, Rd-100) on the 4 synthetic categories: one method, so no two cells share
features and all 4 are independent tasks. Each executor runs the real ``anombench run`` command in a subprocess,
so the figures include what a user waits for: imports, worker start-up and shutdown. Besides wall time it prints
the sum of the cells' own fit + inference seconds (cell time measured inside the workers) and the largest
difference of any quality figure from the ``--jobs 1`` run (float32 results move in the last bits with the torch
thread count, which differs between executors). On a shared machine the wall times depend on what else runs, so
each line also shows the CPU seconds of the run (the command and all its processes) and the 1-minute load average
at its start: compare wall times only between lines taken at a similar, low load.

    python benchmarks/bench_executors.py [--image-size 160] [--n-train 40] [--n-test 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from anombench.distributed import worker_specs

QUALITY = ("pixel_auroc", "pro", "image_auroc")
EXECUTORS = {"--jobs 1": ["--jobs", "1"],
             f"dask LocalCluster, {len(worker_specs('cpu'))} workers": ["--executor", "dask"],
             "--jobs 2": ["--jobs", "2"]}


def write_suite(path: Path, image_size: int, n_train: int, n_test: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "bench-executors",
        "datasets": {"synthetic": {"params": {"image_size": image_size, "n_train": n_train,
                                              "n_test_good": n_test // 2, "n_test_defective": n_test - n_test // 2},
                                   "categories": ["stripes", "weave", "disc", "plate"]}},
        "methods": {"padim-rd100": {"plugin": "padim", "params": {"backbone": "efficientnet_lite0",
                                                                 "reduction": "random", "n_features": 100}}},
        "metrics": [*QUALITY, "fit_seconds"],
        "run": {"batch_size": 16, "workers": 0},
        "table": {"cell": ["pixel_auroc", "pro"]},
    }))
    return path


def children_cpu_seconds() -> float:
    """CPU time of every finished child process and its reaped descendants (Dask and pool workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(suite: Path, out: Path, options: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds the whole ``anombench run`` took."""
    cpu, start = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "anombench.cli", "run", str(suite), "--out", str(out), "--quiet",
                             "--device", "cpu", *options], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(options)} failed:\n{result.stderr[-3000:]}")
    return wall, children_cpu_seconds() - cpu


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {r["cell"]: r for r in map(json.loads, (out / "cells.jsonl").read_text().splitlines())}


def cell_seconds(cells: dict[str, dict[str, Any]]) -> float:
    return sum(r["resources"]["fit_seconds"] + r["resources"]["infer_seconds"] for r in cells.values())


def largest_difference(cells: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> float:
    return max(abs(cells[c]["metrics"][m] - reference[c]["metrics"][m]) for c in reference for m in QUALITY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite = write_suite(Path(tmp) / "suite.yaml", args.image_size, args.n_train, args.n_test)
        print(f"4 independent cells: PaDiM-Lite0-Rd100 on synthetic {args.image_size}px, {args.n_train} train / "
              f"{args.n_test} test images per category")
        print(f"{'executor':<32} {'wall s':>8} {'CPU s':>8} {'cells own s':>12} {'max |diff|':>11} {'load':>5}")
        reference = None
        for name, options in EXECUTORS.items():
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            load = os.getloadavg()[0]
            wall, cpu = run(suite, out, options)
            cells = records(out)
            reference = reference or cells
            print(f"{name:<32} {wall:8.1f} {cpu:8.1f} {cell_seconds(cells):12.1f} "
                  f"{largest_difference(cells, reference):11.2e} {load:5.1f}", flush=True)


if __name__ == "__main__":
    main()
