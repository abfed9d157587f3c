"""What sharing one feature extraction saves: Table I (five ResNet-18 PaDiM variants) on one category, run the
way the runner runs it (one task: every batch loaded and extracted once, then fed to all five) against one task
per variant (each loads and extracts on its own), through the runner's own ``execute_group``.

Prints, per variant, the runner's fit and inference seconds, then the wall time of the whole category both ways,
and checks that both ways give the same figures (sharing must change the cost, never the result).

    python benchmarks/bench_shared_features.py [--data mvtec=/path/to/mvtec_ad] [--category bottle]
        (the root defaults to $ANOMBENCH_DATA_MVTEC)
    python benchmarks/bench_shared_features.py --synthetic          (no MVTec AD at hand: the synthetic dataset)

No ImageNet ResNet-18 weights exist offline, so the variants use weights "none" (random init, seeded): the
same architecture, extraction and Gaussians, hence the same time and memory; only the figures lose meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch

from anombench.plugins import registry as load_registry
from anombench.runner import (GroupTask, RunOptions, execute_group, instantiate_dataset, instantiate_method,
                              make_loader, plan)
from anombench.suite import load_suite

SUITE = Path(__file__).resolve().parents[1] / "suites" / "table1.yaml"
SYNTHETIC = "datasets={synthetic: {params: {image_size: 224, n_train: 200, n_test_good: 20, n_test_defective: 60}}}"
COMPARED = ("pixel_auroc", "pro", "image_auroc")
THREADS = 2


def overrides(suite_methods: list[str], category: str, synthetic: bool) -> list[str]:
    """--set overrides as a user would type them: random ResNet-18 weights, one category."""
    chosen = [SYNTHETIC] if synthetic else []
    return chosen + [f"methods.{name}.params.weights=none" for name in suite_methods] + [f"categories=[{category}]"]


def table1_task(data_roots: dict[str, str], category: str, synthetic: bool) -> GroupTask:
    """The one task the runner plans for Table I on ``category`` (all five variants share one extraction)."""
    registry = load_registry()
    names = list(load_suite(SUITE, registry).source["methods"])
    suite = load_suite(SUITE, registry, overrides(names, category, synthetic), data_roots)
    tasks = plan(suite, registry, set(), RunOptions(threads=THREADS, show_progress=False)).tasks
    if len(tasks) != 1 or len(tasks[0].methods) != len(names):
        raise SystemExit(f"expected one task holding all {len(names)} variants, the runner planned {len(tasks)}")
    return tasks[0]


def timed(task: GroupTask) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    records = execute_group(task)
    seconds = time.perf_counter() - start
    failed = [f"{r['method']}: {r['error']}" for r in records if r["status"] != "ok"]
    if failed:
        raise SystemExit("a variant failed: " + "; ".join(failed))
    return seconds, records


def extraction_seconds(task: GroupTask) -> float:
    """Loading and extracting the category's train and test images once: the work each extra task repeats."""
    registry = load_registry()
    dataset = instantiate_dataset(task.dataset, registry)
    extractor = instantiate_method(task.methods[0], task.seed, "cpu", registry)
    start = time.perf_counter()
    for split in (dataset.train(task.category, task.seed), dataset.test(task.category, task.seed)):
        for batch in make_loader(split, task):
            extractor.extract(batch.images)
    return time.perf_counter() - start


def largest_difference(shared: list[dict], alone: list[dict]) -> float:
    by_method = {r["method"]: r["metrics"] for r in alone}
    return max(abs(r["metrics"][m] - by_method[r["method"]][m]) for r in shared for m in COMPARED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = os.environ.get("ANOMBENCH_DATA_MVTEC")
    parser.add_argument("--data", default=f"mvtec={root}" if root else None,
                        help="NAME=ROOT of the dataset (default: mvtec=$ANOMBENCH_DATA_MVTEC)")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic dataset instead of MVTec AD")
    args = parser.parse_args()
    if not args.synthetic and not args.data:
        parser.error("no MVTec AD data: pass --data mvtec=/path/to/mvtec_ad, set ANOMBENCH_DATA_MVTEC or use --synthetic")
    torch.set_num_threads(THREADS)
    category = "disc" if args.synthetic and args.category == "bottle" else args.category
    name, root = args.data.split("=", 1) if args.data else ("", "")
    task = table1_task({} if args.synthetic else {name: root}, category, args.synthetic)

    load_before = os.getloadavg()[0]
    shared_seconds, shared = timed(task)  # first, so the shared way also pays for the cold file cache
    alone = [timed(dataclasses.replace(task, methods=(method,))) for method in task.methods]
    alone_seconds = sum(seconds for seconds, _ in alone)
    alone_records = [record for _, records in alone for record in records]
    once = extraction_seconds(task)

    print(f"Table I on {task.dataset.alias}/{category}: {len(task.methods)} ResNet-18 variants (weights none), "
          f"{torch.get_num_threads()} CPU threads, batch {task.batch_size}, load average {load_before:.1f} before "
          f"and {os.getloadavg()[0]:.1f} after (2 cores shared with other jobs: expect noise)")
    print("per variant, the runner's own seconds (in a shared task it charges each variant the shared loading and "
          "extraction plus its own steps, i.e. what it would cost alone):")
    print(f"{'variant':<24}{'shared fit s':>13}{'shared infer s':>15}{'alone fit s':>12}{'alone infer s':>14}")
    alone_by_method = {r["method"]: r for r in alone_records}
    for record in shared:
        mine = alone_by_method[record["method"]]["resources"]
        print(f"{record['method']:<24}{record['resources']['fit_seconds']:>13.1f}"
              f"{record['resources']['infer_seconds']:>15.1f}{mine['fit_seconds']:>12.1f}{mine['infer_seconds']:>14.1f}")
    print(f"{'whole category (wall)':<24}{'shared':>13}{shared_seconds:>15.1f} s"
          f"{'not shared':>12}{alone_seconds:>13.1f} s   saving {1 - shared_seconds / alone_seconds:.0%}")
    repeats = len(task.methods) - 1
    print(f"loading + extraction of train and test once: {once:.1f} s; not sharing repeats it {repeats} times "
          f"({repeats * once:.1f} s, {repeats * once / alone_seconds:.0%} of the not-shared wall time)")
    print(f"largest difference of {', '.join(COMPARED)} between the two ways: "
          f"{largest_difference(shared, alone_records):.2e}")


if __name__ == "__main__":
    main()
