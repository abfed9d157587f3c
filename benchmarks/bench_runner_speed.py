"""End to end as the runner runs it, against the backbone's forward alone: PaDiM on MVTec AD bottle.

For each configuration (R18-Rd100 and WR50-Rd550 with a random init, whose cost does not depend on the weights;
Lite0-all176 with its real ImageNet weights) this runs a one-cell suite through ``run_suite`` exactly as
``anombench run`` does (the job in a child process, loader workers, batch size and torch threads picked from the
machine unless given) and reads the runner's own ``infer_seconds_per_image``. In the same run it times, per test
image: decoding (the project's MVTec loader, in-process), the backbone's forward alone on already decoded batches,
and the PaDiM part (``score_features`` on already extracted features: embedding, distances, upsampling,
smoothing). Two ratios: runner / forward (the issue's target, 1.15 on 2 cores) and runner / (decode + forward +
PaDiM), the runner's own overhead over doing the three in sequence (1.00: none).

On 2 cores the three cannot overlap: torch's two threads already fill both cores during the forward. Measured
on a quiet 2-core machine, Lite0-all176, batch 16, ms per test image end to end (decode + extract + score),
against 11.6 for the forward alone: in sequence 16.1; decoding in a prefetch thread 23.8; in one loader
process 22.4; OpenMP threads told to sleep when idle (OMP_WAIT_POLICY=PASSIVE) 22.3 (its forward alone: 20.0);
two threads each decoding and extracting a batch at one torch thread 15.8. So the runner decodes in-process on
small machines, and runner / forward is bounded below by (decode + forward + PaDiM) / forward.
Timing on a shared machine is noisy: rerun on a quiet one.

    python benchmarks/bench_runner_speed.py --data /data/mvtec_ad_256 [R18-Rd100 WR50-Rd550 Lite0-all176]
    (or set ANOMBENCH_DATA_MVTEC instead of --data)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from anombench_plugins.backbones import FeatureExtractor
from torch.utils.data import DataLoader

from anombench.api import Batch, collate
from anombench.planning import RunOptions, available_cores, pick_settings
from anombench.plugins import registry as load_registry
from anombench.runner import run_suite
from anombench.suite import build_suite

from bench_padim_common import CONFIGS, mvtec_root, take_data_argument

NAMES = ("R18-Rd100", "WR50-Rd550", "Lite0-all176")
CATEGORY = "bottle"


def suite_doc(name: str, root: str) -> dict:
    return {"name": f"speed-{name}", "datasets": {"mvtec": {"params": {"root": root}, "categories": [CATEGORY]}},
            "methods": {name: {"plugin": "padim", "params": CONFIGS[name]}},
            "metrics": ["infer_seconds_per_image", "fit_seconds"]}


def per_image_ms(seconds: float, images: int) -> float:
    return 1000 * seconds / images


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(name: str, root: str, threads: int, scratch: Path) -> dict[str, float]:
    """The runner's figure from a real run, then decode / forward / PaDiM part timed here on the same images."""
    registry = load_registry()
    suite = build_suite(suite_doc(name, root), f"bench:{name}", registry)
    options = RunOptions(device="cpu", threads=threads, show_progress=False)
    store = run_suite(suite, scratch / name, options, registry=registry)
    (record,) = store.records.values()
    if record["status"] != "ok":
        raise SystemExit(f"{name}: the runner's cell failed: {record['error']}")
    settings = pick_settings(suite, options, available_cores())
    torch.set_num_threads(settings.threads)
    dataset = registry.get("dataset", "mvtec").factory(root=root)
    test = DataLoader(dataset.test(CATEGORY, 0), batch_size=settings.batch_size, collate_fn=collate)
    batches: list[Batch] = []
    decode = timed(lambda: batches.extend(test))
    images = sum(len(b) for b in batches)
    params = CONFIGS[name]
    backbone = FeatureExtractor(params["backbone"], weights=params["weights"])
    forward = timed(lambda: [backbone(b.images) for b in batches])
    method = registry.get("method", "padim").factory(**params, device="cpu", seed=0)
    method.fit(DataLoader(dataset.train(CATEGORY, 0), batch_size=settings.batch_size, collate_fn=collate))
    features = [method.extract(b.images) for b in batches]
    padim = timed(lambda: [method.score_features(f, b) for f, b in zip(features, batches)])
    return {"decode": per_image_ms(decode, images), "forward": per_image_ms(forward, images),
            "padim": per_image_ms(padim, images), "runner": 1000 * record["metrics"]["infer_seconds_per_image"],
            "threads": settings.threads, "batch": settings.batch_size, "workers": settings.workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help=f"any of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--data", help="MVTec AD root, the folder holding bottle/ (default: $ANOMBENCH_DATA_MVTEC)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: picked from the machine)")
    args = parser.parse_args(take_data_argument(sys.argv[1:]))
    if unknown := set(args.configs) - set(NAMES):
        parser.error(f"unknown configuration {sorted(unknown)[0]}; known: {', '.join(NAMES)}")
    root = str(mvtec_root())
    print(f"{'config':<14}{'decode':>8}{'forward':>9}{'PaDiM':>8}{'runner':>8}{'runner/forward':>16}"
          f"{'runner/parts':>14}  (ms per test image; threads/batch/workers)")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs or NAMES:
            r = measure(name, root, args.threads, Path(scratch))
            parts = r["decode"] + r["forward"] + r["padim"]
            print(f"{name:<14}{r['decode']:>8.1f}{r['forward']:>9.1f}{r['padim']:>8.1f}{r['runner']:>8.1f}"
                  f"{r['runner'] / r['forward']:>16.2f}{r['runner'] / parts:>14.2f}  "
                  f"({r['threads']}/{r['batch']}/{r['workers']})", flush=True)


if __name__ == "__main__":
    main()
