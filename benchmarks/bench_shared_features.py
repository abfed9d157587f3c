"""What sharing one feature extraction saves: Table I (five ResNet-18 PaDiM variants) on one category, run the
way the runner runs it (one job: every batch loaded and extracted once, then fed to all five) against one job
per variant (each loads and extracts on its own), through the runner's own ``execute_job``.

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
import os
import time
from pathlib import Path

import torch

from anombench.plugins import registry as load_registry
from anombench.planning import Job, RunOptions, instantiate_dataset, plan
from anombench.results import CellResult
from anombench.runner import execute_job, make_loader
from anombench.suite import load_suite

SUITE = Path(__file__).resolve().parents[1] / "suites" / "table1.yaml"
SYNTHETIC = "datasets={synthetic: {params: {image_size: 224, n_train: 200, n_test_good: 20, n_test_defective: 60}}}"
COMPARED = ("pixel_auroc", "pro", "image_auroc")
THREADS = 2


def overrides(suite_methods: list[str], category: str, synthetic: bool) -> list[str]:
    """--set overrides as a user would type them: random ResNet-18 weights, one category."""
    chosen = [SYNTHETIC] if synthetic else []
    return chosen + [f"methods.{name}.params.weights=none" for name in suite_methods] + [f"categories=[{category}]"]


def table1_job(data_roots: dict[str, str], category: str, synthetic: bool) -> Job:
    """The one job the runner plans for Table I on ``category`` (all five variants share one extraction)."""
    registry = load_registry()
    names = list(load_suite(SUITE, registry).source["methods"])
    suite = load_suite(SUITE, registry, overrides(names, category, synthetic), data_roots)
    jobs = plan(suite, registry, set(), RunOptions(threads=THREADS, show_progress=False)).jobs
    if len(jobs) != 1 or len(jobs[0].cells) != len(names):
        raise SystemExit(f"expected one job holding all {len(names)} variants, the runner planned {len(jobs)}")
    return jobs[0]


def timed(job: Job) -> tuple[float, list[CellResult]]:
    start = time.perf_counter()
    results = execute_job(job)
    seconds = time.perf_counter() - start
    failed = [f"{r.method}: {r.error}" for r in results if r.status != "ok"]
    if failed:
        raise SystemExit("a variant failed: " + "; ".join(failed))
    return seconds, results


def extraction_seconds(job: Job) -> float:
    """Loading and extracting the category's train and test images once: the work each extra job repeats."""
    dataset = instantiate_dataset(job.dataset, load_registry())
    extractor = job.cells[0].method
    start = time.perf_counter()
    for split in (dataset.train(job.category, job.seed), dataset.test(job.category, job.seed)):
        for batch in make_loader(split, job):
            extractor.extract(batch.images)
    return time.perf_counter() - start


def largest_difference(shared: list[CellResult], alone: list[CellResult]) -> float:
    by_method = {r.method: r.metrics for r in alone}
    return max(abs(r.metrics[m] - by_method[r.method][m]) for r in shared for m in COMPARED)


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
    job = table1_job({} if args.synthetic else {name: root}, category, args.synthetic)

    load_before = os.getloadavg()[0]
    shared_seconds, shared = timed(job)  # first, so the shared way also pays for the cold file cache
    alone = [timed(job.alone(cell)) for cell in job.cells]
    alone_seconds = sum(seconds for seconds, _ in alone)
    alone_records = [record for _, records in alone for record in records]
    once = extraction_seconds(job)

    print(f"Table I on {job.dataset.name}/{category}: {len(job.cells)} ResNet-18 variants (weights none), "
          f"{torch.get_num_threads()} CPU threads, batch {job.settings.batch_size}, load average {load_before:.1f} before "
          f"and {os.getloadavg()[0]:.1f} after (2 cores shared with other jobs: expect noise)")
    print("per variant, the runner's own seconds (in a shared job it charges each variant the shared loading and "
          "extraction plus its own steps, i.e. what it would cost alone):")
    print(f"{'variant':<24}{'shared fit s':>13}{'shared infer s':>15}{'alone fit s':>12}{'alone infer s':>14}")
    alone_by_method = {r.method: r for r in alone_records}
    for result in shared:
        mine = alone_by_method[result.method].resources
        print(f"{result.method:<24}{result.resources.fit_seconds:>13.1f}"
              f"{result.resources.infer_seconds:>15.1f}{mine.fit_seconds:>12.1f}{mine.infer_seconds:>14.1f}")
    print(f"{'whole category (wall)':<24}{'shared':>13}{shared_seconds:>15.1f} s"
          f"{'not shared':>12}{alone_seconds:>13.1f} s   saving {1 - shared_seconds / alone_seconds:.0%}")
    repeats = len(job.cells) - 1
    print(f"loading + extraction of train and test once: {once:.1f} s; not sharing repeats it {repeats} times "
          f"({repeats * once:.1f} s, {repeats * once / alone_seconds:.0%} of the not-shared wall time)")
    print(f"largest difference of {', '.join(COMPARED)} between the two ways: "
          f"{largest_difference(shared, alone_records):.2e}")


if __name__ == "__main__":
    main()
